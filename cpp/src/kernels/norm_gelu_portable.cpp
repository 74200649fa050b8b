// Portable LayerNorm and GELU (erf) for the encoder (encoder_kernels.h).
#include <cmath>

#include "kernels/encoder_kernels.h"

namespace medrt::cpu::portable {

void layernorm(const float* x, int64_t T, int64_t D, const float* w, const float* b, float eps,
               float* y) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float* yr = y + t * D;
    // Two passes (mean, then squared deviations) keep the variance accurate when the mean is
    // large next to the spread, as it is in BERT's residual stream.
    float sum = 0.0f;
    for (int64_t i = 0; i < D; ++i) sum += xr[i];
    const float mean = sum / float(D);
    float sq = 0.0f;
    for (int64_t i = 0; i < D; ++i) {
      const float d = xr[i] - mean;
      sq += d * d;
    }
    const float inv = 1.0f / std::sqrt(sq / float(D) + eps);
    for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
  }
}

void gelu_erf(float* x, int64_t n) {
  constexpr float kInvSqrt2 = 0.70710678118654752f;
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
}

}  // namespace medrt::cpu::portable
