// Tensor-core GEMM for many rows (prefill, and decode batches above kGemvMaxRows):
// y[M, out] = x[M, in] @ W^T + bias with WMMA 16x16x16 and f32 accumulation.
//
// A CTA computes a 64x64 output tile, walking its share of K in steps of 32. Activations are
// read as float4 and rounded to the operand type; weights are read as whole 16-byte pieces and
// dequantised by the same decode16 the GEMV uses, into shared memory, so int8/int4/NF4 need no
// dequantised copy in HBM. Operands are f16 for F16 weights and bf16 otherwise (bf16 keeps the
// f32 exponent range, so large activations cannot overflow).
//
// Split-K: when the output has too few tiles to fill the GPU (a 3584-wide projection at 64
// rows is 56 tiles), K is cut into splits whose partial sums go to scratch and are added in
// split order by a second kernel (deterministic, unlike atomics, so graph replay stays
// bit-identical). The split count comes from the shapes alone.
//
// Shapes whose rows are not whole 16-byte pieces of 32 inputs take the element-wise kernel of
// kernels_linear.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/weight_decode.cuh"

namespace medrt::cuda {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 32, kPad = 8;
constexpr int kThreads = 128;  // 4 warps, each a 32x32 quarter of the tile
constexpr int kTargetCtas = 264;
constexpr int64_t kMinSplitK = 256;

template <typename Op>
__device__ __forceinline__ Op to_op(float v);
template <>
__device__ __forceinline__ __half to_op<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_op<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// out: y [M, w.out] with bias when splits == 1, else partials [splits, M, w.out] without.
template <WeightType T, typename Op>
__global__ void __launch_bounds__(kThreads)
    gemm_vec_kernel(WeightView w, const float* __restrict__ x, int64_t M, int64_t k_per_split,
                    float* __restrict__ out, bool partial) {
  using namespace nvcuda;
  constexpr int E = Elems16<T>::value;  // inputs per 16-byte piece
  constexpr int kVecPerRow = kBK / E;   // pieces of one weight row per k-step
  __shared__ __align__(32) Op As[kBM][kBK + kPad];
  __shared__ __align__(32) Op Bs[kBN][kBK + kPad];
  __shared__ __align__(32) float Cs[kBM][kBN + 4];
  __shared__ float nf4[16];
  if (threadIdx.x < 16) nf4[threadIdx.x] = kNf4Table[threadIdx.x];
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int64_t K = w.in;
  const int64_t k_begin = int64_t(blockIdx.z) * k_per_split;
  const int64_t k_end = min(K, k_begin + k_per_split);
  const int warp = int(threadIdx.x) / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t rb = row_bytes(T, K);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  __syncthreads();

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    // Activations: 64 rows x 8 float4.
    for (int e = int(threadIdx.x); e < kBM * (kBK / 4); e += kThreads) {
      const int r = e / (kBK / 4), q = e % (kBK / 4);
      const int64_t gm = m0 + r;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (gm < M) v = *reinterpret_cast<const float4*>(x + gm * K + k0 + 4 * q);
      As[r][4 * q] = to_op<Op>(v.x), As[r][4 * q + 1] = to_op<Op>(v.y);
      As[r][4 * q + 2] = to_op<Op>(v.z), As[r][4 * q + 3] = to_op<Op>(v.w);
    }
    // Weights: 64 rows x kVecPerRow pieces, dequantised in registers.
    for (int e = int(threadIdx.x); e < kBN * kVecPerRow; e += kThreads) {
      const int r = e / kVecPerRow, p = e % kVecPerRow;
      const int64_t gn = n0 + r;
      float vals[E];
      if (gn < w.out) {
        const int64_t v = k0 / E + p;
        const uint4 raw =
            __ldg(reinterpret_cast<const uint4*>(static_cast<const char*>(w.data) + gn * rb) + v);
        decode16<T>(w, gn, v, raw, nf4, vals);
        if constexpr (T == WeightType::Int8) {
          if (w.group_size == 0) {
            const float s = w.row_scales[gn];
#pragma unroll
            for (int j = 0; j < E; ++j) vals[j] *= s;
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < E; ++j) vals[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < E; ++j) Bs[r][p * E + j] = to_op<Op>(vals[j]);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, Op, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, Op, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], kBK + kPad);
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
  float* dst = partial ? out + int64_t(blockIdx.z) * M * w.out : out;
  for (int e = int(threadIdx.x); e < kBM * kBN; e += kThreads) {
    const int r = e / kBN, c = e % kBN;
    const int64_t gm = m0 + r, gn = n0 + c;
    if (gm < M && gn < w.out)
      dst[gm * w.out + gn] = Cs[r][c] + (!partial && w.bias ? w.bias[gn] : 0.0f);
  }
}

// y = sum over splits (in split order) + bias.
__global__ void sum_splits_kernel(const float* part, int splits, int64_t M, int64_t N,
                                  const float* bias, float* y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  float s = 0.0f;
  for (int k = 0; k < splits; ++k) s += part[int64_t(k) * M * N + i];
  y[i] = s + (bias ? bias[i % N] : 0.0f);
}

template <WeightType T>
void launch_typed(const WeightView& w, const float* x, int64_t M, float* y,
                  const GemmScratch& scratch, cudaStream_t stream) {
  const int64_t tiles_n = (w.out + kBN - 1) / kBN, tiles_m = (M + kBM - 1) / kBM;
  const int64_t k_steps = w.in / kBK;
  int64_t splits = std::max<int64_t>(1, kTargetCtas / std::max<int64_t>(1, tiles_n * tiles_m));
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, w.in / kMinSplitK));
  if (splits > 1)
    splits = std::min<int64_t>(splits, scratch.floats / std::max<int64_t>(1, M * w.out));
  splits = std::max<int64_t>(splits, 1);
  const int64_t steps_per_split = (k_steps + splits - 1) / splits;
  splits = (k_steps + steps_per_split - 1) / steps_per_split;
  const dim3 grid{unsigned(tiles_n), unsigned(tiles_m), unsigned(splits)};
  const bool partial = splits > 1;
  float* out = partial ? scratch.data : y;
  if constexpr (T == WeightType::F16)
    gemm_vec_kernel<T, __half><<<grid, kThreads, 0, stream>>>(w, x, M, steps_per_split * kBK,
                                                             out, partial);
  else
    gemm_vec_kernel<T, __nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        w, x, M, steps_per_split * kBK, out, partial);
  check_launch("gemm_vec_kernel");
  if (partial) {
    const int64_t n = M * w.out;
    sum_splits_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(scratch.data, int(splits),
                                                                     M, w.out, w.bias, y);
    check_launch("sum_splits_kernel");
  }
}

}  // namespace

bool gemm_vec_supports(const WeightView& w) {
  return w.in % kBK == 0 && row_bytes(w.type, w.in) % 16 == 0;
}

void gemm_vec(const WeightView& w, const float* x, int64_t M, float* y, const GemmScratch& s,
              cudaStream_t stream) {
  switch (w.type) {
    case WeightType::F32: return launch_typed<WeightType::F32>(w, x, M, y, s, stream);
    case WeightType::F16: return launch_typed<WeightType::F16>(w, x, M, y, s, stream);
    case WeightType::BF16: return launch_typed<WeightType::BF16>(w, x, M, y, s, stream);
    case WeightType::Int8: return launch_typed<WeightType::Int8>(w, x, M, y, s, stream);
    case WeightType::Nf4: return launch_typed<WeightType::Nf4>(w, x, M, y, s, stream);
    case WeightType::Int4: return launch_typed<WeightType::Int4>(w, x, M, y, s, stream);
    case WeightType::Int6: return;  // CudaBackend::prepare_linear refuses int6
  }
}

}  // namespace medrt::cuda
