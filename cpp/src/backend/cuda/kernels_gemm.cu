// Tensor-core GEMM for many rows (prefill, and decode batches above kGemvMaxRows):
// y[M, out] = x[M, in] @ W^T + bias, mma.sync m16n8k16 with f32 accumulation; operands f16
// for F16 weights and bf16 otherwise (bf16 keeps the f32 exponent range, so large
// activations cannot overflow).
//
// What bounds it. A decode batch of 16..64 rows is weight-bandwidth bound: the weights are the
// dominant bytes (7B bf16: 14.1 GB a step, 2.9 ms at H200's 4.8 TB/s); the math is smaller
// (2 * 64 * 7.1e9 flop = 0.9 TFLOP, ~1.7 ms if mma.sync reaches ~55% of the 990 TFLOP/s dense
// bf16 peak) and overlaps the streaming. Streaming at 4.8 TB/s needs ~36 KB of loads in flight
// per SM (132 SMs, ~1 us loaded HBM latency; Little's law) and every weight byte read once. So:
//
// - One CTA computes BM rows x 256 weight rows; BM is 16, 32 or 64 for M <= 16/32/64 (one row
//   tile: each weight byte crosses HBM exactly once) and 128 for larger M (prefill; grouped
//   raster so the CTAs resident together share weight and activation tiles in L2).
//   256 weight rows per CTA halve the activation re-reads against 128 (each CTA re-reads its
//   f32 activations from L2: BM * 4 bytes per input against 256 * 2 of bf16 weights).
// - A cp.async ring of raw bytes: STAGES stages of K = 32 inputs (activations as f32, weights
//   in their stored bytes, 16-byte copies with the L2 128-byte prefetch hint), sized to at most
//   99 KB for BM <= 64 (two CTAs per SM on sm_90; bf16: 3-4 stages of 16 KB of weights, 2-3 in
//   flight per CTA, 64-96 KB per SM) and 160 KB for BM = 128 (one CTA per SM, 4 bf16 stages).
//   Quantised types have small stages, so they get more of them (int4: 5-8).
// - f16/bf16 weights are fed to ldmatrix straight from the ring (rows padded to 80 bytes: the
//   8 row addresses of an 8x8 matrix fall in 8 different 16-byte bank groups). Other types are
//   dequantised once per stage by weight_decode.cuh's decode16 from the ring into one shared
//   operand tile (one weight row per thread, the same 80-byte rows). The group scales decode16
//   loads itself are prefetched into L1 when the stage's copy is issued, STAGES-1 steps ahead,
//   so the dequantisation does not wait on L2. An int8 per-row scale is applied in the
//   epilogue (int8 codes are exact in bf16).
// - Activations are converted from the f32 ring to bf16/f16 fragments in registers (a float2
//   per fragment register; rows padded to 40 floats so a warp's reads take the minimum two
//   shared-memory wavefronts): no second tile, no extra barrier, no pre-pass kernel (a bf16
//   copy of x would be a second launch per linear, ~0.3 ms a decode step).
// - Split-K when the tiles alone cannot keep the SMs busy (a 3584-wide output at 64 rows is 14
//   tiles): split s writes f32 partials to scratch [s][M][out] and a second kernel adds them in
//   split order, then the bias (deterministic, no atomics, graph-safe). The split count comes
//   from a cost model over host-known values only (M, out, in, weight type, SM count): per-SM
//   time (CTAs per SM x k-steps x max(bytes / per-SM bandwidth, mma / mma rate)) against the
//   whole-GPU HBM time, plus the partials' traffic and the reduction's launch. The same M and
//   shape always give the same kernels and the same summation order, so results are bit-
//   identical across calls and under graph replay. (A row's result depends on the split count,
//   which depends on M: rows are bit-identical across batches with the same split count only.)
//
// Dynamic shared memory above 48 KB: every instantiation is opted in (cudaFuncSetAttribute)
// once per device, at the device's first GEMM, with this thread's capture mode relaxed for
// the calls in case that first GEMM is being captured (device_setup). A tile that does not fit
// the device (sm_86/89 allow 99 KB) gives way to the next smaller tile, and to the element-wise
// kernel of kernels_linear.cu when none fits. Shapes: in % 32 == 0 with whole 16-byte rows
// (gemm_vec_supports), any M and out (ragged tiles are zero-filled and masked); other shapes
// take the element-wise kernel, as do activations that are not 16-byte aligned.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/weight_decode.cuh"

