// Linear layers on the GPU, every weight type of linear.h.
//
// Decode (M <= kGemvMaxRows): weight-only GEMV. One warp per output row; lane l reads the
// row's 16-byte pieces l, l + 32, ... (coalesced), dequantises them in registers and
// multiplies them with up to 8 activation rows, so a weight byte crosses HBM once per step.
// The warp's lanes are summed with a fixed shuffle tree: a row's result does not depend on M.
//
// More rows: the vectorised tensor-core GEMM of kernels_gemm.cu; for rows that are not whole
// 16-byte pieces of 32 inputs (tiny test models), the element-wise WMMA kernel below: a 64x64
// output tile walks K in steps of 32, each weight element dequantised by weight_at into shared
// memory. Operands are f16 for F16 weights and bf16 otherwise.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/weight_decode.cuh"

namespace medrt::cuda {
namespace {

constexpr int kGemvWarps = 4;  // output rows per block

template <WeightType T, int MT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_kernel(WeightView w, const float* __restrict__ x, int M, float* __restrict__ y) {
  __shared__ float nf4[16];
  if (threadIdx.x < 16) nf4[threadIdx.x] = kNf4Table[threadIdx.x];
  __syncthreads();
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t r = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (r >= w.out) return;
  constexpr int E = Elems16<T>::value;
  const int64_t nvec = row_bytes(T, w.in) / 16;
  const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(w.data) +
                                                    r * row_bytes(T, w.in));
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
#pragma unroll 4
  for (int64_t v = lane; v < nvec; v += 32) {
    const uint4 raw = __ldg(row + v);
    float wv[E];
    decode16<T>(w, r, v, raw, nf4, wv);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < M) {
        const float4* xp = reinterpret_cast<const float4*>(x + m * w.in + v * E);
        float s = 0.0f;
#pragma unroll
        for (int q = 0; q < E / 4; ++q) {
          const float4 xv = __ldg(xp + q);
          s = fmaf(wv[4 * q], xv.x, s);
          s = fmaf(wv[4 * q + 1], xv.y, s);
          s = fmaf(wv[4 * q + 2], xv.z, s);
          s = fmaf(wv[4 * q + 3], xv.w, s);
        }
        acc[m] += s;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
  }
  if (lane == 0) {
    const float rs = (T == WeightType::Int8 && w.group_size == 0) ? w.row_scales[r] : 1.0f;
    const float b = w.bias ? w.bias[r] : 0.0f;
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m < M) y[m * w.out + r] = acc[m] * rs + b;
  }
}

template <WeightType T>
void gemv_typed(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream) {
  const dim3 grid(unsigned((w.out + kGemvWarps - 1) / kGemvWarps)), block(kGemvWarps * 32);
  for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxRows) {
    const int mc = int(M - m0 < kGemvMaxRows ? M - m0 : kGemvMaxRows);
    const float* xc = x + m0 * w.in;
    float* yc = y + m0 * w.out;
    if (mc == 1)
      gemv_kernel<T, 1><<<grid, block, 0, stream>>>(w, xc, mc, yc);
    else if (mc == 2)
      gemv_kernel<T, 2><<<grid, block, 0, stream>>>(w, xc, mc, yc);
    else if (mc <= 4)
      gemv_kernel<T, 4><<<grid, block, 0, stream>>>(w, xc, mc, yc);
    else
      gemv_kernel<T, 8><<<grid, block, 0, stream>>>(w, xc, mc, yc);
    check_launch("gemv_kernel");
  }
}

// ---- tensor-core GEMM ----------------------------------------------------------------------

constexpr int kBM = 64, kBN = 64, kBK = 32, kPad = 8;  // pad: fewer shared-memory bank conflicts
constexpr int kGemmThreads = 128;                      // 4 warps, each a 32x32 quarter

template <typename Op>
__device__ __forceinline__ Op to_op(float v);
template <>
__device__ __forceinline__ __half to_op<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_op<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename Op>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_kernel(WeightView w, const float* __restrict__ x, int64_t M, float* __restrict__ y) {
  using namespace nvcuda;
  __shared__ __align__(32) Op As[kBM][kBK + kPad];  // activation rows
  __shared__ __align__(32) Op Bs[kBN][kBK + kPad];  // weight rows (output features)
  __shared__ __align__(32) float Cs[kBM][kBN + 4];
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int warp = int(threadIdx.x) / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t K = w.in;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    for (int e = int(threadIdx.x); e < kBM * kBK; e += kGemmThreads) {
      const int rr = e / kBK, kk = e % kBK;
      const int64_t gm = m0 + rr, gk = k0 + kk;
      As[rr][kk] = to_op<Op>(gm < M && gk < K ? x[gm * K + gk] : 0.0f);
    }
    for (int e = int(threadIdx.x); e < kBN * kBK; e += kGemmThreads) {
      const int rr = e / kBK, kk = e % kBK;
      const int64_t gn = n0 + rr, gk = k0 + kk;
      Bs[rr][kk] = to_op<Op>(gn < w.out && gk < K ? weight_at(w, gn, gk) : 0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], kBK + kPad);
      // B[k][n] = W[n][k]: Bs holds rows n with k contiguous, i.e. B in column-major order.
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &Bs[wn + 16 * j][kk], kBK + kPad);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc[i][j], kBN + 4,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = int(threadIdx.x); e < kBM * kBN; e += kGemmThreads) {
    const int rr = e / kBN, cc = e % kBN;
    const int64_t gm = m0 + rr, gn = n0 + cc;
    if (gm < M && gn < w.out) y[gm * w.out + gn] = Cs[rr][cc] + (w.bias ? w.bias[gn] : 0.0f);
  }
}

}  // namespace

bool gemv_supports(const WeightView& w) { return row_bytes(w.type, w.in) % 16 == 0; }

void gemv(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream) {
  switch (w.type) {
    case WeightType::F32: return gemv_typed<WeightType::F32>(w, x, M, y, stream);
    case WeightType::F16: return gemv_typed<WeightType::F16>(w, x, M, y, stream);
    case WeightType::BF16: return gemv_typed<WeightType::BF16>(w, x, M, y, stream);
    case WeightType::Int8: return gemv_typed<WeightType::Int8>(w, x, M, y, stream);
    case WeightType::Nf4: return gemv_typed<WeightType::Nf4>(w, x, M, y, stream);
    case WeightType::Int4: return gemv_typed<WeightType::Int4>(w, x, M, y, stream);
    case WeightType::Int6: return;  // CudaBackend::prepare_linear refuses int6
  }
}

void gemm(const WeightView& w, const float* x, int64_t M, float* y, cudaStream_t stream) {
  const dim3 grid(unsigned((w.out + kBN - 1) / kBN), unsigned((M + kBM - 1) / kBM));
  if (w.type == WeightType::F16)
    gemm_kernel<__half><<<grid, kGemmThreads, 0, stream>>>(w, x, M, y);
  else
    gemm_kernel<__nv_bfloat16><<<grid, kGemmThreads, 0, stream>>>(w, x, M, y);
  check_launch("gemm_kernel");
}

void linear(const WeightView& w, const float* x, int64_t M, float* y, const GemmScratch& scratch,
            cudaStream_t stream) {
  if (M <= 0) return;
  if (M <= kGemvMaxRows && gemv_supports(w))
    gemv(w, x, M, y, stream);
  else if (gemm_vec_supports(w))
    gemm_vec(w, x, M, y, scratch, stream);
  else
    gemm(w, x, M, y, stream);
}

}  // namespace medrt::cuda
