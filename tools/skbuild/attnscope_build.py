"""scikit-build-core metadata plugin (pyproject.toml [tool.scikit-build.metadata]): the wheel's
dependencies, with torch pinned to the X.Y series the wheel is compiled against — attnscope's
C++ core links LibTorch's C++ ABI, which changes between minor versions (as torchvision pins).

The torch is the one installed where `pip install .` runs. pip's isolated build environment
hides that environment's site-packages by putting its own sitecustomize on PYTHONPATH, so the
interpreter is asked again with PYTHONPATH unset; CMakeLists.txt finds LibTorch the same way.
ATTNSCOPE_TORCH_PYTHON names another interpreter whose torch to use."""
import os
import subprocess
import sys

DEPENDENCIES = ["numpy", "matplotlib", "tokenizers", "safetensors", "gguf", "tqdm"]
_ASK = "import torch; print(torch.__version__)"


def torch_version():
    override = os.environ.get("ATTNSCOPE_TORCH_PYTHON")
    tries = [([override, "-c", _ASK], None)] if override else [
        ([sys.executable, "-c", _ASK], None),
        ([sys.executable, "-c", _ASK], {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})]
    for cmd, env in tries:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[-1]
    raise RuntimeError(
        f"attnscope builds against an installed torch, and {tries[0][0][0]} cannot import one: install torch "
        "first (e.g. pip install torch==2.13.0), then pip install . (or set ATTNSCOPE_TORCH_PYTHON)")


def dynamic_metadata(field, settings=None):
    if field != "dependencies":
        raise RuntimeError(f"attnscope_build provides 'dependencies', not {field!r}")
    major, minor = torch_version().split("+")[0].split(".")[:2]
    return [f"torch=={major}.{minor}.*", *DEPENDENCIES]


def get_requires_for_dynamic_metadata(settings=None):
    return []