namespace medrt::cuda {
namespace {

constexpr int kBN = 256;        // weight rows (outputs) per CTA
constexpr int kBK = 32;         // inputs per pipeline stage
constexpr int kThreads = 256;   // 8 warps; the dequantiser gives each thread one weight row
constexpr int kAStride = kBK + 8;   // floats per activation row in shared memory (160 bytes)
constexpr int kOpStride = kBK + 8;  // 16-bit operands per weight row in shared memory (80 bytes)
constexpr int kGroupM = 8;          // row tiles per raster group (large M)
static_assert(kBN == kThreads, "the dequantiser maps one weight row to one thread");

// BM activation rows per CTA; WARPS_M x (8 / WARPS_M) warps; MIN_CTAS resident per SM for
// __launch_bounds__; BUDGET bytes of shared memory the stage count is sized to.
template <int BM_, int WARPS_M_, int MIN_CTAS_, int BUDGET_>
struct Tile {
  static constexpr int BM = BM_;
  static constexpr int kWarpsM = WARPS_M_, kWarpsN = 8 / WARPS_M_;
  static constexpr int WM = BM / kWarpsM, WN = kBN / kWarpsN;  // warp tile
  static constexpr int MT = WM / 16, NT = WN / 8;                // mma tiles per warp
  static constexpr int kMinCtas = MIN_CTAS_, kBudget = BUDGET_;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile of whole 16x16 pieces");
};
// 99 KB: the per-block limit of sm_86/89, and two CTAs per SM on sm_90 (228 KB).
using Tile16 = Tile<16, 1, 2, 99 * 1024>;    // warp 16x32
using Tile32 = Tile<32, 1, 2, 99 * 1024>;    // warp 32x32
using Tile64 = Tile<64, 2, 2, 99 * 1024>;    // warp 32x64
using Tile128 = Tile<128, 2, 1, 160 * 1024>; // warp 64x64; 160 KB fits A100's 163 KB

template <WeightType T>
constexpr int weight_bits() {
  return T == WeightType::F32 ? 32
         : (T == WeightType::F16 || T == WeightType::BF16) ? 16
         : T == WeightType::Int8 ? 8
                                 : 4;
}
// f16/bf16 weights are already operands: ldmatrix reads them from the ring.
template <WeightType T>
constexpr bool kDirect = T == WeightType::F16 || T == WeightType::BF16;

template <WeightType T, class C>
struct Layout {
  static constexpr int kRawRow = kBK * weight_bits<T>() / 8;  // bytes of a row per stage
  // 16 bytes of padding spread 8 consecutive rows over 8 different 16-byte bank groups
  // (ldmatrix rows, and the dequantiser's one-row-per-thread reads); 16-byte rows already are.
  static constexpr int kRawStride = kRawRow + (kRawRow > 16 ? 16 : 0);
  static constexpr int kABytes = C::BM * kAStride * 4;
  static constexpr int kBBytes = kBN * kRawStride;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kOpBytes = kDirect<T> ? 0 : kBN * kOpStride * 2;
  static constexpr int kTableBytes = T == WeightType::Nf4 ? 16 * 4 : 0;
  static constexpr int kFixed = kOpBytes + kTableBytes;
  static constexpr int kFit = (C::kBudget - kFixed) / kStageBytes;
  static constexpr int kStages = kFit < 2 ? 2 : kFit > 8 ? 8 : kFit;
  static constexpr int kSmem = kStages * kStageBytes + kFixed;
  static_assert(kDirect<T> == false || kRawStride == kOpStride * 2, "ldmatrix row stride");
  static_assert(kRawRow % 16 == 0, "whole 16-byte copies per row and stage");
};

// ---- PTX wrappers ---------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; src_bytes 0 zero-fills (rows past M or out).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(__cvta_generic_to_global(p)));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                            uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// Two floats as one operand register; the lower k index in the low half.
template <typename Op>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t u;
  if constexpr (std::is_same_v<Op, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    memcpy(&u, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    memcpy(&u, &h, 4);
  }
  return u;
}

// c += a (16x16, row) * b (16x8, col).
template <typename Op>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b) {
  if constexpr (std::is_same_v<Op, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// ---- the GEMM kernel ------------------------------------------------------------------------

// Grid: x = output tile (grouped raster over tiles_m x ceil(out / 256)), z = K split of
// steps_per_split k-steps. out: y [M, w.out] with bias when !partial, else the split's plane
// of partials [splits, M, w.out] without bias. The int8 row scale is applied either way.
template <WeightType T, typename Op, class C>
__global__ void __launch_bounds__(kThreads, C::kMinCtas)
    gemm_tc_kernel(const WeightView w, const float* __restrict__ x, const int64_t M,
                   const int tiles_m, const int steps_per_split, float* __restrict__ out,
                   const bool partial) {
  using L = Layout<T, C>;
  constexpr int S = L::kStages;
  constexpr int E = Elems16<T>::value;       // inputs per 16-byte piece
  constexpr int kPieces = kBK / E;           // pieces of a row per stage
  constexpr int kCpr = L::kRawRow / 16;      // 16-byte copies of a row per stage
  constexpr int kRowsPerPass = kThreads / kCpr;
  constexpr int kAChunks = C::BM * (kBK / 4);
  extern __shared__ __align__(128) unsigned char smem[];
  float* nf4 = reinterpret_cast<float*>(smem + S * L::kStageBytes + L::kOpBytes);
  unsigned char* op_tile = smem + S * L::kStageBytes;

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t N = w.out, K = w.in;
  const int tiles_n = int((N + kBN - 1) / kBN);
  // Grouped raster: kGroupM row tiles walk the column tiles together, so the CTAs resident at
  // one time share both operands in L2. With one row tile this is just the column tile.
  const int pid = int(blockIdx.x);
  const int group = pid / (kGroupM * tiles_n), first_m = group * kGroupM;
  const int group_rows = min(tiles_m - first_m, kGroupM);
  const int in_group = pid - group * kGroupM * tiles_n;
  const int64_t m0 = int64_t(first_m + in_group % group_rows) * C::BM;
  const int64_t n0 = int64_t(in_group / group_rows) * kBN;
  const int k_steps = int(K / kBK);
  const int kb = int(blockIdx.z) * steps_per_split;
  const int nk = min(k_steps - kb, steps_per_split);
  const int64_t rb = row_bytes(T, K);
  const char* wdata = static_cast<const char*>(w.data);

  if constexpr (T == WeightType::Nf4) {
    if (tid < 16) nf4[tid] = kNf4Table[tid];
  }

  // Copies of stage `kstep` into ring slot `slot`: activations [BM][32] f32, weights
  // [256][raw row]; rows past M / out are zero-filled (from a valid address: the row base).
  // Per thread: activation chunk c = tid + i * 256 (row c / 8); weight rows tid / kCpr +
  // i * kRowsPerPass, piece tid % kCpr. Addresses are recomputed per stage from a few values
  // rather than hoisted per chunk, which would cost ~4 registers a chunk.
  const char* w_first = wdata + (n0 + tid / kCpr) * rb + (tid % kCpr) * 16;
  const int64_t w_rows_left = N - (n0 + tid / kCpr);  // rows of this thread still < N: i < ...
  const int b_dst0 = L::kABytes + (tid / kCpr) * L::kRawStride + (tid % kCpr) * 16;
  auto load_stage = [&](int slot, int kstep) {
    unsigned char* st = smem + slot * L::kStageBytes;
#pragma unroll
    for (int i = 0; i < (kAChunks + kThreads - 1) / kThreads; ++i) {
      const int c = tid + i * kThreads;
      if (kAChunks % kThreads == 0 || c < kAChunks) {
        const int r = c / (kBK / 4), q = c % (kBK / 4);
        const bool ok = m0 + r < M;
        const float* src = x + (ok ? (m0 + r) * K + int64_t(kstep) * kBK + 4 * q : 0);
        cp_async16(smem_u32(st + r * (kAStride * 4) + q * 16), src, ok ? 16 : 0);
      }
    }
    const char* wsrc = w_first + int64_t(kstep) * L::kRawRow;
#pragma unroll
    for (int i = 0; i < kCpr; ++i) {
      const bool ok = int64_t(i) * kRowsPerPass < w_rows_left;
      const char* src = ok ? wsrc + int64_t(i) * kRowsPerPass * rb : wdata;
      cp_async16(smem_u32(st + b_dst0 + i * kRowsPerPass * L::kRawStride), src, ok ? 16 : 0);
    }
    // The group scales decode16 will load for this stage, into L1 now (row tid).
    if constexpr (T == WeightType::Int4 || T == WeightType::Nf4 || T == WeightType::Int8) {
      const int64_t gn = n0 + tid;
      if (gn < N && w.group_size > 0) {
        const int64_t gpr = w.groups_per_row();
#pragma unroll
        for (int p = 0; p < kPieces; ++p) {
          const int64_t g = gn * gpr + (int64_t(kstep) * kBK + p * E) / w.group_size;
          if constexpr (T == WeightType::Int4)
            prefetch_l1(w.params + g);
          else
            prefetch_l1(w.scales + g);
        }
      }
    }
  };

  // Dequantise the ring's weight bytes of stage `kstep` into the operand tile (row tid).
  auto convert = [&](int slot, int kstep) {
    const unsigned char* raw = smem + slot * L::kStageBytes + L::kABytes + tid * L::kRawStride;
    unsigned char* dst = op_tile + tid * (kOpStride * 2);
    const int64_t gn = n0 + tid;
#pragma unroll
    for (int p = 0; p < kPieces; ++p) {
      const uint4 piece = *reinterpret_cast<const uint4*>(raw + 16 * p);
      float v[E];
      if (gn < N) {
        decode16<T>(w, gn, int64_t(kstep) * kPieces + p, piece, nf4, v);
      } else {
#pragma unroll
        for (int j = 0; j < E; ++j) v[j] = 0.0f;
      }
      if constexpr (E == 4) {
        *reinterpret_cast<uint2*>(dst + p * 8) =
            make_uint2(pack2<Op>(v[0], v[1]), pack2<Op>(v[2], v[3]));
      } else {
#pragma unroll
        for (int j = 0; j < E / 8; ++j)
          *reinterpret_cast<uint4*>(dst + (p * E + 8 * j) * 2) =
              make_uint4(pack2<Op>(v[8 * j], v[8 * j + 1]), pack2<Op>(v[8 * j + 2], v[8 * j + 3]),
                         pack2<Op>(v[8 * j + 4], v[8 * j + 5]),
                         pack2<Op>(v[8 * j + 6], v[8 * j + 7]));
      }
    }
  };

  const int wm0 = (warp / C::kWarpsN) * C::WM, wn0 = (warp % C::kWarpsN) * C::WN;
  const int g = lane / 4, t = lane % 4;
  float acc[C::MT][C::NT][4];
#pragma unroll
  for (int i = 0; i < C::MT; ++i)
#pragma unroll
    for (int j = 0; j < C::NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // ldmatrix x4 for two n8 tiles: lanes 8j..8j+7 address the rows of matrix j = (n half j / 2,
  // k half j % 2), so registers 0-3 are b[n][0], b[n][1], b[n+1][0], b[n+1][1].
  const int ld_row = wn0 + (lane / 16) * 8 + lane % 8, ld_col = ((lane / 8) % 2) * 8;

  auto compute = [&](int slot) {
    const float* as = reinterpret_cast<const float*>(smem + slot * L::kStageBytes);
    const uint32_t bs = kDirect<T> ? smem_u32(smem + slot * L::kStageBytes + L::kABytes)
                                   : smem_u32(op_tile);
    // Two CTAs per SM (128 registers): one k16 at a time, or the compiler's prefetch of the
    // next k16's fragments spills; the other CTA's warps hide the shared-memory latency.
#pragma unroll(C::kMinCtas > 1 ? 1 : 2)
    for (int kk = 0; kk < kBK; kk += 16) {
      // A fragments of the warp's rows first (MT x 4 registers), then the weight fragments
      // one pair of n8 tiles at a time: fewer live registers than holding all of B.
      uint32_t a[C::MT][4];
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt) {
        // (g, 2t..), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..) of the 16x16 A tile.
        const float* a0 = as + (wm0 + mt * 16 + g) * kAStride + kk + 2 * t;
        const float2 v0 = *reinterpret_cast<const float2*>(a0);
        const float2 v1 = *reinterpret_cast<const float2*>(a0 + 8 * kAStride);
        const float2 v2 = *reinterpret_cast<const float2*>(a0 + 8);
        const float2 v3 = *reinterpret_cast<const float2*>(a0 + 8 * kAStride + 8);
        a[mt][0] = pack2<Op>(v0.x, v0.y), a[mt][1] = pack2<Op>(v1.x, v1.y);
        a[mt][2] = pack2<Op>(v2.x, v2.y), a[mt][3] = pack2<Op>(v3.x, v3.y);
      }
#pragma unroll
      for (int np = 0; np < C::NT / 2; ++np) {
        uint32_t b[2][2];
        ldmatrix_x4(bs + (ld_row + np * 16) * (kOpStride * 2) + (kk + ld_col) * 2, b[0][0],
                    b[0][1], b[1][0], b[1][1]);
#pragma unroll
        for (int mt = 0; mt < C::MT; ++mt) {
          mma16816<Op>(acc[mt][2 * np], a[mt], b[0]);
          mma16816<Op>(acc[mt][2 * np + 1], a[mt], b[1]);
        }
      }
    }
  };

  // Pipeline: stages it+1 .. it+S-1 are in flight while stage it is computed. One commit per
  // step (empty past the end) keeps wait_group's count uniform.
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < nk) load_stage(s, kb + s);
    cp_async_commit();
  }
  int slot = 0, next_slot = S - 1;  // it % S and (it + S - 1) % S without divisions
#pragma unroll 1
  for (int it = 0; it < nk; ++it) {
    cp_async_wait<S - 2>();  // this thread's copies of stage it have landed
    __syncthreads();         // everyone's have; everyone is done with step it-1's slot
    if (it + S - 1 < nk) load_stage(next_slot, kb + it + S - 1);
    cp_async_commit();
    if constexpr (!kDirect<T>) {
      convert(slot, kb + it);
      __syncthreads();
    }
    compute(slot);
    slot = slot + 1 == S ? 0 : slot + 1;
    next_slot = next_slot + 1 == S ? 0 : next_slot + 1;
  }
  cp_async_wait<0>();

  // Epilogue from registers: c0,c1 at (g, 2t..2t+1), c2,c3 at (g + 8, ...) of each 16x8 tile.
  float* dst = partial ? out + int64_t(blockIdx.z) * M * N : out;
  const bool pairs = N % 2 == 0 && reinterpret_cast<uintptr_t>(dst) % 8 == 0;
#pragma unroll
  for (int nt = 0; nt < C::NT; ++nt) {
    const int64_t col = n0 + wn0 + nt * 8 + 2 * t;
    if (col >= N) continue;
    const bool has1 = col + 1 < N;
    float s0 = 1.0f, s1 = 1.0f, b0 = 0.0f, b1 = 0.0f;
    if constexpr (T == WeightType::Int8) {
      if (w.group_size == 0) {
        s0 = w.row_scales[col];
        s1 = has1 ? w.row_scales[col + 1] : 0.0f;
      }
    }
    if (!partial && w.bias) {
      b0 = w.bias[col];
      b1 = has1 ? w.bias[col + 1] : 0.0f;
    }
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + wm0 + mt * 16 + g + 8 * h;
        if (row >= M) continue;
        const float y0 = acc[mt][nt][2 * h] * s0 + b0, y1 = acc[mt][nt][2 * h + 1] * s1 + b1;
        float* p = dst + row * N + col;
        if (pairs) {
          *reinterpret_cast<float2*>(p) = make_float2(y0, y1);
        } else {
          p[0] = y0;
          if (has1) p[1] = y1;
        }
      }
  }
}

