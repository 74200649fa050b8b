// Portable linear layer: plain C++ with the same summation structure as the AVX2 path
// (kernels_impl.h: dot_block k-blocks of 8-lane sums reduced by hsum8), so a row's result
// depends only on the row, never on M or the thread split.
#include <algorithm>

#include "kernels/kernels_impl.h"

namespace medrt::cpu::portable {
namespace {

// W rows converted to f32 per block of rows and of k (dot_block's k-blocks, at most 768), so
// each converted piece serves all M rows of x and the panel fits in the frame: a decode step
// allocates nothing whichever thread runs a chunk.
constexpr int64_t kRowsPerBlock = 16;
constexpr int64_t kMaxKBlock = 768;

// One k-block's contribution to a dot product: 8-lane sums reduced by hsum8. `w` is padded with
// zeros to a multiple of 8, and the tail lanes see x = 0.
float block_dot(const float* x, const float* w, int64_t kl) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= kl; k += 8)
    for (int l = 0; l < 8; ++l) acc[l] += x[k + l] * w[k + l];
  if (k < kl)
    for (int l = 0; l < 8; ++l) acc[l] += (k + l < kl ? x[k + l] : 0.0f) * w[k + l];
  return hsum8(acc);
}

}  // namespace

void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const float* bias,
            float* y, ThreadPool& pool) {
  const int64_t N = W.shape[0];
  const int64_t kc = dot_block(K);
  const size_t elem = dtype_size(W.dtype), row_bytes = size_t(K) * elem;
  pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
    float panel[kRowsPerBlock * kMaxKBlock];
    for (int64_t nb = n0; nb < n1; nb += kRowsPerBlock) {
      const int64_t nr = std::min(kRowsPerBlock, n1 - nb);
      for (int64_t k0 = 0; k0 < K; k0 += kc) {
        const int64_t kl = std::min(kc, K - k0), klp = (kl + 7) / 8 * 8;
        for (int64_t j = 0; j < nr; ++j) {
          float* row = panel + j * klp;
          to_f32(static_cast<const char*>(W.data) + size_t(nb + j) * row_bytes + size_t(k0) * elem,
                 W.dtype, kl, row);
          std::fill(row + kl, row + klp, 0.0f);
        }
        // y accumulates the k-blocks in order: the same sums as one dot over the whole row.
        for (int64_t m = 0; m < M; ++m)
          for (int64_t j = 0; j < nr; ++j) {
            const float part = block_dot(x + m * K + k0, panel + j * klp, kl);
            float& out = y[m * N + nb + j];
            out = k0 == 0 ? part : out + part;
          }
      }
      if (bias)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t j = 0; j < nr; ++j) y[m * N + nb + j] += bias[nb + j];
    }
  }, kRowsPerBlock);
}

}  // namespace medrt::cpu::portable
