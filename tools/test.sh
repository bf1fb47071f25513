#!/usr/bin/env bash
# Sets everything up (tools/setup.sh) and runs every test: ctest runs the fixture generator,
# the Catch2 suite, the CLI checks, Python reading a trace, a find_package(attnscope) build,
# pytest (incl. notebooks and the headless-browser view) and the pip wheel in a fresh venv;
# then tools/sanitize.sh rebuilds the C++ side with ASan + UBSan and runs the Catch2 suite, the
# CLI cases and the reader fuzzer under it (ATTNSCOPE_SANITIZE=0 skips that step).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
(cd "${ATTNSCOPE_BUILD:-build}" && ctest --output-on-failure "$@")
if [ "${ATTNSCOPE_SANITIZE:-1}" != 0 ]; then
  bash tools/sanitize.sh
fi