// y = partial planes summed in split order, then the bias.
__global__ void sum_splits_kernel(const float* __restrict__ part, int splits, int64_t MN,
                                  int64_t N, const float* __restrict__ bias,
                                  float* __restrict__ y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= MN) return;
  float s = part[i];
  for (int k = 1; k < splits; ++k) s += part[int64_t(k) * MN + i];
  y[i] = s + (bias ? bias[i % N] : 0.0f);
}

// The same with 4 outputs per thread (N % 4 == 0, y 16-byte aligned); the same sums.
__global__ void sum_splits4_kernel(const float4* __restrict__ part, int splits, int64_t MN4,
                                   int64_t N, const float* __restrict__ bias,
                                   float4* __restrict__ y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= MN4) return;
  float4 s = part[i];
  for (int k = 1; k < splits; ++k) {
    const float4 v = part[int64_t(k) * MN4 + i];
    s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
  }
  const int64_t c = (4 * i) % N;
  const float4 b = bias ? make_float4(bias[c], bias[c + 1], bias[c + 2], bias[c + 3])
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  y[i] = make_float4(s.x + b.x, s.y + b.y, s.z + b.z, s.w + b.w);
}

// ---- host side ------------------------------------------------------------------------------

constexpr int kMaxDevices = 64;

template <WeightType T>
using OpOf = std::conditional_t<T == WeightType::F16, __half, __nv_bfloat16>;

