#!/usr/bin/env bash
# Collects what bench/device_check.sh needs on a bare GPU machine into build/device_carry
# (git-ignored; pass it as `carry`): the Catch2 v2 header and wheels for cmake, ninja, gguf,
# pytest and its dependencies (pure Python or py3-none manylinux: any CPython 3 works).
set -euo pipefail
cd "$(dirname "$0")/.."
D=build/device_carry
rm -rf "$D"
mkdir -p "$D/wheels" "$D/catch2/catch2"
cp /usr/include/catch2/catch.hpp "$D/catch2/catch2/"
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$D/wheels" \
  cmake ninja gguf pytest pluggy iniconfig packaging exceptiongroup tqdm
du -sh "$D"
