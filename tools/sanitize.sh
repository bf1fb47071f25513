#!/usr/bin/env bash
# ASan + UBSan: builds the C++ core, the Catch2 suite, attnscope-cli and the reader fuzzer with
# -fsanitize=address,undefined (GCC's runtime; no clang needed) into build-asan/, then runs
#   the Catch2 suite, the CLI cases (good run, bad options, bad numbers, a hostile archive)
#   and the fuzzer on tests/fuzz/corpus (ATTNSCOPE_FUZZ_ITERS, default 200000 inputs).
# Any sanitizer report fails the run (halt_on_error, no UBSan recovery). LibTorch itself is not
# instrumented; leak checking is off (LibTorch keeps global allocations until exit).
# Needs the normal build's fixtures: run tools/setup.sh and `ctest -R fixtures` first (tools/slow.sh
# does both when they are missing, then runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/stages.sh
PY=${ATTNSCOPE_VENV:-.venv}/bin/python
ASAN_BUILD=${ATTNSCOPE_ASAN_BUILD:-build-asan}
FIX=${ATTNSCOPE_BUILD:-build}/fixtures
[ -f "$FIX/toy_hf_eager.pt" ] || { echo "sanitize.sh: no fixtures in $FIX (run tools/test.sh first)"; exit 2; }
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
LAUNCH=()
command -v ccache >/dev/null && LAUNCH=("-DCMAKE_CXX_COMPILER_LAUNCHER=env;CCACHE_BASEDIR=$PWD;CCACHE_NOHASHDIR=1;ccache")
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
stage "ASan+UBSan: build"
if [ ! -f "$ASAN_BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$ASAN_BUILD" "${GEN[@]}" "${LAUNCH[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTNSCOPE_BUILD_PYTHON=OFF \
    -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" \
    -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
    -DPython3_EXECUTABLE="$(cd "$(dirname "$PY")" && pwd)/python" >/dev/null
fi
cmake --build "$ASAN_BUILD" -j "$(nproc)" --target attnscope_tests attnscope-cli attnscope_fuzz
stage_done
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
report() { if grep -qE "ERROR: AddressSanitizer|runtime error:" "$LOG"; then cat "$LOG"; echo "sanitize.sh: FINDING"; exit 1; fi; }

stage "ASan+UBSan: Catch2 suite + CLI cases"
# The Catch2 suite reads its fixtures from the path compiled in: point it at the normal build's.
mkdir -p "$ASAN_BUILD"
[ -e "$ASAN_BUILD/fixtures" ] || ln -s "$(cd "$FIX" && pwd)" "$ASAN_BUILD/fixtures"
"$ASAN_BUILD/tests/cpp/attnscope_tests" >"$LOG" 2>&1 || { cat "$LOG"; echo "sanitize.sh: Catch2 failed"; exit 1; }
report
echo "catch2 under ASan+UBSan: $(grep -E 'All tests passed|test cases' "$LOG" | tail -1)"

CLI="$ASAN_BUILD/attnscope-cli"
"$CLI" --model "$FIX/toy_hf_eager.pt" --ids 3,5,7,1,9,2,4 --all --heads 1:2 --layer-maps 0 --from -1 \
  --out "$ASAN_BUILD/cli_trace.safetensors" >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
report
bad=0
for args in "--bogus" "--top-k x" "--temperature 1e999" "--heads 0:x" "--pad-id 3.5" "--ids 1,2x" "--heads 9:0" \
            "--ids 999999" "--from 99"; do
  # shellcheck disable=SC2086
  if "$CLI" --model "$FIX/toy_hf_eager.pt" --ids 1,2 $args --out "$ASAN_BUILD/x.safetensors" >"$LOG" 2>&1; then
    echo "sanitize.sh: '$args' was accepted"; bad=1
  fi
  report
done
for f in "$FIX/not_torchscript.pt" "$FIX/bad_signature.pt" /dev/null; do
  "$CLI" --model "$f" --ids 1,2 >"$LOG" 2>&1 || true
  report
done
[ $bad = 0 ] || exit 1
echo "attnscope-cli under ASan+UBSan: good run and 12 bad inputs, no reports"
stage_done

stage "ASan+UBSan: reader fuzz, ${ATTNSCOPE_FUZZ_ITERS:-200000} inputs"

"$ASAN_BUILD/tests/cpp/attnscope_fuzz" tests/fuzz/corpus "${ATTNSCOPE_FUZZ_ITERS:-200000}" "${ATTNSCOPE_FUZZ_SEED:-1}" \
  >"$LOG" 2>&1 || { cat "$LOG"; echo "sanitize.sh: fuzzer failed"; exit 1; }
report
echo "fuzzer under ASan+UBSan: $(tail -1 "$LOG")"
stage_done
echo "sanitize OK"