// Row tiles, smallest first; bit kTileBit<C> of a type's nibble in DeviceSetup::ready.
template <class C>
constexpr int kTileBit = C::BM == 16 ? 0 : C::BM == 32 ? 1 : C::BM == 64 ? 2 : 3;

struct DeviceSetup {
  int sms = 1;
  int smem_optin = 0;  // largest dynamic shared memory a block may opt in to
  uint32_t ready = 0;  // bit 4 * type + tile: the instantiation fits and is opted in
};

// Opts the instantiation in to its dynamic shared memory: its ready bit, 0 if it cannot run.
template <WeightType T, class C>
uint32_t opt_in(const DeviceSetup& d) {
  constexpr int smem = Layout<T, C>::kSmem;
  if (smem > d.smem_optin) return 0;
  if (smem > 48 * 1024 && cudaFuncSetAttribute(gemm_tc_kernel<T, OpOf<T>, C>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               smem) != cudaSuccess) {
    cudaGetLastError();  // ours: the next smaller tile runs instead; keep check_launch clean
    return 0;
  }
  return 1u << (4 * int(T) + kTileBit<C>);
}

template <WeightType T>
uint32_t opt_in_type(const DeviceSetup& d) {
  return opt_in<T, Tile16>(d) | opt_in<T, Tile32>(d) | opt_in<T, Tile64>(d) |
         opt_in<T, Tile128>(d);
}

