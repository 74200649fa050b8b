// AVX2/FMA/F16C helpers shared by the *_avx2.cpp kernels (only those files are compiled with
// -mavx2, so only they may include this header).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "medrt/dtype.h"

namespace medrt::cpu::avx2 {

// Lanes [0, n) set: the mask for a tail of n < 8 floats.
inline __m256i tail_mask(int n) {
  alignas(32) static const int32_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ramp + 8 - n));
}

// 8 consecutive weights as f32 (exact for every dtype); p need not be aligned.
template <DType D>
inline __m256 load8(const void* p) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(p));
  } else if constexpr (D == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

// The first n < 8 weights at p, zeros in the other lanes; never reads past p[n-1].
template <DType D>
inline __m256 load_tail(const void* p, int n) {
  if constexpr (D == DType::F32) {
    return _mm256_maskload_ps(static_cast<const float*>(p), tail_mask(n));
  } else {
    uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tmp, p, size_t(n) * 2);
    return load8<D>(tmp);
  }
}

// Reduces four 8-lane accumulators to their four sums, each in the order of hsum8
// (kernels_impl.h): ((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7)).
inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

inline float reduce1(__m256 a) {
  const __m256 z = _mm256_setzero_ps();
  return _mm_cvtss_f32(reduce4(a, z, z, z));
}

// e^x to about 2 ulp (Cephes polynomial after a Cody-Waite split of x * log2(e)). Inputs are
// clamped to [-87.3, 88.3], so e^-inf is 2^-126 rather than 0: negligible wherever it is
// used (softmax weights, SiLU).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  const __m256i e = _mm256_slli_epi32(biased, 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

}  // namespace medrt::cpu::avx2
