#!/usr/bin/env bash
# pip's route as a new user takes it: a copy of the source tree (its tracked and unignored
# files) with a fresh .venv inside that has only torch (the version the test venv has),
# `pip wheel .` with pip's default build isolation — which must not download a second torch —,
# the wheel installed into that venv with its dependencies, then imported and run on a
# fixture model from outside the source tree. Also checks the wheel's metadata: torch pinned
# to the X.Y it was built against, the LICENSE, no absolute RUNPATH.
# The copy is laid out like the main checkout (.venv/ and build/ at its root) and ccache hashes
# paths relative to the root (CCACHE_BASEDIR), so the wheel's compile reuses the main build's
# objects when ccache is installed (tools/setup.sh); the ccache hit count is printed.
set -euo pipefail
src=$1 py=$2 model=$3 cxx=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$src" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --ignore-failed-read) \
    | tar -C "$work/src" -xf -
else
  cp -r "$src"/. "$work/src"
  rm -rf "$work/src/build" "$work/src/.venv" "$work"/src/python/attnscope/_core*.so
fi
torch_v=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
"$py" -m venv "$work/src/.venv"
vpy="$work/src/.venv/bin/python"
"$vpy" -m pip install -q --disable-pip-version-check "torch==$torch_v" 2>/dev/null
echo "venv with torch: ${SECONDS} s"
launcher=()
if command -v ccache >/dev/null; then
  # The main build's compiler by the same name: ccache hashes the compiler's name, and pip's
  # build would otherwise pick g++ where CMake picked c++ (every object a miss).
  launcher=(env CCACHE_BASEDIR="$work/src" CCACHE_NOHASHDIR=1 CMAKE_CXX_COMPILER_LAUNCHER=ccache ${cxx:+CXX="$cxx"})
  ccache -z >/dev/null
fi
if ! (cd "$work/src" && "${launcher[@]}" "$vpy" -m pip wheel -v --disable-pip-version-check --no-deps . \
     -w "$work/wheel" --config-settings=build-dir="$work/src/build") >"$work/pip.log" 2>&1; then
  grep -v "WARNING: Location" "$work/pip.log" | tail -40
  exit 1
fi
echo "pip wheel: ${SECONDS} s"
if [ ${#launcher[@]} -gt 0 ]; then
  echo "ccache during the wheel build: $(ccache --print-stats | awk -F'\t' '/^(direct_cache_hit|preprocessed_cache_hit|cache_miss)\t/ {printf "%s=%s ", $1, $2}')"
fi
if grep -E "^ *(Collecting|Downloading|Processing) .*torch" "$work/pip.log"; then
  echo "FAIL: the isolated build environment fetched a torch"
  exit 1
fi
whl=$(ls "$work"/wheel/attnscope-*.whl)
"$vpy" - "$whl" "$torch_v" <<'PY'
import sys, zipfile
whl, torch_v = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
names = z.namelist()
meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
want = "Requires-Dist: torch==" + ".".join(torch_v.split(".")[:2]) + ".*"
assert want in meta, (want, [l for l in meta.splitlines() if "torch" in l])
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
assert "Apache License" in z.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
print("metadata OK:", want)
PY
"$vpy" -m pip install -q --disable-pip-version-check "$whl" 2>/dev/null
echo "wheel installed with its dependencies: ${SECONDS} s"
for so in "$work"/src/.venv/lib/python*/site-packages/attnscope/*.so; do
  if readelf -d "$so" | grep -E "R(UN)?PATH" | grep -q "\[/\|:/"; then
    echo "FAIL: absolute RUNPATH in $so: $(readelf -d "$so" | grep -E 'R(UN)?PATH')"
    exit 1
  fi
done
cd "$work"  # outside the source copy: the installed package is imported
"$vpy" - "$model" <<'PY'
import sys
import attnscope
assert "/.venv/" in attnscope.__file__, attnscope.__file__
t = attnscope.load(sys.argv[1], device="cpu").run("t2 t3 t4", capture={"heads": [(0, 1)]})
print("wheel OK:", attnscope.__file__, sorted(t.captures))
PY
