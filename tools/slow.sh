#!/usr/bin/env bash
# The slow tier (CI runs it after tools/test.sh; it also runs alone): the pip wheel built and
# installed in a fresh venv (tests/cpp/pip_wheel.sh: ccache reuses the main build's objects),
# the live view in a real JupyterLab (jupyterlab installed here), then the GGUF header fuzz (ATTNSCOPE_FUZZ_GGUF_ITERS mutated files, default 20000), then
# tools/sanitize.sh: the C++ core, Catch2 suite, CLI and reader fuzzer under ASan+UBSan
# (ATTNSCOPE_FUZZ_ITERS inputs, default 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/stages.sh
BUILD=${ATTNSCOPE_BUILD:-build}
if [ ! -f "$BUILD/fixtures/toy_hf_eager.pt" ]; then  # run alone: set up and make the fixtures
  stage "setup + build + fixtures"
  bash tools/setup.sh
  (cd "$BUILD" && ctest --output-on-failure -R fixtures)
  stage_done
fi
stage "wheel: pip wheel + install in a fresh venv"
(cd "$BUILD" && ctest --output-on-failure -V -L slow)  # -V: the wheel test prints its phases and ccache hits
stage_done
stage "live view in JupyterLab (headless Chromium)"
.venv/bin/python -m pip install -q --disable-pip-version-check jupyterlab anywidget
B=$(cd "$BUILD" && pwd)
ATTNSCOPE_LIB=$B/libattnscope.so ATTNSCOPE_BUILD=$B PYTHONPATH=$PWD/python MPLBACKEND=Agg \
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/python/test_view_jupyter.py
stage_done
stage "GGUF header fuzz: ${ATTNSCOPE_FUZZ_GGUF_ITERS:-20000} mutated files"
ATTNSCOPE_FUZZ_GGUF=${ATTNSCOPE_FUZZ_GGUF_ITERS:-20000} PYTHONPATH=python .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/python/test_fuzz_gguf.py
stage_done
bash tools/sanitize.sh
