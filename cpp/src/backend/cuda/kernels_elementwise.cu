// Element-wise and row ops on the GPU: embedding lookup, RMSNorm, RoPE, SiLU gating, residual
// add, row gather. Reductions (RMSNorm) use a fixed tree per row, so a row's result never
// depends on the other rows of the batch.
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/weight_decode.cuh"

namespace medrt::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

// A token id outside the table gives a zero row: the engine validates ids before they get
// here (InvalidRequest), and a kernel cannot throw.
__global__ void embedding_kernel(WeightView table, const int32_t* tokens, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t tok = tokens[t];
  const bool valid = tok >= 0 && tok < table.out;
  for (int64_t i = threadIdx.x; i < table.in; i += blockDim.x)
    out[t * table.in + i] = valid ? weight_at(table, tok, i) : 0.0f;
}

__global__ void rmsnorm_kernel(const float* x, int64_t D, const float* w, float eps, float* y) {
  __shared__ float partial[kThreads / 32];
  const int64_t t = blockIdx.x;
  const float* xr = x + t * D;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  float total = 0.0f;
  for (int k = 0; k < kThreads / 32; ++k) total += partial[k];  // same order in every thread
  const float inv = 1.0f / sqrtf(total / float(D) + eps);
  float* yr = y + t * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// One thread per (row, head, pair i < head_dim / 2); rotate-half convention (kernels.h).
__global__ void rope_kernel(float* x, int64_t T, int64_t n_heads, int64_t head_dim,
                            const int32_t* positions, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * n_heads * half) return;
  const int64_t i = idx % half, th = idx / half, t = th / n_heads;
  float sn, cs;
  sincosf(float(positions[t]) * inv_freq[i], &sn, &cs);
  float* xh = x + th * head_dim;
  const float a = xh[i], b = xh[i + half];
  xh[i] = a * cs - b * sn;
  xh[i + half] = b * cs + a * sn;
}

__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void gather_rows_kernel(const float* src, int64_t width, const int32_t* rows,
                                   float* dst) {
  const int64_t r = blockIdx.x;
  const float* s = src + int64_t(rows[r]) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[r * width + i] = s[i];
}

}  // namespace

void embedding(const WeightView& table, const int32_t* tokens, int64_t T, float* out,
               cudaStream_t stream) {
  if (T <= 0) return;
  embedding_kernel<<<unsigned(T), kThreads, 0, stream>>>(table, tokens, out);
  check_launch("embedding_kernel");
}

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y,
             cudaStream_t stream) {
  if (T <= 0) return;
  rmsnorm_kernel<<<unsigned(T), kThreads, 0, stream>>>(x, D, w, eps, y);
  check_launch("rmsnorm_kernel");
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream) {
  const int64_t n = T * n_heads * (head_dim / 2);
  if (n <= 0) return;
  rope_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, T, n_heads, head_dim, positions,
                                                      inv_freq);
  check_launch("rope_kernel");
}

void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, float* out,
              cudaStream_t stream) {
  const int64_t n = T * F;
  if (n <= 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, stream>>>(gate, up, n, out);
  check_launch("silu_mul_kernel");
}

void add(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
  check_launch("add_kernel");
}

void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n, float* dst,
                 cudaStream_t stream) {
  if (n <= 0) return;
  gather_rows_kernel<<<unsigned(n), kThreads, 0, stream>>>(src, width, rows, dst);
  check_launch("gather_rows_kernel");
}

}  // namespace medrt::cuda
