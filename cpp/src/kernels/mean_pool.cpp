// Mean pooling + L2 normalisation (encoder_kernels.h): the sentence embedding of a row is the
// mean of its last hidden states, divided by their norm. The loop order (tokens in order, the
// square sum in double) is the one the encoder's embeddings were pinned against.
#include <algorithm>
#include <cmath>

#include "kernels/encoder_kernels.h"

namespace medrt::cpu {

void mean_pool_l2(const float* x, int64_t D, const int64_t* offsets, int64_t n_seqs,
                  float* out) {
  for (int64_t r = 0; r < n_seqs; ++r) {
    float* o = out + r * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t t = offsets[r]; t < offsets[r + 1]; ++t)
      for (int64_t d = 0; d < D; ++d) o[d] += x[t * D + d];
    const float inv_n = 1.0f / float(offsets[r + 1] - offsets[r]);
    double sq = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      o[d] *= inv_n;
      sq += double(o[d]) * o[d];
    }
    const float inv_norm = 1.0f / std::fmax(float(std::sqrt(sq)), 1e-12f);
    for (int64_t d = 0; d < D; ++d) o[d] *= inv_norm;
  }
}

}  // namespace medrt::cpu
