// The encoder ops of encoder_kernels.h: argument checks, then the instruction set chosen by
// cpu_features (AVX-512 machines run the AVX2 paths, as for every op but linear).
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/encoder_kernels.h"
#include "medrt/error.h"

namespace medrt::cpu {
namespace {

bool simd() { return active_isa() != Isa::Portable; }

}  // namespace

void layernorm(const float* x, int64_t T, int64_t D, const float* w, const float* b, float eps,
               float* y) {
  if (D <= 0 || !(eps >= 0.0f))
    throw Error("layernorm: need D > 0 and eps >= 0, got D=" + std::to_string(D));
  if (simd())
    avx2::layernorm(x, T, D, w, b, eps, y);
  else
    portable::layernorm(x, T, D, w, b, eps, y);
}

void gelu_erf(float* x, int64_t n) {
  if (simd())
    avx2::gelu_erf(x, n);
  else
    portable::gelu_erf(x, n);
}

void encoder_attention(const float* q, const float* k, const float* v, int64_t stride,
                       int64_t n_heads, int64_t head_dim, const PackedRows& rows, float scale,
                       float* out, ThreadPool& pool) {
  if (n_heads <= 0 || head_dim <= 0 || stride < n_heads * head_dim)
    throw Error("encoder_attention: stride " + std::to_string(stride) + " is narrower than " +
                std::to_string(n_heads) + " heads of " + std::to_string(head_dim));
  int64_t longest = 0;
  for (int64_t s = 0; s < rows.n_seqs; ++s) {
    const int64_t len = rows.offsets[s + 1] - rows.offsets[s];
    if (len < 0) throw Error("encoder_attention: offsets must not decrease");
    longest = std::max(longest, len);
  }
  // Work items are (sequence, head) pairs; each computes whole query rows, so a row's result
  // does not depend on how the items are split across threads.
  const int64_t items = rows.n_seqs * n_heads;
  const int64_t out_stride = n_heads * head_dim;
  const bool use_simd = simd();
  std::vector<std::vector<float>> scratch(size_t(pool.size()) + 1);
  pool.parallel_for(items, [&](int tid, int64_t begin, int64_t end) {
    std::vector<float>& scores = scratch[size_t(tid)];
    scores.resize(size_t(std::max<int64_t>(longest, 1)));
    for (int64_t it = begin; it < end; ++it) {
      const int64_t s = it / n_heads, h = it % n_heads;
      const int64_t b = rows.offsets[s], e = rows.offsets[s + 1];
      if (use_simd)
        avx2::encoder_attention_rows(q, k, v, stride, head_dim, b, e, b, e, h, scale,
                                     scores.data(), out, out_stride);
      else
        portable::encoder_attention_rows(q, k, v, stride, head_dim, b, e, b, e, h, scale,
                                         scores.data(), out, out_stride);
    }
  });
}

}  // namespace medrt::cpu
