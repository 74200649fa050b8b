// Linear layers on the GPU, every weight type of linear.h.
//
// Decode (M <= kGemvMaxRows): weight-only GEMV that streams the weights at HBM speed. The budget
// (H200: 132 SMs at 1.98 GHz, 4.8 TB/s) is 18.4 weight bytes per SM per clock against 128
// thread-instructions (4 warp issues) per SM per clock: about 7 instructions per weight byte,
// 3.5 per int4 weight, 14 per bf16 weight. The design keeps both the bytes in flight and the
// instructions per weight within that:
//  - A warp owns R rows (8 at M <= 2, 4 above) and a K-slice of them: lane l of warp k of the
//    row group reads 16-byte pieces k*32 + l, + 32*split, ... of each row (512 contiguous bytes
//    per row and warp load). The activations of a piece (float4 from L1) are loaded once and
//    used for all R rows, so their loads and preparation cost 1/R per weight.
//  - Pieces travel HBM -> shared memory by cp.async, two stages per thread: the next piece of
//    the R rows is in flight while the current one is computed, without holding registers.
//    4 KiB per warp at R = 8, 64 KiB or more per SM at 16+ warps, against the ~25 KiB per SM
//    that 4.8 TB/s needs at ~700 ns latency.
//  - split (warps per row group) comes from the weight's shape alone (gemv_split): enough
//    warps for the small projections (q/k/v, o, down), at least 1.5 pieces per lane.
//  - Decoding costs about one integer op per weight. int4: the masked bits `w & (0xF << p)`
//    read as f32 are the denormal c * 2^(p - 149) (any bit pattern below 2^24 is that integer
//    times 2^-149), and x is scaled by 2^(49 - p) (exact), so one FMA adds c * x * 2^-100,
//    rounded as c * x would be. Group scale and zero (or min) are applied per 32-input piece:
//    s * sum c*x - s*z * sum x (or + min * sum x), sum x shared by the R rows. int8: the byte
//    permuted into 2^23's mantissa, an exact subtraction. bf16: a shift or a mask. nf4: the
//    code book in shared memory, one conflict-free LDS per weight (the shared-memory rate
//    caps nf4 near 70% of the roofline). Counted in the SASS (sm_90) main loop, instructions
//    per weight at M = 1: int4 3.0, nf4 4.5, int8 4.2, bf16 2.9 (f32 accumulation: each
//    further activation row adds an FMA per weight, so int4 is ALU-bound from M = 2 on).
//  - Determinism: explicit fmaf/__fadd_rn (no contraction left to the compiler); a row's order
//    is pieces in lane order, the inputs of a piece in order, the group scale per piece, a fixed
//    xor-shuffle tree, then the split warps in order. None of it depends on M, R or the other
//    rows, so a row's result is the same for any batch of up to 8; gemv_shared runs the same
//    kernel over up to 3 weights at once (blockIdx over their concatenated row groups), each
//    row bit-identical to its own launch.
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

// ---- decode GEMV ---------------------------------------------------------------------------

constexpr int kGemvThreads = 128;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int64_t kGemvTargetWarps = 2048;  // ~16 per SM on 132 SMs
constexpr int64_t kGemvSplitRows = 8;       // rows per group gemv_split assumes, whatever M
static_assert(kGemvMaxWeights == 3, "gemv_kernel picks among 3 weights");

// Rows per warp: each activation load serves R rows; at larger M the R x M accumulators and
// the M activation quads need the registers.
template <int MT>
constexpr int kGemvRows = MT <= 2 ? 8 : 4;
// CTAs per SM the register allocation must allow (ptxas -v, sm_90): at M = 1, 128 registers,
// 16 warps per SM (bf16: 72 registers, 6 CTAs by shared memory); above, up to 168 or 255 with
// the M accumulators (int4 and nf4 at M = 8 spill a few registers, ~1% of their loop).
template <int MT>
constexpr int kGemvMinBlocks = MT == 1 ? 4 : MT == 8 ? 2 : 3;