// SM count, shared-memory limit and every instantiation's opt-in, once per device at its first
// GEMM. That call may be inside a capture (DecodeGraphs captures its buckets without running
// them eagerly first), so this thread's capture mode is relaxed around the attribute calls,
// which are host-side settings and not part of the graph.
DeviceSetup device_setup(int dev) {
  static std::mutex mutex;
  static DeviceSetup cache[kMaxDevices];
  static std::atomic<bool> done[kMaxDevices];
  const bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached && done[dev].load(std::memory_order_acquire)) return cache[dev];
  std::lock_guard<std::mutex> lock(mutex);
  if (cached && done[dev].load(std::memory_order_acquire)) return cache[dev];
  DeviceSetup d;
  MEDRT_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  MEDRT_CUDA_CHECK(
      cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  d.sms = std::max(d.sms, 1);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  MEDRT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  d.ready = opt_in_type<WeightType::F32>(d) | opt_in_type<WeightType::F16>(d) |
            opt_in_type<WeightType::BF16>(d) | opt_in_type<WeightType::Int8>(d) |
            opt_in_type<WeightType::Nf4>(d) | opt_in_type<WeightType::Int4>(d);
  MEDRT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  if (cached) {
    cache[dev] = d;
    done[dev].store(true, std::memory_order_release);
  }
  return d;
}

