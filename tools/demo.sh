#!/usr/bin/env bash
# Sets everything up and runs the main job. Until the default model (SmolLM2) and the Python
# figures land, this runs attnscope-cli on the fixture model with a tokenizer and prints what
# it captured; the trace is written to out/demo_trace.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
BUILD=${ATTNSCOPE_BUILD:-build}
PY=${ATTNSCOPE_VENV:-.venv}/bin/python
[ -f "$BUILD/fixtures/toy_hf_eager.pt" ] || \
  "$PY" tests/fixtures/make_fixtures.py "$BUILD/fixtures" --lib "$BUILD/libattnscope.so" >/dev/null
mkdir -p out
"$BUILD/attnscope-cli" --model "$BUILD/fixtures/toy_hf_eager.pt" --describe \
  --ids 1,5,12,7,33,5,9,41,2 --all --heads 2:1 --layer-maps 0,1,2 --from -1 \
  --out out/demo_trace.safetensors
