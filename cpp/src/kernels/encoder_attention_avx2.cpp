// AVX2/FMA bidirectional attention of one head over one sequence's rows
// (encoder_kernels.h): 8-lane dot products reduced in hsum8's order, exp8 for the softmax,
// and the weighted sum of values as 8-lane FMAs.
#include <cmath>

#include "kernels/avx2_util.h"
#include "kernels/encoder_kernels.h"

namespace medrt::cpu::avx2 {

void encoder_attention_rows(const float* q, const float* k, const float* v, int64_t stride,
                            int64_t head_dim, int64_t q_begin, int64_t q_end, int64_t k_begin,
                            int64_t k_end, int64_t head, float scale, float* scores, float* out,
                            int64_t out_stride) {
  const int64_t col = head * head_dim;
  const int64_t nk = k_end - k_begin;
  const int64_t Df = head_dim / 8 * 8;
  const __m256i dmask = tail_mask(int(head_dim - Df));
  for (int64_t i = q_begin; i < q_end; ++i) {
    const float* qi = q + i * stride + col;
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) {
      const float* kj = k + (k_begin + j) * stride + col;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t d = 0; d < Df; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), _mm256_loadu_ps(kj + d), acc);
      if (Df < head_dim)
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(qi + Df, dmask),
                              _mm256_maskload_ps(kj + Df, dmask), acc);
      scores[j] = reduce1(acc) * scale;
      mx = std::fmax(mx, scores[j]);
    }
    const __m256 vmax = _mm256_set1_ps(mx);
    int64_t j = 0;
    __m256 vsum = _mm256_setzero_ps();
    for (; j + 8 <= nk; j += 8) {
      const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vmax));
      _mm256_storeu_ps(scores + j, p);
      vsum = _mm256_add_ps(vsum, p);
    }
    if (j < nk) {
      const __m256i m = tail_mask(int(nk - j));
      const __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_maskload_ps(scores + j, m), vmax)),
                                     _mm256_castsi256_ps(m));
      _mm256_maskstore_ps(scores + j, m, p);
      vsum = _mm256_add_ps(vsum, p);
    }
    const float inv = 1.0f / reduce1(vsum);
    float* oi = out + i * out_stride + col;
    for (int64_t d = 0; d < Df; d += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t jj = 0; jj < nk; ++jj)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[jj]),
                              _mm256_loadu_ps(v + (k_begin + jj) * stride + col + d), acc);
      _mm256_storeu_ps(oi + d, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
    }
    if (Df < head_dim) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t jj = 0; jj < nk; ++jj)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[jj]),
                              _mm256_maskload_ps(v + (k_begin + jj) * stride + col + Df, dmask),
                              acc);
      _mm256_maskstore_ps(oi + Df, dmask, _mm256_mul_ps(acc, _mm256_set1_ps(inv)));
    }
  }
}

}  // namespace medrt::cpu::avx2
