#!/usr/bin/env bash
# Sets everything up (tools/setup.sh) and runs every test: ctest runs the fixture generator,
# the Catch2 suite, the CLI checks, Python reading a trace, and a find_package(attnscope) build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cd "${ATTNSCOPE_BUILD:-build}"
ctest --output-on-failure "$@"