// Quads (4 inputs, one float4 of x) per 16-byte piece.
template <WeightType T>
constexpr int kQuads = Elems16<T>::value / 4;

// Types whose piece is summed on its own, then scaled by its group's parameters.
template <WeightType T>
constexpr bool kChunked = T == WeightType::Int8 || T == WeightType::Nf4 || T == WeightType::Int4;

// Weight pieces travel HBM -> shared memory by cp.async (L2 only: they are read once), so the
// loads in flight hold no registers. Each thread reads back only what it copied itself, so
// cp.async.wait_group is the only synchronisation.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// fma.rn.f32 without .ftz: the int4 codes are denormal operands, which fmaf would flush to
// zero in a build with -ftz=true (--use_fast_math).
__device__ __forceinline__ float fma_denormal(float a, float b, float c) {
  float d;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(d) : "f"(a), "f"(b), "f"(c));
  return d;
}

__device__ __forceinline__ float pow2f(int e) { return __int_as_float((127 + e) << 23); }

// The pointer as an opaque value: the compiler then addresses a row's piece as one
// base + 32-bit offset multiply-add instead of re-deriving 64-bit sums from the weight's base.
template <typename P>
__device__ __forceinline__ const P* opaque(const P* p) {
  asm("mov.b64 %0, %0;" : "+l"(p));
  return p;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// The f16 in the low 16 bits, as f32 (exact; no type punning through pointers).
__device__ __forceinline__ float half_bits(uint32_t u) {
  return __half2float(__ushort_as_half(uint16_t(u)));
}

// NF4 code book in shared memory (constant memory would serialise lanes reading different
// entries); filled by gemv_kernel<Nf4>. At file scope so a lookup is one LDS [offset + imm].
__shared__ float gemv_nf4[16];

// The multiplicands for inputs 4q .. 4q+3 of a piece of one row: the weight itself (float
// types), the exact integer code (int8), the code book entry (nf4), or the int4 code c as the
// denormal c * 2^(p - 149), p its bit position (0..20) in the word or in the word >> 8.
// 4-bit pieces: byte j holds input j (low nibble) and input j + 16 (high nibble).
template <WeightType T>
__device__ __forceinline__ void quad_weights(const uint4& raw, int q, float (&wv)[4]) {
  if constexpr (T == WeightType::F32) {
    wv[0] = __uint_as_float(raw.x), wv[1] = __uint_as_float(raw.y);
    wv[2] = __uint_as_float(raw.z), wv[3] = __uint_as_float(raw.w);
  } else if constexpr (T == WeightType::BF16) {
    const uint32_t a = word_of(raw, 2 * q), b = word_of(raw, 2 * q + 1);
    wv[0] = __uint_as_float(a << 16), wv[1] = __uint_as_float(a & 0xFFFF0000u);
    wv[2] = __uint_as_float(b << 16), wv[3] = __uint_as_float(b & 0xFFFF0000u);
  } else if constexpr (T == WeightType::F16) {
    const uint32_t a = word_of(raw, 2 * q), b = word_of(raw, 2 * q + 1);
    wv[0] = half_bits(a), wv[1] = half_bits(a >> 16);
    wv[2] = half_bits(b), wv[3] = half_bits(b >> 16);
  } else if constexpr (T == WeightType::Int8) {
    // u = code + 128 in [0, 255] as the low byte of 2^23 (one byte permute), then the exact
    // subtraction of 2^23 + 128.
    const uint32_t u = word_of(raw, q) ^ 0x80808080u;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      wv[k] = __fadd_rn(__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440u | k)), -8388736.0f);
  } else if constexpr (T == WeightType::Nf4) {
    // Byte offsets (code * 4) into the code book: shift and mask.
    const uint32_t d = word_of(raw, q & 3);
    const char* book = reinterpret_cast<const char*>(gemv_nf4);
    const uint32_t o0 = q < 4 ? (d << 2) & 0x3Cu : (d >> 2) & 0x3Cu;    // bits 0 | 4
    const uint32_t o1 = q < 4 ? (d >> 6) & 0x3Cu : (d >> 10) & 0x3Cu;   // bits 8 | 12
    const uint32_t o2 = q < 4 ? (d >> 14) & 0x3Cu : (d >> 18) & 0x3Cu;  // bits 16 | 20
    const uint32_t o3 = q < 4 ? (d >> 22) & 0x3Cu : (d >> 26) & 0x3Cu;  // bits 24 | 28
    wv[0] = *reinterpret_cast<const float*>(book + o0);
    wv[1] = *reinterpret_cast<const float*>(book + o1);
    wv[2] = *reinterpret_cast<const float*>(book + o2);
    wv[3] = *reinterpret_cast<const float*>(book + o3);
  } else {
    static_assert(T == WeightType::Int4);
    const uint32_t d = word_of(raw, q & 3), d8 = d >> 8;
    // p = 0, 8, 16, 16 (low nibbles) | 4, 12, 20, 20 (high nibbles): int4_x_scale's order.
    wv[0] = __uint_as_float(q < 4 ? d & 0xFu : d & 0xF0u);
    wv[1] = __uint_as_float(q < 4 ? d & 0xF00u : d & 0xF000u);
    wv[2] = __uint_as_float(q < 4 ? d & 0xF0000u : d & 0xF00000u);
    wv[3] = __uint_as_float(q < 4 ? d8 & 0xF0000u : d8 & 0xF00000u);
  }
}

