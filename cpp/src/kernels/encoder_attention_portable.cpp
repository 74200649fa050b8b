// Portable bidirectional attention of one head over one sequence's rows (encoder_kernels.h).
// Sequences are short (BERT: at most 512 rows), so the whole score row of a query fits in
// `scores` and softmax is computed exactly, max first, without an online rescale.
#include <cmath>

#include "kernels/encoder_kernels.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::portable {

void encoder_attention_rows(const float* q, const float* k, const float* v, int64_t stride,
                            int64_t head_dim, int64_t q_begin, int64_t q_end, int64_t k_begin,
                            int64_t k_end, int64_t head, float scale, float* scores, float* out,
                            int64_t out_stride) {
  const int64_t col = head * head_dim;
  const int64_t nk = k_end - k_begin;
  for (int64_t i = q_begin; i < q_end; ++i) {
    const float* qi = q + i * stride + col;
    float mx = -INFINITY;
    for (int64_t j = 0; j < nk; ++j) {
      const float* kj = k + (k_begin + j) * stride + col;
      // 8 lanes summed by hsum8: the order the AVX2 path uses.
      float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t d = 0; d < head_dim; ++d) lanes[d % 8] += qi[d] * kj[d];
      scores[j] = hsum8(lanes) * scale;
      mx = std::fmax(mx, scores[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < nk; ++j) {
      scores[j] = std::exp(scores[j] - mx);
      sum += scores[j];
    }
    const float inv = 1.0f / sum;
    float* oi = out + i * out_stride + col;
    for (int64_t d = 0; d < head_dim; ++d) oi[d] = 0.0f;
    for (int64_t j = 0; j < nk; ++j) {
      const float p = scores[j] * inv;
      const float* vj = v + (k_begin + j) * stride + col;
      for (int64_t d = 0; d < head_dim; ++d) oi[d] += p * vj[d];
    }
  }
}

}  // namespace medrt::cpu::portable