struct Plan {
  int64_t tiles_m = 1, tiles_n = 1;
  int splits = 1, steps_per_split = 1;
};

// Split-K from host-known values only. Cycles are SM cycles on an H200-like part; the model
// only has to rank split counts, not predict times.
constexpr double kFairBytesPerCycle = 18.0;  // one SM's share of HBM (4.8 TB/s, 132 SMs, 2 GHz)
constexpr double kSmBytesPerCycle = 32.0;    // what one SM can pull with its ring in flight
constexpr double kMmaPerCycle = 0.5;         // m16n8k16 per SM cycle with mma.sync
constexpr double kDequantPerElem = 0.025;    // decode16 + conversion, cycles per weight element
constexpr double kCtaCycles = 1500;          // pipeline fill and epilogue of one CTA
constexpr double kReduceCycles = 3000;       // the reduction kernel's launch and drain
constexpr int kMinStepsPerSplit = 4;
constexpr int kMaxSplits = 64;

template <WeightType T, class C>
Plan make_plan(int64_t M, int64_t N, int64_t K, int sms, const GemmScratch& scratch) {
  Plan p;
  p.tiles_m = (M + C::BM - 1) / C::BM;
  p.tiles_n = (N + kBN - 1) / kBN;
  const int64_t k_steps = K / kBK;
  if (k_steps <= 1) return p;
  const double tiles = double(p.tiles_m * p.tiles_n);
  const double step_bytes = kBN * kBK * weight_bits<T>() / 8.0 + C::BM * kBK * 4.0;
  const double step_mma = (C::BM / 16) * (kBN / 8) * (kBK / 16);
  const double step_cycles =
      std::max(step_bytes / kSmBytesPerCycle,
               step_mma / kMmaPerCycle + (kDirect<T> ? 0.0 : kBN * kBK * kDequantPerElem));
  const double plane = double(M) * double(N) * 4.0;
  const double hbm_once = double(N) * double(row_bytes(T, K)) + double(M) * double(K) * 4.0;
  const double gpu_bytes_per_cycle = sms * kFairBytesPerCycle;
  int64_t max_splits = std::min<int64_t>(kMaxSplits, k_steps / kMinStepsPerSplit);
  if (scratch.data == nullptr || M * N <= 0) max_splits = 1;
  else max_splits = std::min<int64_t>(max_splits, scratch.floats / (M * N));
  max_splits = std::max<int64_t>(max_splits, 1);

  double best = 0.0;
  for (int64_t s = 1; s <= max_splits; ++s) {
    const int64_t steps = (k_steps + s - 1) / s;
    if ((k_steps + steps - 1) / steps != s) continue;  // the same split as a smaller s
    const double ctas = tiles * double(s);
    const double per_sm = std::ceil(ctas / sms);
    const double cta = double(steps) * step_cycles + kCtaCycles +
                       (s > 1 ? C::BM * kBN * 4.0 / kSmBytesPerCycle : 0.0);
    const double hbm = hbm_once + (s > 1 ? double(s) * plane : 0.0);
    double time = std::max(per_sm * cta, hbm / gpu_bytes_per_cycle);
    if (s > 1) time += kReduceCycles + double(s + 1) * plane / gpu_bytes_per_cycle;
    if (s == 1 || time < best) {
      best = time;
      p.splits = int(s);
      p.steps_per_split = int(steps);
    }
  }
  return p;
}

