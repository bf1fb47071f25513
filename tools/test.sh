#!/usr/bin/env bash
# The test command (README): sets everything up (tools/setup.sh), then runs every feature's
# tests on both cores: ctest -j runs the fixture generator, the Catch2 suite, the CLI checks,
# Python reading a trace, a find_package(attnscope) build, a short reader fuzz and pytest
# (pytest-xdist; incl. notebooks, the headless-browser view, the family matrix and the real
# encoder). Extra arguments go to ctest (e.g. -R catch2). The slow tier (the wheel in a fresh
# venv, ASan+UBSan, the long fuzz) is tools/slow.sh; .ci/run runs both.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/stages.sh
stage "setup + build (tools/setup.sh)"
bash tools/setup.sh
stage_done
stage "tests: Catch2, CLI, find_package, fuzz, pytest (ctest -LE slow)"
(cd "${ATTNSCOPE_BUILD:-build}" && ctest --output-on-failure -j "$(nproc)" -LE slow "$@")
stage_done
