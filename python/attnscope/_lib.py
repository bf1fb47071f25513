"""Locates and loads libattnscope, which registers the capture operators with torch.ops."""
import glob
import os

import torch

_loaded = None


def library_path():
    """Path of libattnscope.so: $ATTNSCOPE_LIB, next to this package, or the source tree's build/."""
    env = os.environ.get("ATTNSCOPE_LIB")
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"ATTNSCOPE_LIB={env!r} does not exist")
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for pattern in (os.path.join(here, "libattnscope.so*"),
                    os.path.join(here, "..", "..", "build", "libattnscope.so")):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    raise FileNotFoundError(
        "libattnscope.so not found: build it (bash tools/setup.sh) or set ATTNSCOPE_LIB to its path")


def load_library():
    """Registers attnscope::capture and attnscope::capture_sdpa with torch.ops (idempotent):
    $ATTNSCOPE_LIB when set, else the compiled module attnscope._core (which links the core)."""
    global _loaded
    if _loaded is None:
        if not os.environ.get("ATTNSCOPE_LIB"):
            try:
                from . import _core
                _loaded = _core.__file__
                return _loaded
            except ImportError:
                pass
        path = library_path()
        torch.ops.load_library(path)
        _loaded = path
    return _loaded
