// AVX2/FMA paged attention: flash-style online softmax over the blocks of a row's sequence.
// One work item is (token row, kv head), and dispatch.cpp splits the items over the threads;
// the query heads of that kv head's group share every K/V block load. Each score is an 8-lane
// FMA dot product over head_dim reduced in the fixed order of reduce4, and softmax sums run
// over keys in increasing order, so a row's output depends only on its query, its position and
// the cache, never on the rest of the batch. The cache holds f32 or f16 (kernels.h PagedKV):
// every kernel below is instantiated for both, f16 rows widened to f32 as they are loaded.
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/avx2_util.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::avx2 {
namespace {

// The element type of a cache of dtype D.
template <DType D>
using KvElem = std::conditional_t<D == DType::F32, float, uint16_t>;

// Scores of keys [0, nk) of one block against query q (zero-padded to a multiple of 8),
// eight keys at a time: s[j] = scale * dot(q, k_j). A partial octet repeats key 0 in its
// missing lanes (s has room for them; the caller masks them out).
template <DType D>
void block_scores(const float* q, const KvElem<D>* kb, int64_t hd, int64_t nk, float scale,
                  float* s) {
  const int64_t hdf = hd / 8 * 8;
  const __m128 vscale = _mm_set1_ps(scale);
  for (int64_t j = 0; j < nk; j += 8) {
    const KvElem<D>* rows[8];
    for (int i = 0; i < 8; ++i) rows[i] = kb + (j + i < nk ? j + i : 0) * hd;
    __m256 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hdf; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qv, load8<D>(rows[i] + d), a[i]);
    }
    if (hdf < hd) {
      const __m256 qv = _mm256_loadu_ps(q + hdf);
      for (int i = 0; i < 8; ++i)
        a[i] = _mm256_fmadd_ps(qv, load_tail<D>(rows[i] + hdf, int(hd - hdf)), a[i]);
    }
    _mm_storeu_ps(s + j, _mm_mul_ps(reduce4(a[0], a[1], a[2], a[3]), vscale));
    _mm_storeu_ps(s + j + 4, _mm_mul_ps(reduce4(a[4], a[5], a[6], a[7]), vscale));
  }
}

// a[0 .. 8*NV) = a * alpha + sum_j p[j] * v_j over the block's nk value rows, in increasing j;
// NV accumulators stay in registers. With tail_n > 0, the last vector holds the tail_n dims
// left of head_dim (the rest of its lanes read as zeros).
template <DType D, int NV>
void weighted_values(float* a, const KvElem<D>* vb, int64_t hd, int64_t nk, const float* p,
                     float alpha, int tail_n) {
  __m256 acc[NV];
  const __m256 valpha = _mm256_set1_ps(alpha);
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_mul_ps(_mm256_loadu_ps(a + 8 * v), valpha);
  for (int64_t j = 0; j < nk; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const KvElem<D>* row = vb + j * hd;
    for (int v = 0; v < NV; ++v) {
      const __m256 vv = tail_n > 0 && v == NV - 1 ? load_tail<D>(row + 8 * v, tail_n)
                                                  : load8<D>(row + 8 * v);
      acc[v] = _mm256_fmadd_ps(pj, vv, acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(a + 8 * v, acc[v]);
}

template <DType D>
using WeightedValuesFn = void (*)(float*, const KvElem<D>*, int64_t, int64_t, const float*, float,
                                  int);
template <DType D>
constexpr WeightedValuesFn<D> kWeightedValues[8] = {
    weighted_values<D, 1>, weighted_values<D, 2>, weighted_values<D, 3>, weighted_values<D, 4>,
    weighted_values<D, 5>, weighted_values<D, 6>, weighted_values<D, 7>, weighted_values<D, 8>};

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

// The online-softmax state of a query-head group over the keys read so far.
struct GroupState {
  const float* qs;  // [G][hdp] queries, zero-padded
  float* acc;       // [G][hdp] unnormalised outputs
  // One span's scores, then probabilities: a block writes whole octets from its offset and
  // the next block overwrites the excess.
  float* s;
  float* run_max;
  float* run_sum;
};

// Every query head of the group over one span of nk keys whose blocks' K/V rows start at
// kblk[i], vblk[i] (block i of the span; each block's rows contiguous, head_dim apart).
template <DType D>
void attend_span(const GroupState& st, int64_t G, int64_t hd, int64_t bs, int64_t nblk,
                 int64_t nk, const KvElem<D>* const* kblk, const KvElem<D>* const* vblk,
                 float scale) {
  const int64_t hdp = (hd + 7) / 8 * 8, hdf = hd / 8 * 8;
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  float* const s = st.s;
  const int64_t nkf = nk / 8 * 8;
  const __m256i kmask = tail_mask(int(nk - nkf));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t i = 0; i < nblk; ++i)
      block_scores<D>(st.qs + g * hdp, kblk[i], hd, std::min(bs, nk - i * bs), scale,
                      s + i * bs);
    // Scores past nk are masked to -inf: they become exp = 0 and drop out of the sum.
    __m256 vmax = neg_inf;
    for (int64_t j = 0; j < nk; j += 8) {
      __m256 v = _mm256_loadu_ps(s + j);
      if (j == nkf) v = _mm256_blendv_ps(neg_inf, v, _mm256_castsi256_ps(kmask));
      _mm256_storeu_ps(s + j, v);
      vmax = _mm256_max_ps(vmax, v);
    }
    const float new_max = std::max(st.run_max[g], hmax(vmax));
    const __m256 bmax = _mm256_set1_ps(new_max);
    const float alpha = _mm256_cvtss_f32(exp8(_mm256_set1_ps(st.run_max[g] - new_max)));
    st.run_max[g] = new_max;
    __m256 psum = _mm256_setzero_ps();
    for (int64_t j = 0; j < nk; j += 8) {
      __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), bmax));
      if (j == nkf) p = _mm256_and_ps(p, _mm256_castsi256_ps(kmask));
      _mm256_storeu_ps(s + j, p);
      psum = _mm256_add_ps(psum, p);
    }
    st.run_sum[g] = st.run_sum[g] * alpha + reduce1(psum);
    float* a = st.acc + g * hdp;
    for (int64_t i = 0; i < nblk; ++i) {
      const int64_t off = i * bs;
      // The first block applies the rescale; later ones multiply by 1, which is exact.
      const float scale_acc = i == 0 ? alpha : 1.0f;
      for (int64_t d = 0; d < hdp; d += 64) {
        const int nv = int(std::min<int64_t>(8, (hdp - d) / 8));
        kWeightedValues<D>[nv - 1](a + d, vblk[i] + d, hd, std::min(bs, nk - off), s + off,
                                   scale_acc, d + 8 * nv > hdf ? int(hd - hdf) : 0);
      }
    }
  }
}

