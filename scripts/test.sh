#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: C++ unit tests (ctest) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.13.0            # the CPU build; never a CUDA torch
python -m pip install --quiet ".[test,train]"
cmake -S . -B build/test -G Ninja -DMEDRT_BUILD_PYTHON=OFF -DMEDRT_BUILD_BENCH=OFF >/dev/null
cmake --build build/test -j "$(nproc)"
ctest --test-dir build/test --output-on-failure
# The CUDA sources stay compile-clean where nvcc exists (no GPU needed): only the CUDA library.
if command -v nvcc >/dev/null; then
  cmake -S . -B build/cuda-compile -G Ninja -DMEDRT_CUDA=ON -DMEDRT_BUILD_PYTHON=OFF \
    -DMEDRT_BUILD_BENCH=OFF -DMEDRT_BUILD_TESTS=OFF -DCMAKE_OPTIMIZE_DEPENDENCIES=ON >/dev/null
  cmake --build build/cuda-compile -j "$(nproc)" --target medrt_cuda
fi
python -m pytest -q "$@"
