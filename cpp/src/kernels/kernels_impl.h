// Per-instruction-set implementations behind the public ops of medrt/kernels.h. dispatch.cpp
// validates arguments once and forwards to portable::, avx2:: or avx512:: (kernels never
// re-check).
#pragma once
#include <cstdint>

#include "medrt/kernels.h"

namespace medrt::cpu {

// Fixed-order reduction shared by every dot product in every instruction set: lane l of an
// 8-lane accumulator holds the terms k = l (mod 8) summed in increasing k (AVX-512 first folds
// its 16 lanes to 8, lane l + lane l+8); the lanes are then combined as
// ((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7)), the order AVX2's hadd tree produces.
inline float hsum8(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// A linear layer's dot products over K are summed in k-blocks of this length (a multiple of 8;
// the last block takes the rest): each block is one 8-lane accumulation reduced by hsum8, and
// the block sums are added in block order, then the bias. Blocking bounds the working set of
// the large-M kernel; the length depends on K alone, so every path sums in the same order.
// (AVX-512 uses the same rule rounded to multiples of 16: gemm_avx512.cpp dot_block16.)
// The AVX2 attention kernel keeps its work buffers in its frame, sized for a query-head group
// of up to kMaxGroupFloats floats (heads per KV head x head_dim rounded up to 8: 8 heads of
// 256 fit) and blocks of up to kMaxAttentionBlock tokens; other shapes use the portable kernel.
constexpr int64_t kMaxGroupFloats = 2048;
constexpr int64_t kMaxGroupHeads = 64;
constexpr int64_t kMaxAttentionBlock = 128;
constexpr bool avx2_attention_fits(int64_t group, int64_t head_dim, int64_t block_size) {
  return group <= kMaxGroupHeads && group * ((head_dim + 7) / 8 * 8) <= kMaxGroupFloats &&
         block_size <= kMaxAttentionBlock;
}

inline int64_t dot_block(int64_t K) {
  constexpr int64_t kMaxBlock = 768;
  const int64_t n = (K + kMaxBlock - 1) / kMaxBlock;
  return ((K + n - 1) / n + 7) / 8 * 8;
}

#define MEDRT_KERNEL_DECLS                                                                    \
  void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const float* bias,  \
              float* y, ThreadPool& pool);                                                    \
  void to_f32(const void* src, DType dtype, int64_t n, float* dst);                          \
  /* IEEE half, rounded to nearest even (every ISA gives the bits of medrt::f32_to_f16) */      \
  void to_f16(const float* src, int64_t n, uint16_t* dst);                                   \
  void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y);   \
  void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions, \
            const float* inv_freq);                                                          \
  void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, int64_t stride,    \
                float* out);                                                                 \
  void add_inplace(float* x, const float* y, int64_t n);                                     \
  /* paged_attention's work items [w0, w1) (w = token row * n_kv_heads + kv head), serially */ \
  void attention_items(const float* q, int64_t n_heads, const PagedKV& cache,                \
                       const AttentionBatch& batch, float scale, float* out, int64_t w0,     \
                       int64_t w1);

namespace portable {
MEDRT_KERNEL_DECLS
}
#if MEDRT_PORTABLE_ONLY
// Not an x86 build: no ISA files. The dispatch's avx2:: and avx512:: calls name the portable
// kernels (cpu_features never selects those ISAs here, so they are never taken).
namespace avx2 = portable;
namespace avx512 = portable;
#else
// y = x @ W^T (+ bias) for W [N, K] f16 or bf16 (dt) in the row-group layout of
// half_layout.h: kHalfRowsAvx2 rows per group for avx2::, kHalfRowsAvx512 for avx512::.
#define MEDRT_HALF_PACKED_DECL                                                               \
  void linear_half_packed(const float* x, int64_t M, int64_t K, const uint16_t* W, DType dt, \
                          int64_t N, const float* bias, float* y, ThreadPool& pool);

namespace avx2 {
MEDRT_KERNEL_DECLS
MEDRT_HALF_PACKED_DECL
}

namespace avx512 {
void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const float* bias,
            float* y, ThreadPool& pool);
MEDRT_HALF_PACKED_DECL
}
#undef MEDRT_HALF_PACKED_DECL
#endif

#undef MEDRT_KERNEL_DECLS

}  // namespace medrt::cpu
