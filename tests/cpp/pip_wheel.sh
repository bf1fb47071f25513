#!/usr/bin/env bash
# pip's route: build the wheel with --no-build-isolation against the venv's torch, install it
# into a scratch folder, import it from there and capture on a fixture model.
set -euo pipefail
src=$1 py=$2 model=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip wheel -q --no-build-isolation --no-deps "$src" -w "$work/wheel" \
  --config-settings=build-dir="$work/build"
"$py" -m pip install -q --no-deps --target "$work/site" "$work"/wheel/*.whl
cd "$work"
PYTHONPATH="$work/site" "$py" - "$model" <<'PY'
import sys
import attnscope
assert attnscope.__file__.startswith(sys.path[0]) or "/site/" in attnscope.__file__, attnscope.__file__
t = attnscope.load(sys.argv[1], device="cpu").run("t2 t3 t4", capture={"heads": [(0, 1)]})
print("wheel OK:", attnscope.__file__, sorted(t.captures))
PY