// 2^(49 - p) for the bit positions of quad_weights<Int4>: code (c * 2^(p-149)) times x scaled
// by this is c * x * 2^-100, exact up to the FMA's one rounding (for |x| < 2^79; products
// below 2^-126 lose bits, at most 2^-49 absolute once scaled back).
__device__ __forceinline__ float int4_x_scale(int q, int e) {
  constexpr int low[4] = {49, 41, 33, 33}, high[4] = {45, 37, 29, 29};
  return pow2f(q < 4 ? low[e] : high[e]);
}

// Weights of up to kGemvMaxWeights sharing one input, one launch: weight i owns CTAs
// [cta_end[i-1], cta_end[i]) and writes y[i]. Group index of piece v:
// umulhi(2v, gmul) >> gshift (gemv_group_divisor).
struct GemvArgs {
  WeightView w[kGemvMaxWeights];
  float* y[kGemvMaxWeights];
  int split[kGemvMaxWeights];
  int cta_end[kGemvMaxWeights];
  uint32_t gmul[kGemvMaxWeights];
  int gshift[kGemvMaxWeights];
};

template <int R>
using GemvStage = uint4[R][kGemvThreads];  // one piece of each of R rows, per thread

// One warp's share of a row group. Piece indices are 32-bit: rows up to 8 GiB.
template <WeightType T, int MT>
struct GemvWarp {
  static constexpr int R = kGemvRows<MT>, Q = kQuads<T>, E = Elems16<T>::value;
  const WeightView& w;
  const float* x;
  int M;
  uint32_t nvec;      // pieces per row
  uint32_t gpr;       // groups per row
  uint32_t gmul;      // piece -> group: umulhi(2v, gmul) >> gshift
  int gshift;
  int last;           // rows past the weight's end read its last row: r0 + min(r, last)
  const uint4* row0;  // row r0
  const void* prm0;   // its first group parameter

  // Starts the copy of piece v of the R rows into st.
  __device__ __forceinline__ void issue(GemvStage<R>& st, uint32_t v) const {
#pragma unroll
    for (int r = 0; r < R; ++r)
      cp_async16(&st[r][threadIdx.x], row0 + (uint32_t(min(r, last)) * nvec + v));
  }

