#!/usr/bin/env bash
# The CUDA backend on a GPU machine, in one go (docs/cuda.md): builds libmedrt with the CUDA
# backend (sm_80 + sm_90, or the local GPU's arch), runs the GPU tests and the GPU benchmark,
# and writes everything under ${OUT:-build/gpu_check}. Budget: well under 10 minutes on an
# H200 (build ~3-5 min on 16 cores, tests < 1 min, benchmark ~2 min).
#   scripts/gpu_check.sh            # everything
#   GPU_CHECK_SKIP_BENCH=1 scripts/gpu_check.sh
#   GPU_CHECK_BIN=build/gpu/cpp scripts/gpu_check.sh   # binaries built elsewhere (e.g. on a
#       machine without a GPU: cmake -DMEDRT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90, targets
#       test_cuda_ops test_cuda_model medrt-gpu-bench); built here only if they do not start
#   GPU_CHECK_SANITIZE=1 ...        # also test_cuda_ops under compute-sanitizer (memcheck)
#   GPU_CHECK_SKIP_PEER=1 ...       # without the transformers SDPA peer
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_check}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
ARCH=${ARCH:-90}
BIN=${GPU_CHECK_BIN:-}
# A prebuilt binary starts here when it rejects a bad option (exit 2) rather than failing to
# load (127: a missing library or a newer glibc than this machine's).
prebuilt_runs() {
  [ -n "$BIN" ] && [ -x "$BIN/test_cuda_ops" ] && [ -x "$BIN/test_cuda_model" ] || return 1
  "$BIN/medrt-gpu-bench" --type none > /dev/null 2>&1
  [ $? -eq 2 ]
}
start=$(date +%s)
if prebuilt_runs; then
  log "prebuilt binaries in $BIN"
else
  log "build (sm_${ARCH})"
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  cmake -S . -B build/gpu "${GEN[@]}" -DMEDRT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${ARCH}" \
    -DMEDRT_BUILD_PYTHON=OFF -DMEDRT_BUILD_BENCH=ON > "$OUT/cmake.txt" 2>&1 \
    || { log "cmake failed"; tail -30 "$OUT/cmake.txt"; exit 1; }
  cmake --build build/gpu -j "$(nproc)" --target test_cuda_ops test_cuda_model medrt-gpu-bench \
    > "$OUT/build.txt" 2>&1 || { log "build failed"; grep -B2 -A8 error "$OUT/build.txt" | head -60; exit 1; }
  BIN=build/gpu/cpp
  log "built in $(( $(date +%s) - start )) s"
fi

status=0
for t in test_cuda_ops test_cuda_model; do
  log "$t"
  timeout 150 "$BIN/$t" > "$OUT/$t.txt" 2>&1
  rc=$?
  tail -20 "$OUT/$t.txt" | tee -a "$OUT/summary.txt"
  log "$t exit $rc"
  [ $rc -eq 0 ] || status=1
done

PY=$(command -v python3 || command -v python)
# The engine on the GPU (tests/test_gpu.py), when medrt._core imports here: an installed medrt
# built with -DMEDRT_CUDA=ON, or the module built for this Python placed in python/medrt.
PYPATH=python:training:tests${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${GPU_CHECK_SKIP_PYTEST:-}" ]; then
  if PYTHONPATH=$PYPATH "$PY" -c "import medrt._core" > "$OUT/pytest_import.txt" 2>&1; then
    log "pytest tests/test_gpu.py (medrt.LLM on the GPU)"
    PYTHONPATH=$PYPATH "$PY" -c "from medrt.cli import main; main(['info'])" 2>&1 \
      | tee -a "$OUT/summary.txt"
    PYTHONPATH=$PYPATH PYTHONUNBUFFERED=1 timeout 300 "$PY" -m pytest -q -p no:cacheprovider \
      tests/test_gpu.py > "$OUT/pytest_gpu.txt" 2>&1
    rc=$?
    tail -15 "$OUT/pytest_gpu.txt" | tee -a "$OUT/summary.txt"
    log "pytest exit $rc"
    [ $rc -eq 0 ] || status=1
  else
    log "pytest skipped: medrt._core does not import here ($(tail -1 "$OUT/pytest_import.txt"))"
  fi
fi

if [ -z "${GPU_CHECK_SKIP_BENCH:-}" ]; then
  log "benchmark bf16 (7B shapes, context 128)"
  timeout 180 "$BIN/medrt-gpu-bench" --type bf16 --batch 1 --batch 16 --batch 64 \
    --steps 30 2>&1 | tee "$OUT/bench_bf16.txt" | tee -a "$OUT/summary.txt"
  log "benchmark int4 g64"
  timeout 150 "$BIN/medrt-gpu-bench" --type int4 --batch 1 --batch 16 --steps 30 2>&1 \
    | tee "$OUT/bench_int4.txt" | tee -a "$OUT/summary.txt"
  if [ -z "${GPU_CHECK_SKIP_PEER:-}" ] &&
     "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
  then
    log "transformers SDPA, 64 concurrent (7B shapes, random weights)"
    timeout 180 "$PY" scripts/bench/gpu_transformers_sdpa.py --batch 64 2>&1 \
      | tee "$OUT/bench_transformers.txt" | tee -a "$OUT/summary.txt"
  else
    log "transformers comparison skipped (GPU_CHECK_SKIP_PEER, or no CUDA torch here)"
  fi
fi

if [ -n "${GPU_CHECK_SANITIZE:-}" ] && command -v compute-sanitizer > /dev/null; then
  log "test_cuda_ops under compute-sanitizer memcheck"
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/test_cuda_ops" \
    > "$OUT/sanitizer.txt" 2>&1
  rc=$?
  tail -15 "$OUT/sanitizer.txt" | tee -a "$OUT/summary.txt"
  log "compute-sanitizer exit $rc"
  [ $rc -eq 0 ] || status=1
fi
log "done in $(( $(date +%s) - start )) s, status $status"
exit $status
