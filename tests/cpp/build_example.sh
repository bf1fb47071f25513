#!/usr/bin/env bash
# Installs attnscope from the build tree, then builds examples/cpp against the installed
# CMake package (find_package(attnscope)) and runs it on a fixture model.
set -euo pipefail
build=$1 src=$2 torch_dir=$3 model=$4
prefix=$build/_install
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$src/examples/cpp" -B "$build/_example" \
  -DCMAKE_PREFIX_PATH="$prefix;$torch_dir" >/dev/null
cmake --build "$build/_example" >/dev/null
"$build/_example/attnscope_example" "$model"
# The installed library carries no path of the torch it was built with: the consumer's
# find_package(Torch) decides which LibTorch it runs on.
if readelf -d "$prefix"/lib*/libattnscope.so | grep -E "R(UN)?PATH" | grep -q "torch"; then
  echo "FAIL: installed libattnscope.so bakes a torch path: $(readelf -d "$prefix"/lib*/libattnscope.so | grep -E 'R(UN)?PATH')"
  exit 1
fi
