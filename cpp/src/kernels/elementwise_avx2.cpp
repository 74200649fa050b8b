// AVX2/FMA element-wise ops: conversions, RMSNorm, RoPE, SiLU-gating, residual add.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/avx2_util.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::avx2 {
namespace {

template <DType D, class Elem>
void convert(const Elem* s, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<D>(s + i));
  if (i < n) _mm256_maskstore_ps(dst + i, tail_mask(int(n - i)), load_tail<D>(s + i, int(n - i)));
}

}  // namespace

void to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  if (dtype == DType::F32)
    std::memcpy(dst, src, size_t(n) * sizeof(float));
  else if (dtype == DType::F16)
    convert<DType::F16>(static_cast<const uint16_t*>(src), n, dst);
  else
    convert<DType::BF16>(static_cast<const uint16_t*>(src), n, dst);
}

void to_f16(const float* src, int64_t n, uint16_t* dst) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound));
  if (i < n) {
    alignas(16) uint16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp),
                    _mm256_cvtps_ph(_mm256_maskload_ps(src + i, tail_mask(int(n - i))), kRound));
    std::memcpy(dst + i, tmp, size_t(n - i) * sizeof(uint16_t));
  }
}

void rmsnorm(const float* x, int64_t T, int64_t D, const float* w, float eps, float* y) {
  const int64_t Df = D / 8 * 8;
  const __m256i tmask = tail_mask(int(D - Df));
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * D;
    float* yr = y + t * D;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < Df; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    if (Df < D) {
      const __m256 v = _mm256_maskload_ps(xr + Df, tmask);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(reduce1(acc) / float(D) + eps));
    for (int64_t i = 0; i < Df; i += 8)
      _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), inv),
                                             _mm256_loadu_ps(w + i)));
    if (Df < D)
      _mm256_maskstore_ps(yr + Df, tmask,
                          _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(xr + Df, tmask), inv),
                                        _mm256_maskload_ps(w + Df, tmask)));
  }
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq) {
  const int64_t half = head_dim / 2;
  constexpr int64_t kChunk = 512;
  alignas(32) float cs[kChunk], sn[kChunk];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i0 = 0; i0 < half; i0 += kChunk) {
      const int64_t n = std::min(kChunk, half - i0);
      for (int64_t i = 0; i < n; ++i) {
        // The angle is rounded to float first, as Hugging Face computes it in f32.
        const float angle = float(positions[t]) * inv_freq[i0 + i];
        cs[i] = std::cos(angle);
        sn[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* a = x + (t * n_heads + h) * head_dim + i0;
        float* b = a + half;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
          const __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
          const __m256 c = _mm256_load_ps(cs + i), s = _mm256_load_ps(sn + i);
          _mm256_storeu_ps(a + i, _mm256_fmsub_ps(va, c, _mm256_mul_ps(vb, s)));
          _mm256_storeu_ps(b + i, _mm256_fmadd_ps(vb, c, _mm256_mul_ps(va, s)));
        }
        for (; i < n; ++i) {
          const float va = a[i], vb = b[i];
          a[i] = std::fma(va, cs[i], -(vb * sn[i]));
          b[i] = std::fma(vb, cs[i], va * sn[i]);
        }
      }
    }
}

void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, int64_t stride,
              float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const int64_t Ff = F / 8 * 8;
  const __m256i tmask = tail_mask(int(F - Ff));
  auto silu_mul8 = [&](__m256 g, __m256 u) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
  };
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gate + t * stride;
    const float* u = up + t * stride;
    float* o = out + t * F;
    for (int64_t i = 0; i < Ff; i += 8)
      _mm256_storeu_ps(o + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (Ff < F)
      _mm256_maskstore_ps(o + Ff, tmask,
                          silu_mul8(_mm256_maskload_ps(g + Ff, tmask),
                                    _mm256_maskload_ps(u + Ff, tmask)));
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) x[i] += y[i];
}

}  // namespace medrt::cpu::avx2