  // The group parameters of piece v of the R rows (int4: half2 scale and zero/min; nf4 and
  // grouped int8: the f16 scale in the low half).
  __device__ __forceinline__ void params(uint32_t v, uint32_t (&prm)[R]) const {
    if constexpr (kChunked<T>) {
      if (T != WeightType::Int8 || w.group_size > 0) {
        const uint32_t g = __umulhi(v << 1, gmul) >> gshift;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint32_t i = uint32_t(min(r, last)) * gpr + g;
          if constexpr (T == WeightType::Int4)
            prm[r] = __ldg(static_cast<const unsigned*>(prm0) + i);
          else
            prm[r] = __ldg(static_cast<const unsigned short*>(prm0) + i);
        }
      }
    }
  }

  // acc[r][m] += the contribution of piece v (inputs v*E .. v*E + E - 1), copied into st.
  // int4 accumulates at scale 2^-100 (quad_weights); the caller scales the sums back.
  __device__ __forceinline__ void compute(const GemvStage<R>& st, const uint32_t (&prm)[R],
                                          uint32_t v, float (&acc)[R][MT]) const {
    uint4 raw[R];
#pragma unroll
    for (int r = 0; r < R; ++r) raw[r] = st[r][threadIdx.x];
    float part[R][MT];  // chunked types: the piece's sum before its group scale
    float xsum[MT];     // int4: sum of the piece's inputs
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      xsum[m] = 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) part[r][m] = 0.0f;
    }
    const float4* xp = reinterpret_cast<const float4*>(x + uint64_t(v) * E);
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      float xv[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m == 0 || m < M) {
          const float4 f = __ldg(xp + m * (w.in / 4) + q);
          xv[m][0] = f.x, xv[m][1] = f.y, xv[m][2] = f.z, xv[m][3] = f.w;
          if constexpr (T == WeightType::Int4) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              xsum[m] = __fadd_rn(xsum[m], xv[m][e]);
              xv[m][e] = __fmul_rn(xv[m][e], int4_x_scale(q, e));
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wv[4];
        quad_weights<T>(raw[r], q, wv);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m == 0 || m < M) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if constexpr (T == WeightType::Int4)
                part[r][m] = fma_denormal(wv[e], xv[m][e], part[r][m]);
              else if constexpr (kChunked<T>)
                part[r][m] = fmaf(wv[e], xv[m][e], part[r][m]);
              else
                acc[r][m] = fmaf(wv[e], xv[m][e], acc[r][m]);
            }
          }
        }
      }
    }
    if constexpr (T == WeightType::Int4) {
      // part = sum c*x * 2^-100; with sum x * 2^-100 the group terms keep that scale:
      // s * part + k * xsum, k = min, or -s * z for a zero point.
#pragma unroll
      for (int m = 0; m < MT; ++m) xsum[m] = __fmul_rn(xsum[m], pow2f(-100));
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float s = half_bits(prm[r]), zm = half_bits(prm[r] >> 16);
        const float k = w.has_mins ? zm : -__fmul_rn(s, zm);
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m == 0 || m < M) acc[r][m] = fmaf(k, xsum[m], fmaf(s, part[r][m], acc[r][m]));
      }
    } else if constexpr (kChunked<T>) {
      // nf4 and grouped int8: the group scale; int8 with a row scale: 1 (scaled at the end).
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float s = T == WeightType::Nf4 || w.group_size > 0 ? half_bits(prm[r]) : 1.0f;
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m == 0 || m < M) acc[r][m] = fmaf(s, part[r][m], acc[r][m]);
      }
    }
  }
};

