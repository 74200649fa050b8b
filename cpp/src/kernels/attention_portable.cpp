// Portable paged attention: flash-style online softmax over the blocks of a row's sequence.
// One work item is (token row, kv head), and dispatch.cpp splits the items over the threads:
// the query heads sharing that kv head are processed together so each K/V block is read once
// per group. A row's result depends only on its own
// query, position and cache contents.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/kernels_impl.h"

namespace medrt::cpu::portable {
namespace {

// A work buffer in the caller's frame when `n` floats fit (the shapes of real models), on
// the heap otherwise, so that a decode step allocates nothing. (Each kernel file keeps its own
// copy in an anonymous namespace: ISA files share no template instantiations.)
template <int64_t N>
struct FrameBuf {
  float local[N];
  std::vector<float> heap;
  float* get(int64_t n) {
    if (n <= N) return local;
    heap.resize(size_t(n));
    return heap.data();
  }
};

// One cached value as f32 (the cache holds f32 or f16: kernels.h PagedKV).
inline float kv_at(const float* p, int64_t i) { return p[i]; }
inline float kv_at(const uint16_t* p, int64_t i) { return f16_to_f32(p[i]); }

template <class E>
float dot8(const float* a, const E* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) acc[i % 8] += a[i] * kv_at(b, i);
  return hsum8(acc);
}

template <class E>
void attend(const float* q, int64_t n_heads, const PagedKV& cache, const AttentionBatch& batch,
            float scale, float* out, int64_t w0, int64_t w1) {
  const int64_t H = cache.n_kv_heads, hd = cache.head_dim, bs = cache.block_size;
  const int64_t G = n_heads / H;
  // G query heads of up to 256 dims, blocks of up to 128 keys fit in the frame.
  FrameBuf<2048> acc_buf, scores_buf;
  FrameBuf<64> max_buf, sum_buf;
  float* const scores = scores_buf.get(G * bs);
  float* const acc = acc_buf.get(G * hd);
  float* const run_max = max_buf.get(G);
  float* const run_sum = sum_buf.get(G);
  for (int64_t w = w0; w < w1; ++w) {
    const int64_t t = w / H, kvh = w % H;
    const int64_t n_keys = int64_t(batch.positions[t]) + 1;
    const int32_t* table = batch.block_tables + int64_t(batch.token_seq[t]) * batch.max_blocks;
    const float* qg = q + (t * n_heads + kvh * G) * hd;
    std::fill(acc, acc + G * hd, 0.0f);
    std::fill(run_max, run_max + G, -std::numeric_limits<float>::infinity());
    std::fill(run_sum, run_sum + G, 0.0f);
    for (int64_t b = 0; b * bs < n_keys; ++b) {
      const int64_t nk = std::min(bs, n_keys - b * bs);
      const int64_t base = ((int64_t(table[b]) * H + kvh) * bs) * hd;
      const E* kb = static_cast<const E*>(cache.k) + base;
      const E* vb = static_cast<const E*>(cache.v) + base;
      for (int64_t g = 0; g < G; ++g) {
        float* s = scores + g * bs;
        float block_max = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < nk; ++j) {
          s[j] = dot8(qg + g * hd, kb + j * hd, hd) * scale;
          block_max = std::max(block_max, s[j]);
        }
        const float new_max = std::max(run_max[g], block_max);
        const float alpha = std::exp(run_max[g] - new_max);
        run_max[g] = new_max;
        float* a = acc + g * hd;
        float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t d = 0; d < hd; ++d) a[d] *= alpha;
        for (int64_t j = 0; j < nk; ++j) {
          const float p = std::exp(s[j] - new_max);
          lanes[j % 8] += p;
          for (int64_t d = 0; d < hd; ++d) a[d] += p * kv_at(vb, j * hd + d);
        }
        run_sum[g] = run_sum[g] * alpha + hsum8(lanes);
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const float inv = 1.0f / run_sum[g];
      float* o = out + (t * n_heads + kvh * G + g) * hd;
      for (int64_t d = 0; d < hd; ++d) o[d] = acc[g * hd + d] * inv;
    }
  }
}

}  // namespace

void attention_items(const float* q, int64_t n_heads, const PagedKV& cache,
                     const AttentionBatch& batch, float scale, float* out, int64_t w0,
                     int64_t w1) {
  (cache.dtype == DType::F16 ? attend<uint16_t> : attend<float>)(q, n_heads, cache, batch, scale,
                                                                  out, w0, w1);
}

}  // namespace medrt::cpu::portable
