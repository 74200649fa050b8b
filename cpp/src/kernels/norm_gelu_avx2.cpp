// AVX2/FMA LayerNorm and GELU (erf) for the encoder (encoder_kernels.h).
#include <cmath>

#include "kernels/avx2_util.h"
#include "kernels/encoder_kernels.h"

namespace medrt::cpu::avx2 {
namespace {

// erf(x) by Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7 over the reals): for a = |x|,
// erf(a) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-a^2), t = 1 / (1 + p a); the sign
// of x is put back at the end. GELU multiplies it by x / 2, so its absolute error stays below
// 1e-7 |x|, far under what the f32 matmuls around it contribute.
inline __m256 erf8(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a,
                                                 _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
  const __m256 r = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
  return _mm256_or_ps(r, sign);
}

inline __m256 gelu8(__m256 x) {
  const __m256 e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f)));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

}  // namespace

void layernorm(const float* x, int64_t T, int64_t D, const float* w, const float* b, float eps,
               float* y) {
  const int64_t Df = D / 8 * 8;
  const __m256i tmask = tail_mask(int(D - Df));
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float* yr = y + t * D;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < Df; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xr + i));
    if (Df < D) acc = _mm256_add_ps(acc, _mm256_maskload_ps(xr + Df, tmask));
    const __m256 mean = _mm256_set1_ps(reduce1(acc) / float(D));
    __m256 sq = _mm256_setzero_ps();
    for (int64_t i = 0; i < Df; i += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xr + i), mean);
      sq = _mm256_fmadd_ps(d, d, sq);
    }
    if (Df < D) {
      // Masked-off lanes load 0 and would add mean^2: mask the deviation too.
      const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + Df, tmask), mean),
                                     _mm256_castsi256_ps(tmask));
      sq = _mm256_fmadd_ps(d, d, sq);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(reduce1(sq) / float(D) + eps));
    for (int64_t i = 0; i < Df; i += 8) {
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mean), inv);
      _mm256_storeu_ps(yr + i,
                       _mm256_fmadd_ps(n, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    if (Df < D) {
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + Df, tmask), mean), inv);
      _mm256_maskstore_ps(yr + Df, tmask,
                          _mm256_fmadd_ps(n, _mm256_maskload_ps(w + Df, tmask),
                                          _mm256_maskload_ps(b + Df, tmask)));
    }
  }
}

void gelu_erf(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = tail_mask(int(n - i));
    _mm256_maskstore_ps(x + i, m, gelu8(_mm256_maskload_ps(x + i, m)));
  }
}

}  // namespace medrt::cpu::avx2
