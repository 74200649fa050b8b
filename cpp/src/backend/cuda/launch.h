// Host-side launchers of the CUDA kernels, one per op; each queues on `stream` and returns
// without waiting (the Backend rules of backend.h). Pointers are device memory.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_weight.h"
#include "medrt/kernels.h"

namespace medrt::cuda {

// Scratch of the GEMM's split-K partial sums (allocated once by the backend).
struct GemmScratch {
  float* data = nullptr;
  int64_t floats = 0;
};

// y[M, out] = x[M, in] @ W^T + bias. Few rows (decode): weight-only GEMV that dequantises in
// registers and reads each weight byte once per 8 rows; more rows (prefill, big decode
// batches): tensor-core GEMM over tiles dequantised into shared memory (kernels_gemm.cu), or
// its element-wise variant for rows that are not whole 16-byte pieces of 32 inputs.
void linear(const WeightView& w, const float* x, int64_t M, float* y, const GemmScratch& scratch,
            cudaStream_t stream);
constexpr int64_t kGemvMaxRows = 8;
constexpr int kGemvMaxWeights = 3;        // weights of one input gemv_shared runs in one launch
bool gemv_supports(const WeightView& w);  // row length a whole number of 16-byte loads
// A row's result depends only on its weight row and its x row: not on M (1..8), the other rows
// or the other weights of a gemv_shared launch.
void gemv(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream);
// ys[i] = x @ ws[i]^T + bias_i for n weights of one input (q/k/v, gate/up) in one launch, each
// bit-identical to gemv(ws[i], ...). Launches nothing and returns false unless 1 <= n <=
// kGemvMaxWeights, 1 <= M <= kGemvMaxRows and every weight takes the GEMV with one type and
// input width.
bool gemv_shared(const WeightView* ws, float* const* ys, int n, const float* x, int64_t M,
                 cudaStream_t stream);
bool gemm_vec_supports(const WeightView& w);  // in % 32 == 0 and 16-byte rows
void gemm_vec(const WeightView& w, const float* x, int64_t M, float* y,
              const GemmScratch& scratch, cudaStream_t stream);
void gemm(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream);

void embedding(const WeightView& table, const int32_t* tokens, int64_t T, float* out,
               cudaStream_t stream);
void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y,
             cudaStream_t stream);
// x += res, then y = rmsnorm(x) in one launch (rows of whole float4s; else the two ops).
void add_rmsnorm(float* x, const float* res, int64_t T, int64_t D, const float* w, float eps,
                 float* y, cudaStream_t stream);
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream);
void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, float* out,
              cudaStream_t stream);
void add(float* x, const float* y, int64_t n, cudaStream_t stream);
void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n, float* dst,
                 cudaStream_t stream);

void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
              const cpu::PagedKV& cache, cudaStream_t stream);
// RoPE of q [T, n_heads, hd] and k [T, kv_heads, hd] in place, then kv_write, in one launch.
void rope_kv_write(float* q, float* k, const float* v, int64_t T, int64_t n_heads,
                   const int32_t* positions, const float* inv_freq, const int32_t* slot_mapping,
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
