#!/usr/bin/env bash
# Builds the C++ runtime and its tests for aarch64 (an ARM laptop or edge box): a non-x86
# build has no AVX files and must compile with the portable kernels only (cpp/CMakeLists.txt,
# MEDRT_PORTABLE_ONLY). The cross compiler is zig's clang, from the `ziglang` wheel on PyPI.
# Compile and link only: nothing here can run aarch64 code.
set -euo pipefail
cd "$(dirname "$0")/.."
zig_dir=build/zig
if [[ ! -x $zig_dir/ziglang/zig ]]; then
  rm -rf "$zig_dir" && mkdir -p "$zig_dir"
  if ! python -m pip download --no-deps --quiet ziglang -d "$zig_dir" >/dev/null 2>&1; then
    echo "cross_build: skipped: could not download the ziglang wheel from PyPI"
    exit 0
  fi
  python -m zipfile -e "$zig_dir"/ziglang-*.whl "$zig_dir" >/dev/null
  chmod +x "$zig_dir/ziglang/zig"
fi
zig="$PWD/$zig_dir/ziglang/zig"
mkdir -p build/aarch64-tools
printf '#!/bin/sh\nexec %s cc -target aarch64-linux-gnu "$@"\n' "$zig" > build/aarch64-tools/cc
printf '#!/bin/sh\nexec %s c++ -target aarch64-linux-gnu "$@"\n' "$zig" > build/aarch64-tools/c++
chmod +x build/aarch64-tools/cc build/aarch64-tools/c++
cmake -S . -B build/aarch64 -G Ninja -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER="$PWD/build/aarch64-tools/cc" -DCMAKE_CXX_COMPILER="$PWD/build/aarch64-tools/c++" \
  -DMEDRT_BUILD_PYTHON=OFF -DMEDRT_BUILD_BENCH=ON >/dev/null
cmake --build build/aarch64 -j "$(nproc)"
if ls build/aarch64/cpp/CMakeFiles/medrt_kernels.dir/src/kernels/ | grep -q avx; then
  echo "cross_build: an AVX kernel file was compiled for aarch64" >&2
  exit 1
fi
echo "cross_build: aarch64 build of the runtime, its tests and medrt-bench: ok"
