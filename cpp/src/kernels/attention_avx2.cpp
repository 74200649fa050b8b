// AVX2/FMA paged attention: flash-style online softmax over the blocks of a row's sequence.
// One work item is (token row, kv head), and dispatch.cpp splits the items over the threads;
// the query heads of that kv head's group share every K/V block load. Each score is an 8-lane
// FMA dot product over head_dim reduced in the fixed order of reduce4, and softmax sums run
// over keys in increasing order, so a row's output depends only on its query, its position and
// the cache, never on the rest of the batch.
#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/avx2_util.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::avx2 {
namespace {

// Scores of keys [0, nk) of one block against query q (zero-padded to a multiple of 8),
// eight keys at a time: s[j] = scale * dot(q, k_j). A partial octet repeats key 0 in its
// missing lanes (s has room for them; the caller masks them out).
void block_scores(const float* q, const float* kb, int64_t hd, int64_t nk, float scale,
                  float* s) {
  const int64_t hdf = hd / 8 * 8;
  const __m256i tmask = tail_mask(int(hd - hdf));
  const __m128 vscale = _mm_set1_ps(scale);
  for (int64_t j = 0; j < nk; j += 8) {
    const float* rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = kb + (j + i < nk ? j + i : 0) * hd;
    __m256 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hdf; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[i] + d), a[i]);
    }
    if (hdf < hd) {
      const __m256 qv = _mm256_loadu_ps(q + hdf);
      for (int i = 0; i < 8; ++i)
        a[i] = _mm256_fmadd_ps(qv, _mm256_maskload_ps(rows[i] + hdf, tmask), a[i]);
    }
    _mm_storeu_ps(s + j, _mm_mul_ps(reduce4(a[0], a[1], a[2], a[3]), vscale));
    _mm_storeu_ps(s + j + 4, _mm_mul_ps(reduce4(a[4], a[5], a[6], a[7]), vscale));
  }
}

