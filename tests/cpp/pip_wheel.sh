#!/usr/bin/env bash
# pip's route as a new user takes it: a fresh venv that has only torch (the version the test
# venv has), `pip wheel` with pip's default build isolation — which must not download a second
# torch —, the wheel installed into that venv with its dependencies, then imported and run
# on a fixture model from outside the source tree. Also checks the wheel's metadata: torch
# pinned to the X.Y it was built against, the LICENSE, no absolute RUNPATH.
set -euo pipefail
src=$1 py=$2 model=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
torch_v=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --disable-pip-version-check "torch==$torch_v" 2>/dev/null
if ! "$vpy" -m pip wheel -v --disable-pip-version-check --no-deps "$src" -w "$work/wheel" \
     --config-settings=build-dir="$work/build" >"$work/pip.log" 2>&1; then
  grep -v "WARNING: Location" "$work/pip.log" | tail -40
  exit 1
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
for so in "$work"/venv/lib/python*/site-packages/attnscope/*.so; do
  if readelf -d "$so" | grep -E "R(UN)?PATH" | grep -q "\[/\|:/"; then
    echo "FAIL: absolute RUNPATH in $so: $(readelf -d "$so" | grep -E 'R(UN)?PATH')"
    exit 1
  fi
done
cd "$work"
"$vpy" - "$model" <<'PY'
import sys
import attnscope
assert "/venv/" in attnscope.__file__, attnscope.__file__
t = attnscope.load(sys.argv[1], device="cpu").run("t2 t3 t4", capture={"heads": [(0, 1)]})
print("wheel OK:", attnscope.__file__, sorted(t.captures))
PY
