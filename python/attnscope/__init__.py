"""attnscope: attention capture for TorchScript language models.

`load()` gives a Model (the C++ core, with the archive's tokenizer); `Model.run()` gives a
Trace. `attnscope.models` holds the Llama-family module, the loaders and the export.
"""
from ._lib import library_path, load_library
from .api import Model, Trace, load, readable

__version__ = "0.1.0"
__all__ = ["Model", "Trace", "load", "readable", "library_path", "load_library", "__version__"]