// a[0 .. 8*NV) = a * alpha + sum_j p[j] * v_j over the block's nk value rows, in increasing j;
// NV accumulators stay in registers. With tail set, the last vector is a masked head_dim tail.
template <int NV>
void weighted_values(float* a, const float* vb, int64_t hd, int64_t nk, const float* p,
                     float alpha, bool tail, __m256i tmask) {
  __m256 acc[NV];
  const __m256 valpha = _mm256_set1_ps(alpha);
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_mul_ps(_mm256_loadu_ps(a + 8 * v), valpha);
  for (int64_t j = 0; j < nk; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* row = vb + j * hd;
    for (int v = 0; v < NV; ++v) {
      const __m256 vv = tail && v == NV - 1 ? _mm256_maskload_ps(row + 8 * v, tmask)
                                            : _mm256_loadu_ps(row + 8 * v);
      acc[v] = _mm256_fmadd_ps(pj, vv, acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(a + 8 * v, acc[v]);
}

using WeightedValuesFn = void (*)(float*, const float*, int64_t, int64_t, const float*, float,
                                  bool, __m256i);
constexpr WeightedValuesFn kWeightedValues[8] = {
    weighted_values<1>, weighted_values<2>, weighted_values<3>, weighted_values<4>,
    weighted_values<5>, weighted_values<6>, weighted_values<7>, weighted_values<8>};

// Keys are taken a span of whole blocks at a time (at least kSpanKeys keys, span boundaries at
// fixed key indices): one softmax rescale per span instead of per block.
constexpr int64_t kSpanKeys = 64;

float hmax(__m256 v) {
  const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
}

// Work buffers in the kernel's frame: a decode step allocates nothing, whichever pool thread
// runs a work item (a thread_local buffer would be sized on each thread's first item, which
// may come at any step), and the file holds no object with a destructor (no unwinding tables:
// isa_prelude.h). Shapes beyond these bounds run the portable kernel (avx2_attention_fits).
struct Scratch {
  alignas(32) float q[kMaxGroupFloats];
  alignas(32) float acc[kMaxGroupFloats];
  alignas(32) float scores[kSpanKeys + kMaxAttentionBlock + 8];
  float run_max[kMaxGroupHeads], run_sum[kMaxGroupHeads];
};

void attend_group(const float* q, int64_t G, const PagedKV& cache, const int32_t* table,
                  int64_t kvh, int64_t n_keys, float scale, float* out, Scratch& sc) {
  const int64_t hd = cache.head_dim, bs = cache.block_size, H = cache.n_kv_heads;
  const int64_t hdp = (hd + 7) / 8 * 8, hdf = hd / 8 * 8;
  const int64_t span_blocks = std::max<int64_t>(1, kSpanKeys / bs);
  const __m256i tmask = tail_mask(int(hd - hdf));
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  float* const qs = sc.q;
  float* const acc = sc.acc;
  std::fill(qs, qs + G * hdp, 0.0f);
  std::fill(acc, acc + G * hdp, 0.0f);
  // A block writes whole octets of scores from its offset; the next block overwrites the excess.
  float* const s = sc.scores;
  for (int64_t g = 0; g < G; ++g) std::copy(q + g * hd, q + (g + 1) * hd, qs + g * hdp);
  float* const run_max = sc.run_max;
  float* const run_sum = sc.run_sum;
  std::fill(run_max, run_max + G, -std::numeric_limits<float>::infinity());
  std::fill(run_sum, run_sum + G, 0.0f);
  const float* kblk[kSpanKeys];
  const float* vblk[kSpanKeys];
  for (int64_t b0 = 0; b0 * bs < n_keys; b0 += span_blocks) {
    const int64_t b1 = std::min(b0 + span_blocks, (n_keys + bs - 1) / bs);
    const int64_t nk = std::min(b1 * bs, n_keys) - b0 * bs;  // keys in this span
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t base = ((int64_t(table[b]) * H + kvh) * bs) * hd;
      kblk[b - b0] = cache.k + base;
      vblk[b - b0] = cache.v + base;
    }
    const int64_t nkf = nk / 8 * 8;
    const __m256i kmask = tail_mask(int(nk - nkf));
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t b = b0; b < b1; ++b)
        block_scores(qs + g * hdp, kblk[b - b0], hd, std::min(bs, nk - (b - b0) * bs),
                     scale, s + (b - b0) * bs);
      // Scores past nk are masked to -inf: they become exp = 0 and drop out of the sum.
      __m256 vmax = neg_inf;
      for (int64_t j = 0; j < nk; j += 8) {
        __m256 v = _mm256_loadu_ps(s + j);
        if (j == nkf) v = _mm256_blendv_ps(neg_inf, v, _mm256_castsi256_ps(kmask));
        _mm256_storeu_ps(s + j, v);
        vmax = _mm256_max_ps(vmax, v);
      }
      const float new_max = std::max(run_max[g], hmax(vmax));
      const __m256 bmax = _mm256_set1_ps(new_max);
      const float alpha = _mm256_cvtss_f32(exp8(_mm256_set1_ps(run_max[g] - new_max)));
      run_max[g] = new_max;
      __m256 psum = _mm256_setzero_ps();
      for (int64_t j = 0; j < nk; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), bmax));
        if (j == nkf) p = _mm256_and_ps(p, _mm256_castsi256_ps(kmask));
        _mm256_storeu_ps(s + j, p);
        psum = _mm256_add_ps(psum, p);
      }
      run_sum[g] = run_sum[g] * alpha + reduce1(psum);
      float* a = acc + g * hdp;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t off = (b - b0) * bs;
        // The first block applies the rescale; later ones multiply by 1, which is exact.
        const float scale_acc = b == b0 ? alpha : 1.0f;
        for (int64_t d = 0; d < hdp; d += 64) {
          const int nv = int(std::min<int64_t>(8, (hdp - d) / 8));
          kWeightedValues[nv - 1](a + d, vblk[b - b0] + d, hd, std::min(bs, nk - off), s + off,
                                  scale_acc, d + 8 * nv > hdf, tmask);
        }
      }
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const __m256 inv = _mm256_set1_ps(1.0f / run_sum[g]);
    const float* a = acc + g * hdp;
    float* o = out + g * hd;
    for (int64_t d = 0; d < hdf; d += 8)
      _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(a + d), inv));
    if (hdf < hd)
      _mm256_maskstore_ps(o + hdf, tmask, _mm256_mul_ps(_mm256_loadu_ps(a + hdf), inv));
  }
}

}  // namespace

void attention_items(const float* q, int64_t n_heads, const PagedKV& cache,
                     const AttentionBatch& batch, float scale, float* out, int64_t w0,
                     int64_t w1) {
  const int64_t H = cache.n_kv_heads, hd = cache.head_dim;
  const int64_t G = n_heads / H;
  Scratch sc;  // in this frame: see Scratch
  for (int64_t w = w0; w < w1; ++w) {
    const int64_t t = w / H, kvh = w % H;
    const int32_t* table = batch.block_tables + int64_t(batch.token_seq[t]) * batch.max_blocks;
    const int64_t row = (t * n_heads + kvh * G) * hd;
    attend_group(q + row, G, cache, table, kvh, int64_t(batch.positions[t]) + 1, scale,
                 out + row, sc);
  }
}

}  // namespace medrt::cpu::avx2