template <WeightType T, class C>
void run_tile(const WeightView& w, const float* x, int64_t M, float* y,
              const GemmScratch& scratch, cudaStream_t stream, const DeviceSetup& dev) {
  const Plan p = make_plan<T, C>(M, w.out, w.in, dev.sms, scratch);
  const bool partial = p.splits > 1;
  const dim3 grid{unsigned(p.tiles_m * p.tiles_n), 1u, unsigned(p.splits)};
  gemm_tc_kernel<T, OpOf<T>, C><<<grid, kThreads, Layout<T, C>::kSmem, stream>>>(
      w, x, M, int(p.tiles_m), p.steps_per_split, partial ? scratch.data : y, partial);
  check_launch("gemm_tc_kernel");
  if (!partial) return;
  const int64_t mn = M * w.out;
  if (w.out % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0) {
    const int64_t n4 = mn / 4;
    sum_splits4_kernel<<<unsigned((n4 + 255) / 256), 256, 0, stream>>>(
        reinterpret_cast<const float4*>(scratch.data), p.splits, n4, w.out, w.bias,
        reinterpret_cast<float4*>(y));
  } else {
    sum_splits_kernel<<<unsigned((mn + 255) / 256), 256, 0, stream>>>(scratch.data, p.splits, mn,
                                                                      w.out, w.bias, y);
  }
  check_launch("sum_splits_kernel");
}

