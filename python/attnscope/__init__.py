"""attnscope: attention capture for TorchScript language models.

The C++ core does the capture; this package holds the model definitions, loaders and export
that produce TorchScript archives carrying attnscope's capture operators.
"""
from ._lib import library_path, load_library

__version__ = "0.1.0"
__all__ = ["library_path", "load_library", "__version__"]