template <DType D>
void attend_group(const float* q, int64_t G, const PagedKV& cache, const int32_t* table,
                  int64_t kvh, int64_t n_keys, float scale, float* out, Scratch& sc) {
  const int64_t hd = cache.head_dim, bs = cache.block_size, H = cache.n_kv_heads;
  const int64_t hdp = (hd + 7) / 8 * 8, hdf = hd / 8 * 8;
  const int64_t span_blocks = std::max<int64_t>(1, kSpanKeys / bs);
  const __m256i tmask = tail_mask(int(hd - hdf));
  float* const qs = sc.q;
  float* const acc = sc.acc;
  std::fill(qs, qs + G * hdp, 0.0f);
  std::fill(acc, acc + G * hdp, 0.0f);
  for (int64_t g = 0; g < G; ++g) std::copy(q + g * hd, q + (g + 1) * hd, qs + g * hdp);
  std::fill(sc.run_max, sc.run_max + G, -std::numeric_limits<float>::infinity());
  std::fill(sc.run_sum, sc.run_sum + G, 0.0f);
  const GroupState st{qs, acc, sc.scores, sc.run_max, sc.run_sum};
  const KvElem<D>* const kcache = static_cast<const KvElem<D>*>(cache.k);
  const KvElem<D>* const vcache = static_cast<const KvElem<D>*>(cache.v);
  const KvElem<D>* kblk[kSpanKeys];
  const KvElem<D>* vblk[kSpanKeys];
  for (int64_t b0 = 0; b0 * bs < n_keys; b0 += span_blocks) {
    const int64_t b1 = std::min(b0 + span_blocks, (n_keys + bs - 1) / bs);
    const int64_t nk = std::min(b1 * bs, n_keys) - b0 * bs;  // keys in this span
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t base = ((int64_t(table[b]) * H + kvh) * bs) * hd;
      kblk[b - b0] = kcache + base;
      vblk[b - b0] = vcache + base;
    }
    attend_span<D>(st, G, hd, bs, b1 - b0, nk, kblk, vblk, scale);
  }
  for (int64_t g = 0; g < G; ++g) {
    const __m256 inv = _mm256_set1_ps(1.0f / sc.run_sum[g]);
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
    (cache.dtype == DType::F16 ? attend_group<DType::F16> : attend_group<DType::F32>)(
        q + row, G, cache, table, kvh, int64_t(batch.positions[t]) + 1, scale, out + row, sc);
  }
}

}  // namespace medrt::cpu::avx2
