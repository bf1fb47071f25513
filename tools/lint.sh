#!/usr/bin/env bash
# Lint, run by the test command (ctest "lint"): ruff (pyproject.toml [tool.ruff]) on every Python
# file, no C++ function over 80 lines (tools/function_lengths.py), and clang-format (.clang-format) on the C++ lines changed since $ATTNSCOPE_LINT_BASE
# (default HEAD: the change not yet committed; e.g. ATTNSCOPE_LINT_BASE=origin/main for a branch).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${ATTNSCOPE_LINT_BASE:-HEAD}
RUFF=${ATTNSCOPE_VENV:-.venv}/bin/ruff
"$RUFF" check -q python tests bench tools
# A function reads in one screen: none under csrc/ over 80 lines.
"${ATTNSCOPE_VENV:-.venv}/bin/python" tools/function_lengths.py 80
if ! command -v clang-format-diff >/dev/null; then
  echo "lint: clang-format-diff not found (Debian clang-format; tools/setup.sh installs it)"
  exit 1
fi
if git rev-parse --git-dir >/dev/null 2>&1; then
  out=$(git diff -U0 --no-color "$BASE" -- 'csrc/*.cpp' 'csrc/*.h' 'tests/cpp/*.cpp' 'tests/cpp/*.h' 'bench/*.cpp' \
        | clang-format-diff -p1)
  if [ -n "$out" ]; then
    echo "$out"
    echo "lint: clang-format (.clang-format) would change the C++ lines above (changed since $BASE)"
    exit 1
  fi
fi
echo "lint OK"