template <WeightType T>
void launch_typed(const WeightView& w, const float* x, int64_t M, float* y,
                  const GemmScratch& scratch, cudaStream_t stream) {
  // cp.async copies activations 16 bytes at a time.
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return gemm(w, x, M, y, stream);
  int dev = 0;
  MEDRT_CUDA_CHECK(cudaGetDevice(&dev));
  const DeviceSetup d = device_setup(dev);
  const uint32_t ready = d.ready >> (4 * int(T));
  // The smallest row tile that covers M (one row tile: weights cross HBM once); a tile whose
  // shared memory the device lacks gives way to the next smaller one (more row tiles).
  if (M > 64 && (ready & 8)) return run_tile<T, Tile128>(w, x, M, y, scratch, stream, d);
  if (M > 32 && (ready & 4)) return run_tile<T, Tile64>(w, x, M, y, scratch, stream, d);
  if (M > 16 && (ready & 2)) return run_tile<T, Tile32>(w, x, M, y, scratch, stream, d);
  if (ready & 1) return run_tile<T, Tile16>(w, x, M, y, scratch, stream, d);
  gemm(w, x, M, y, stream);
}

}  // namespace

bool gemm_vec_supports(const WeightView& w) {
  return w.in % kBK == 0 && row_bytes(w.type, w.in) % 16 == 0;
}

void gemm_vec(const WeightView& w, const float* x, int64_t M, float* y, const GemmScratch& s,
              cudaStream_t stream) {
  if (M <= 0 || w.out <= 0) return;
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
