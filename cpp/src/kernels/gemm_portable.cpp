// Portable linear layer: plain C++ with the same summation structure as the AVX2 path
// (kernels_impl.h: dot_block k-blocks of 8-lane sums reduced by hsum8), so a row's result
// depends only on the row, never on M or the thread split.
#include <algorithm>
#include <vector>

#include "kernels/kernels_impl.h"

namespace medrt::cpu::portable {
namespace {

// W rows converted to f32 per block, so each converted row serves all M rows of x.
constexpr int64_t kRowsPerBlock = 16;

float dot(const float* x, const float* w, int64_t K, int64_t kc) {
  float sum = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    const int64_t k1 = std::min(K, k0 + kc);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8)
      for (int l = 0; l < 8; ++l) acc[l] += x[k + l] * w[k + l];
    if (k < k1)  // the tail lanes see x = 0 against the zero-padded weight row
      for (int l = 0; l < 8; ++l) acc[l] += (k + l < k1 ? x[k + l] : 0.0f) * w[k + l];
    sum = k0 == 0 ? hsum8(acc) : sum + hsum8(acc);
  }
  return sum;
}

}  // namespace

void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const float* bias,
            float* y, ThreadPool& pool) {
  const int64_t N = W.shape[0];
  const int64_t Kp = (K + 7) / 8 * 8, kc = dot_block(K);
  const size_t row_bytes = size_t(K) * dtype_size(W.dtype);
  pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
    std::vector<float> panel(size_t(kRowsPerBlock * Kp), 0.0f);
    for (int64_t nb = n0; nb < n1; nb += kRowsPerBlock) {
      const int64_t nr = std::min(kRowsPerBlock, n1 - nb);
      for (int64_t j = 0; j < nr; ++j)
        to_f32(static_cast<const char*>(W.data) + size_t(nb + j) * row_bytes, W.dtype, K,
               panel.data() + j * Kp);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < nr; ++j) {
          float v = dot(x + m * K, panel.data() + j * Kp, K, kc);
          if (bias) v += bias[nb + j];
          y[m * N + nb + j] = v;
        }
    }
  }, kRowsPerBlock);
}

}  // namespace medrt::cpu::portable
