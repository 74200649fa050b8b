// Element-wise and row ops on the GPU: embedding lookup, RMSNorm, RoPE, SiLU gating, residual
// add, row gather. Reductions (RMSNorm) use a fixed tree per row, so a row's result never
// depends on the other rows of the batch.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/rope_math.cuh"
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

// The same norm for rows of whole float4s (every model width): a row's loads are all issued
// before any arithmetic and stay in registers (V float4 per thread, up to 1024 threads), so the
// kernel waits for one memory latency instead of one per element a thread visits. The sum
// order is fixed by D alone (per thread in k order, a fixed shuffle tree, the warps in order).
// With `res` (add_rmsnorm): x += res first, stored back to x, and the norm is of the sum: the
// same float adds as add_kernel, so the pair gives the bits add + rmsnorm give.
constexpr int kNormThreads = 1024;
template <int V>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_vec_kernel(float* x, const float* res, int64_t D, const float* w, float eps,
                       float* y) {
  __shared__ float partial[kNormThreads / 32];
  const int64_t n4 = D / 4;
  float4* xr = reinterpret_cast<float4*>(x + int64_t(blockIdx.x) * D);
  float4 v[V];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
    v[k] = i < n4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  if (res) {
    const float4* rr = reinterpret_cast<const float4*>(res + int64_t(blockIdx.x) * D);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i >= n4) break;
      const float4 r = rr[i];
      v[k] = make_float4(v[k].x + r.x, v[k].y + r.y, v[k].z + r.z, v[k].w + r.w);
      xr[i] = v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    s = fmaf(v[k].x, v[k].x, s);
    s = fmaf(v[k].y, v[k].y, s);
    s = fmaf(v[k].z, v[k].z, s);
    s = fmaf(v[k].w, v[k].w, s);
  }
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  float total = 0.0f;
  for (unsigned k = 0; k < blockDim.x / 32; ++k) total += partial[k];  // same order everywhere
  const float inv = 1.0f / sqrtf(total / float(D) + eps);
  const float4* wr = reinterpret_cast<const float4*>(w);
  float4* yr = reinterpret_cast<float4*>(y + int64_t(blockIdx.x) * D);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
    if (i >= n4) break;
    const float4 g = wr[i];
    yr[i] = make_float4(v[k].x * inv * g.x, v[k].y * inv * g.y, v[k].z * inv * g.z,
                        v[k].w * inv * g.w);
  }
}

// One thread per (row, head, pair i < head_dim / 2); rotate-half convention (kernels.h).
__global__ void rope_kernel(float* x, int64_t T, int64_t n_heads, int64_t head_dim,
                            const int32_t* positions, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * n_heads * half) return;
  const int64_t i = idx % half, th = idx / half, t = th / n_heads;
  rope_rotate(x + th * head_dim, i, half, positions[t], inv_freq[i]);
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

namespace {

// The vectorised norm (with `res`: after x += res) when rows are whole float4s at 16-byte
// addresses and fit 1024 x 8 float4; false when the caller must use the element kernels.
bool rmsnorm_vec(float* x, const float* res, int64_t T, int64_t D, const float* w, float eps,
                 float* y, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const int64_t n4 = D / 4;
  if (D % 4 != 0 || n4 > int64_t(kNormThreads) * 8 || !aligned(x) || !aligned(w) ||
      !aligned(y) || (res && !aligned(res)))
    return false;
  // The fewest float4 per thread that cover the row with at most 1024 threads.
  const int64_t per = (n4 + kNormThreads - 1) / kNormThreads;
  const int V = per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : 8;
  const unsigned threads =
      unsigned(std::min<int64_t>(kNormThreads, ((n4 + V - 1) / V + 31) / 32 * 32));
  const unsigned rows = unsigned(T);
  if (V == 1) rmsnorm_vec_kernel<1><<<rows, threads, 0, stream>>>(x, res, D, w, eps, y);
  else if (V == 2) rmsnorm_vec_kernel<2><<<rows, threads, 0, stream>>>(x, res, D, w, eps, y);
  else if (V == 4) rmsnorm_vec_kernel<4><<<rows, threads, 0, stream>>>(x, res, D, w, eps, y);
  else rmsnorm_vec_kernel<8><<<rows, threads, 0, stream>>>(x, res, D, w, eps, y);
  check_launch("rmsnorm_vec_kernel");
  return true;
}

}  // namespace

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y,
             cudaStream_t stream) {
  if (T <= 0) return;
  // Without `res` the vectorised kernel only reads x.
  if (rmsnorm_vec(const_cast<float*>(x), nullptr, T, D, w, eps, y, stream)) return;
  rmsnorm_kernel<<<unsigned(T), kThreads, 0, stream>>>(x, D, w, eps, y);
  check_launch("rmsnorm_kernel");
}

void add_rmsnorm(float* x, const float* res, int64_t T, int64_t D, const float* w, float eps,
                 float* y, cudaStream_t stream) {
  if (T <= 0) return;
  if (rmsnorm_vec(x, res, T, D, w, eps, y, stream)) return;
  add(x, res, T * D, stream);
  rmsnorm(x, T, D, w, eps, y, stream);
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