template <WeightType T, int MT>
__global__ void __launch_bounds__(kGemvThreads, kGemvMinBlocks<MT>)
    gemv_kernel(GemvArgs a, const float* __restrict__ x, int M) {
  constexpr int R = kGemvRows<MT>;
  __shared__ GemvStage<R> stage[2];  // this piece and the next one in flight: 32 KiB at R = 8
  __shared__ float red[kGemvWarps][R * MT];
  if constexpr (T == WeightType::Nf4) {
    if (threadIdx.x < 16) gemv_nf4[threadIdx.x] = kNf4Table[threadIdx.x];
    __syncthreads();
  }
  // The weight this CTA works on (constant indices: the arguments stay in the parameter bank).
  const int b = int(blockIdx.x);
  const int s = int(b >= a.cta_end[0]) + int(b >= a.cta_end[1]);
  const WeightView w = s == 0 ? a.w[0] : s == 1 ? a.w[1] : a.w[2];
  float* const y = s == 0 ? a.y[0] : s == 1 ? a.y[1] : a.y[2];
  const int split = s == 0 ? a.split[0] : s == 1 ? a.split[1] : a.split[2];
  const int first = s == 0 ? 0 : s == 1 ? a.cta_end[0] : a.cta_end[1];

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int grp = warp / split, kw = warp % split;
  const int64_t r0 = (int64_t(b - first) * (kGemvWarps / split) + grp) * R;
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;

  if (r0 < w.out) {
    const uint32_t nvec = uint32_t(row_bytes(T, w.in) / 16), gpr = uint32_t(w.groups_per_row());
    const void* prm0 = T == WeightType::Int4 ? static_cast<const void*>(w.params + r0 * gpr)
                                             : static_cast<const void*>(w.scales + r0 * gpr);
    const GemvWarp<T, MT> g{w,
                            x,
                            M,
                            nvec,
                            gpr,
                            s == 0 ? a.gmul[0] : s == 1 ? a.gmul[1] : a.gmul[2],
                            s == 0 ? a.gshift[0] : s == 1 ? a.gshift[1] : a.gshift[2],
                            int(w.out - 1 - r0 < R ? w.out - 1 - r0 : R),
                            opaque(static_cast<const uint4*>(w.data) + r0 * nvec),
                            opaque(prm0)};
    // Two stages: piece v + step is in flight while piece v is computed. The group parameters
    // of v + step load once v's are used, a whole piece's compute ahead of their use.
    const uint32_t step = 32u * uint32_t(split);
    uint32_t v = uint32_t(kw) * 32u + uint32_t(lane);
    uint32_t prm[R] = {};
    int cur = 0;
    if (v < nvec) {
      g.issue(stage[0], v);
      g.params(v, prm);
    }
    cp_async_commit();
    while (v < nvec) {
      const bool more = v + step < nvec;
      if (more) g.issue(stage[cur ^ 1], v + step);
      cp_async_commit();
      cp_async_wait<1>();  // all but the newest group: piece v has landed
      g.compute(stage[cur], prm, v, acc);
      if (more) g.params(v + step, prm);
      cur ^= 1;
      v += step;
    }
    cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m == 0 || m < M) {
          float t = acc[r][m];
#pragma unroll
          for (int off = 16; off > 0; off /= 2)
            t = __fadd_rn(t, __shfl_xor_sync(0xffffffffu, t, off));
          if (lane == 0) red[warp][r * MT + m] = t;
        }
      }
  }
  __syncthreads();
  // The first warp of each row group adds the split warps' sums in order and stores.
  if (kw != 0 || r0 >= w.out) return;
  for (int i = lane; i < R * MT; i += 32) {
    const int r = i / MT, m = i % MT;
    const int64_t row = r0 + r;
    if (m >= M || row >= w.out) continue;
    float t = red[warp][i];
    for (int k = 1; k < split; ++k) t = __fadd_rn(t, red[warp + k][i]);
    const float bias = w.bias ? w.bias[row] : 0.0f;
    float out;
    if constexpr (T == WeightType::Int4)
      out = fmaf(t, pow2f(100), bias);  // exact rescale, one rounding with the bias
    else if constexpr (T == WeightType::Int8)
      out = w.group_size == 0 ? fmaf(t, w.row_scales[row], bias) : __fadd_rn(t, bias);
    else
      out = __fadd_rn(t, bias);
    y[int64_t(m) * w.out + row] = out;
  }
}

// v / d == (v * mul) >> (31 + l) == umulhi(2v, mul) >> l for every v < 2^31 (Granlund and
// Montgomery 1994, theorem 4.2, N = 31, l = ceil(log2 d): mul = ceil(2^(31+l) / d) < 2^32).
void gemv_group_divisor(uint32_t d, uint32_t& mul, int& l) {
  l = 0;
  while ((uint64_t(1) << l) < d) ++l;
  mul = uint32_t(((uint64_t(1) << (31 + l)) + d - 1) / d);
}

