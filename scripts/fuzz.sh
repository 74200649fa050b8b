#!/usr/bin/env bash
# Runs every fuzz harness for SECONDS (default 60) each: the C++ ones (cpp/fuzz, built with
# ASan+UBSan into build/asan by scripts/sanitize.sh) on their seed corpora, then the Python
# ones (tests/fuzz, atheris). A crash stops the run with the input saved as crash-*.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
if [[ ! -f build/asan/build.ninja ]]; then
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEDRT_BUILD_PYTHON=OFF \
    -DMEDRT_BUILD_BENCH=OFF -DMEDRT_SANITIZE=ON -DMEDRT_BUILD_FUZZ=ON >/dev/null
fi
# Up to date after scripts/sanitize.sh (CI); builds what a local tree lacks.
cmake --build build/asan -j "$(nproc)" --target fuzz_json fuzz_config fuzz_safetensors \
  fuzz_quant_section
mkdir -p build/fuzz-corpus
for h in json config safetensors quant_section; do
  echo "== fuzz_$h (${seconds}s)"
  (cd build/fuzz-corpus && "../asan/cpp/fuzz_$h" -max_total_time="$seconds" \
    "../../cpp/fuzz/corpus/$h")
done
export PYTHONPATH="$PWD/python:$PWD/training:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
for h in tokenizer_files gguf_import quant_section; do
  echo "== fuzz_$h.py (${seconds}s)"
  (cd build/fuzz-corpus && python "../../tests/fuzz/fuzz_$h.py" -max_total_time="$seconds" \
    -print_final_stats=1 "$h" 2>&1 | grep -v -E "^#[0-9]+ +(NEW|REDUCE|pulse)")
done
