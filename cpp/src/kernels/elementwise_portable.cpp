// Portable element-wise ops: conversions, RMSNorm, RoPE, SiLU-gating, residual add.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels_impl.h"

namespace medrt::cpu::portable {

void to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  if (dtype == DType::F32) {
    std::memcpy(dst, src, size_t(n) * sizeof(float));
  } else if (dtype == DType::F16) {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  } else {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  }
}

void to_f16(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < D; ++i) acc[i % 8] += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(hsum8(acc) / float(D) + eps);
    float* yr = y + t * D;
    for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq) {
  const int64_t half = head_dim / 2;
  float cs[512], sn[512];
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i0 = 0; i0 < half; i0 += 512) {
      const int64_t i1 = std::min<int64_t>(half, i0 + 512);
      for (int64_t i = i0; i < i1; ++i) {
        const float angle = float(positions[t]) * inv_freq[i];
        cs[i - i0] = std::cos(angle);
        sn[i - i0] = std::sin(angle);
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* xh = x + (t * n_heads + h) * head_dim;
        for (int64_t i = i0; i < i1; ++i) {
          const float a = xh[i], b = xh[i + half];
          xh[i] = a * cs[i - i0] - b * sn[i - i0];
          xh[i + half] = b * cs[i - i0] + a * sn[i - i0];
        }
      }
    }
  }
}

void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, int64_t stride,
              float* out) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < F; ++i) {
      const float g = gate[t * stride + i];
      out[t * F + i] = g / (1.0f + std::exp(-g)) * up[t * stride + i];
    }
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace medrt::cpu::portable
