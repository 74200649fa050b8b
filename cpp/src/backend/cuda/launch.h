// Host-side launchers of the CUDA kernels, one per op; each queues on `stream` and returns
// without waiting (the Backend rules of backend.h). Pointers are device memory.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_weight.h"
#include "medrt/kernels.h"

namespace medrt::cuda {

// y[M, out] = x[M, in] @ W^T + bias. Few rows (decode): weight-only GEMV that dequantises in
// registers and reads each weight byte once per 8 rows; more rows (prefill): tensor-core GEMM
// over tiles dequantised into shared memory.
void linear(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream);
constexpr int64_t kGemvMaxRows = 8;
bool gemv_supports(const WeightView& w);  // row length a whole number of 16-byte loads
void gemv(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream);
void gemm(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream);

void embedding(const WeightView& table, const int32_t* tokens, int64_t T, float* out,
               cudaStream_t stream);
void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y,
             cudaStream_t stream);
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream);
void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, float* out,
              cudaStream_t stream);
void add(float* x, const float* y, int64_t n, cudaStream_t stream);
void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n, float* dst,
                 cudaStream_t stream);

void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
              const cpu::PagedKV& cache, cudaStream_t stream);

// Scratch the split-KV partials may use; the launcher picks the number of key splits from the
// host-known shapes only (T, max_blocks), so a captured graph stays valid on replay.
struct AttentionScratch {
  float* data = nullptr;
  int64_t floats = 0;
};
void paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                     const cpu::AttentionBatch& batch, float scale, float* out,
                     const AttentionScratch& scratch, cudaStream_t stream);

}  // namespace medrt::cuda