template <WeightType T, int MT>
void gemv_launch(GemvArgs a, int n, const float* x, int M, cudaStream_t stream) {
  int64_t end = 0;
  for (int i = 0; i < kGemvMaxWeights; ++i) {
    if (i < n) {
      const int64_t rows_per_cta = int64_t(kGemvRows<MT>) * (kGemvWarps / a.split[i]);
      end += (a.w[i].out + rows_per_cta - 1) / rows_per_cta;
      const int g = a.w[i].group_size;
      gemv_group_divisor(g > 0 ? uint32_t(g / Elems16<T>::value) : 1u, a.gmul[i], a.gshift[i]);
    }
    a.cta_end[i] = int(end);
  }
  gemv_kernel<T, MT><<<unsigned(end), kGemvThreads, 0, stream>>>(a, x, M);
  check_launch("gemv_kernel");
}

template <WeightType T>
void gemv_typed(const GemvArgs& a, int n, const float* x, int M, cudaStream_t stream) {
  if (M == 1)
    gemv_launch<T, 1>(a, n, x, M, stream);
  else if (M == 2)
    gemv_launch<T, 2>(a, n, x, M, stream);
  else if (M <= 4)
    gemv_launch<T, 4>(a, n, x, M, stream);
  else
    gemv_launch<T, 8>(a, n, x, M, stream);
}

// Warps per row group: from the weight's shape only (never M), so a row's summation order is
// fixed. Doubles while the weight has fewer than kGemvTargetWarps warps (counting 8-row groups)
// and each lane keeps at least 1.5 pieces.
int gemv_split(const WeightView& w) {
  const int64_t pieces = row_bytes(w.type, w.in) / 16;
  const int64_t groups = (w.out + kGemvSplitRows - 1) / kGemvSplitRows;
  int split = 1;
  while (split < kGemvWarps && groups * split < kGemvTargetWarps && pieces >= 96 * split)
    split *= 2;
  return split;
}

// ys[i] = x @ ws[i]^T + bias for weights of one type and input width (checked by callers).
void gemv_run(const WeightView* ws, float* const* ys, int n, const float* x, int64_t M,
              cudaStream_t stream) {
  for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxRows) {
    const int mc = int(M - m0 < kGemvMaxRows ? M - m0 : kGemvMaxRows);
    GemvArgs a{};
    for (int i = 0; i < n; ++i) {
      a.w[i] = ws[i];
      a.y[i] = ys[i] + m0 * ws[i].out;
      a.split[i] = gemv_split(ws[i]);
    }
    const float* xc = x + m0 * ws[0].in;
    switch (ws[0].type) {
      case WeightType::F32: gemv_typed<WeightType::F32>(a, n, xc, mc, stream); break;
      case WeightType::F16: gemv_typed<WeightType::F16>(a, n, xc, mc, stream); break;
      case WeightType::BF16: gemv_typed<WeightType::BF16>(a, n, xc, mc, stream); break;
      case WeightType::Int8: gemv_typed<WeightType::Int8>(a, n, xc, mc, stream); break;
      case WeightType::Nf4: gemv_typed<WeightType::Nf4>(a, n, xc, mc, stream); break;
      case WeightType::Int4: gemv_typed<WeightType::Int4>(a, n, xc, mc, stream); break;
      case WeightType::Int6: return;  // CudaBackend::prepare_linear refuses int6
    }
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
  gemv_run(&w, &y, 1, x, M, stream);
}

bool gemv_shared(const WeightView* ws, float* const* ys, int n, const float* x, int64_t M,
                 cudaStream_t stream) {
  if (n < 1 || n > kGemvMaxWeights || M < 1 || M > kGemvMaxRows) return false;
  for (int i = 0; i < n; ++i)
    if (!gemv_supports(ws[i]) || ws[i].type != ws[0].type || ws[i].in != ws[0].in) return false;
  gemv_run(ws, ys, n, x, M, stream);
  return true;
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
