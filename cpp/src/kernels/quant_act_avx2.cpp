// AVX2 activation quantization (quant_layout.h, ActFormat::Q8Block32): the steps of
// quant_act.cpp on 8 lanes, giving the same codes and block values bit for bit (max is exact
// in any order, the clamp and the round-half-even conversion are per element, the code sum is
// an exact integer, and d, 127 / amax and d * sum are the same scalar operations).
//
// Compiled with AVX2 flags: internal linkage only and no standard-library code (see
// gemm_avx512.cpp).
#include <immintrin.h>

#include "kernels/quant_layout.h"

namespace medrt::cpu::quant::avx2 {

void quantize_row(const float* x, int64_t K, int64_t nb, int8_t* codes, ActBlock* blocks) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t n = K - b * kBlock < kBlock ? K - b * kBlock : kBlock;
    // A whole block is read in place; only a ragged last one goes through a zero-padded copy.
    const float* src = x + b * kBlock;
    alignas(32) float xb[kBlock];
    if (n < kBlock) {
      for (int64_t i = 0; i < kBlock; ++i) xb[i] = i < n ? src[i] : 0.0f;
      src = xb;
    }
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(src + 8 * j);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[j]), m);  // a NaN lane keeps m
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      // max(v, -127) turns NaN into -127, as the scalar clamp does.
      const __m256 c = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[j], idv), lo), hi);
      q[j] = _mm256_cvtps_epi32(c);  // round half to even (default MXCSR)
    }
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    const int32_t sum = _mm_cvtsi128_si32(s4);
    // packs interleave 128-bit lanes: 0-3 8-11 4-7 12-15 | 16-19 24-27 20-23 28-31; fix order.
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + b * kBlock), ordered);
    blocks[b] = {d, float(sum), d * float(sum), sum};
  }
}

}  // namespace medrt::cpu::quant::avx2
