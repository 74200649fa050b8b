#!/usr/bin/env bash
# The C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (all of them) and under
# ThreadSanitizer (the engine and thread-pool tests, where the threads are). Any report fails.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEDRT_BUILD_PYTHON=OFF \
  -DMEDRT_BUILD_BENCH=OFF -DMEDRT_SANITIZE=ON -DMEDRT_BUILD_FUZZ=ON >/dev/null
cmake --build build/asan -j "$jobs"
ctest --test-dir build/asan --output-on-failure

tsan_tests=(test_core_thread_pool test_engine_engine test_engine_block_manager)
cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEDRT_BUILD_PYTHON=OFF \
  -DMEDRT_BUILD_BENCH=OFF -DMEDRT_TSAN=ON >/dev/null
cmake --build build/tsan -j "$jobs" --target "${tsan_tests[@]}"
for t in "${tsan_tests[@]}"; do
  echo "== TSan: $t"
  "build/tsan/cpp/$t"
done
