// AVX2/FMA linear layer, y = x @ W^T (+ bias), with W used as stored (f32, f16, bf16).
//
// Every output y[m, n] is computed the same way on every path (kernels_impl.h dot_block): per
// k-block an 8-lane accumulator where lane l sums x[k] * w[k] for k = l (mod 8) in increasing
// k with FMA (the K tail is a masked step whose missing lanes multiply zeros), reduced in
// reduce4's fixed lane order; block sums are added into y in block order, then the bias. Tiles
// and the thread split change which instructions run when, never that sequence, so a row's
// output is bit-identical whatever M is or where the row lands.
//
// Two regimes share the tile kernel:
//  - small M (decode): weights are read straight from storage, each row streamed once for
//    all rows of x (a group of rows stays in L1 while every m-tile passes over it);
//  - large M (prefill): a panel of W is converted to f32 once into a per-thread buffer and
//    reused by every row of x.
#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/avx2_util.h"
#include "kernels/half_layout.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::avx2 {
namespace {

constexpr int kMr = 3, kNr = 4;      // prefill tile: 12 accumulators + 3 x vectors in registers
constexpr int64_t kNc = 128;         // panel rows: 128 x one k-block of f32 (<= 384 KB, in L2)
constexpr int64_t kMc = 120;         // m-block: its x k-slice (<= 360 KB) stays in L2 too
constexpr int64_t kPackedMinM = 32;  // below this, converting W once costs more than it saves
// Software prefetch distance on weights streamed from memory: the hardware prefetcher alone
// leaves about a fifth of the bandwidth unused with 4-8 rows streaming at once.
constexpr int64_t kPrefetchBytes = 512;

// Weight rows read from the f32 panel (zero-padded to a multiple of 8).
struct PanelRows {
  const float* p;
  int64_t ld;
  __m256 load(int j, int64_t k) const { return _mm256_loadu_ps(p + j * ld + k); }
  __m256 tail(int j, int64_t k, int) const { return load(j, k); }
  void prefetch(int, int64_t) const {}
};

// Weight rows read straight from the checkpoint's storage.
template <DType D>
struct StoredRows {
  using Elem = std::conditional_t<D == DType::F32, float, uint16_t>;
  const Elem* p;
  int64_t ld;
  __m256 load(int j, int64_t k) const { return load8<D>(p + j * ld + k); }
  __m256 tail(int j, int64_t k, int n) const { return load_tail<D>(p + j * ld + k, n); }
  // Elements [k, k + 32) of row j, kPrefetchBytes ahead.
  void prefetch(int j, int64_t k) const {
    const char* a = reinterpret_cast<const char*>(p + j * ld + k) + kPrefetchBytes;
    for (size_t off = 0; off < 32 * sizeof(Elem); off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
  }
};

// One k-block of an MR x NR tile: x rows at x (stride ldx) and weight rows of `w`, both from
// the block start, kfull + ktail long. The block sums are stored to y (first block) or added
// to it; bias (non-null on the last block only) is added last.
template <int MR, int NR, class Rows>
void tile(const float* x, int64_t ldx, const Rows& w, int64_t kfull, int ktail, float* y,
          int64_t ldy, bool first, const float* bias) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kfull; k += 8) {
    if (k % 32 == 0)
      for (int j = 0; j < NR; ++j) w.prefetch(j, k);
    __m256 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * ldx + k);
    for (int j = 0; j < NR; ++j) {
      const __m256 wv = w.load(j, k);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (ktail) {
    const __m256i mask = tail_mask(ktail);
    __m256 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm256_maskload_ps(x + i * ldx + kfull, mask);
    for (int j = 0; j < NR; ++j) {
      const __m256 wv = w.tail(j, kfull, ktail);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  const __m256 z = _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i)
    for (int j0 = 0; j0 < NR; j0 += 4) {
      __m128 r = reduce4(acc[i][j0], j0 + 1 < NR ? acc[i][j0 + 1] : z,
                         j0 + 2 < NR ? acc[i][j0 + 2] : z, j0 + 3 < NR ? acc[i][j0 + 3] : z);
      float* out = y + i * ldy + j0;
      if (j0 + 4 <= NR) {
        if (!first) r = _mm_add_ps(_mm_loadu_ps(out), r);
        if (bias) r = _mm_add_ps(r, _mm_loadu_ps(bias + j0));
        _mm_storeu_ps(out, r);
      } else {
        alignas(16) float lanes[4];
        _mm_store_ps(lanes, r);
        for (int j = 0; j < NR - j0; ++j) {
          float v = first ? lanes[j] : out[j] + lanes[j];
          out[j] = bias ? v + bias[j0 + j] : v;
        }
      }
    }
}

template <class Rows>
using TileFn = void (*)(const float*, int64_t, const Rows&, int64_t, int, float*, int64_t, bool,
                        const float*);

template <class Rows, int MR, int... NR>
constexpr std::array<TileFn<Rows>, 8> tile_row(std::integer_sequence<int, NR...>) {
  return {&tile<MR, NR + 1, Rows>...};
}

// The tile kernel for a runtime shape mr in [1, 3], nr in [1, 8].
template <class Rows>
TileFn<Rows> tile_fn(int mr, int nr) {
  static constexpr std::array<std::array<TileFn<Rows>, 8>, 3> table = {
      tile_row<Rows, 1>(std::make_integer_sequence<int, 8>{}),
      tile_row<Rows, 2>(std::make_integer_sequence<int, 8>{}),
      tile_row<Rows, 3>(std::make_integer_sequence<int, 8>{})};
  return table[size_t(mr - 1)][size_t(nr - 1)];
}

template <DType D>
using Elem = typename StoredRows<D>::Elem;

template <DType D>
void linear_small_m(const float* x, int64_t M, int64_t K, const Elem<D>* W, int64_t N,
                    const float* bias, float* y, int64_t n0, int64_t n1) {
  // One x row: 8 independent accumulator chains hide the FMA latency; more rows: 12 per tile.
  const int nr_max = M == 1 ? 8 : M == 2 ? 6 : 4;
  const int mr_max = M == 1 ? 1 : M == 2 ? 2 : 3;
  const int64_t kc = dot_block(K);
  for (int64_t n = n0; n < n1; n += nr_max) {
    const int nr = int(std::min<int64_t>(nr_max, n1 - n));
    for (int64_t kb = 0; kb < K; kb += kc) {
      const int64_t kl = std::min(kc, K - kb);
      const StoredRows<D> rows{W + n * K + kb, K};
      const float* b = bias && kb + kl == K ? bias + n : nullptr;
      for (int64_t m = 0; m < M; m += mr_max) {
        const int mr = int(std::min<int64_t>(mr_max, M - m));
        tile_fn<StoredRows<D>>(mr, nr)(x + m * K + kb, K, rows, kl / 8 * 8, int(kl % 8),
                                       y + m * N + n, N, kb == 0, b);
      }
    }
  }
}

// Rows [n0, n1) of W, columns [k0, k0 + kl), to f32 rows of stride ld, zero-padded to 8.
template <DType D>
void convert_panel(const Elem<D>* W, int64_t K, int64_t n0, int64_t n1, int64_t k0, int64_t kl,
                   float* panel, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n) {
    const Elem<D>* src = W + n * K + k0;
    float* dst = panel + (n - n0) * ld;
    int64_t k = 0;
    for (; k + 8 <= kl; k += 8) _mm256_storeu_ps(dst + k, load8<D>(src + k));
    if (k < kl) _mm256_storeu_ps(dst + k, load_tail<D>(src + k, int(kl - k)));
  }
}

// Rows [n0, n1) of y for M >= kPackedMinM: convert(nb, ne, kb, kl, panel, ld) writes rows
// [nb, ne), inputs [kb, kb + kl) of W as f32 rows of stride ld (whatever W's layout), and every
// row of x reuses that panel.
template <class ConvertPanel>
void large_m(const float* x, int64_t M, int64_t K, int64_t N, const float* bias, float* y,
             int64_t n0, int64_t n1, const ConvertPanel& convert) {
  const int64_t kc = dot_block(K);
  // Aligned to 64 bytes so that no panel load splits a cache line.
  thread_local std::vector<float> panel_buf;
  panel_buf.resize(size_t(kNc * kc + 16));
  const auto misalign = (reinterpret_cast<uintptr_t>(panel_buf.data()) / sizeof(float)) % 16;
  float* const panel = panel_buf.data() + (16 - misalign) % 16;
  const auto run = tile_fn<PanelRows>;
  for (int64_t nb = n0; nb < n1; nb += kNc) {
    const int64_t nc = std::min(kNc, n1 - nb);
    for (int64_t kb = 0; kb < K; kb += kc) {
      const int64_t kl = std::min(kc, K - kb);
      const bool last = kb + kl == K;
      convert(nb, nb + nc, kb, kl, panel, kc);
      for (int64_t mb = 0; mb < M; mb += kMc) {
        const int64_t mc = std::min(kMc, M - mb);
        for (int64_t jg = 0; jg < nc; jg += kNr) {
          const int nr = int(std::min<int64_t>(kNr, nc - jg));
          const PanelRows rows{panel + jg * kc, kc};
          const float* b = bias && last ? bias + nb + jg : nullptr;
          for (int64_t mt = 0; mt < mc; mt += kMr) {
            const int mr = int(std::min<int64_t>(kMr, mc - mt));
            run(mr, nr)(x + (mb + mt) * K + kb, K, rows, kl / 8 * 8, int(kl % 8),
                        y + (mb + mt) * N + nb + jg, N, kb == 0, b);
          }
        }
      }
    }
  }
}

template <DType D>
void linear_typed(const float* x, int64_t M, int64_t K, const void* Wdata, int64_t N,
                  const float* bias, float* y, ThreadPool& pool) {
  const auto* W = static_cast<const Elem<D>*>(Wdata);
  if (M < kPackedMinM) {
    pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
      linear_small_m<D>(x, M, K, W, N, bias, y, n0, n1);
    }, 8);
  } else {
    pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
      large_m(x, M, K, N, bias, y, n0, n1,
              [&](int64_t nb, int64_t ne, int64_t kb, int64_t kl, float* panel, int64_t ld) {
                convert_panel<D>(W, K, nb, ne, kb, kl, panel, ld);
              });
    }, kNr);
  }
}

// ---- f16/bf16 weights in row groups (half_layout.h) -----------------------------------------
// The same tiles and arithmetic as the stored layout above; only where a weight element is read
// from changes, so a row's result is bit-identical to the stored-layout kernel's.

constexpr int kR = kHalfRowsAvx2;
constexpr int64_t kGroupPrefetchBytes = 1024;  // one sequential stream: prefetch farther ahead

template <DType D>
struct GroupRows {
  const uint16_t* g;  // the row group
  int64_t k0;         // the k-block's first input (a multiple of 8)
  int row0;           // the tile's first row in the group
  bool lead;          // this tile prefetches for the whole group (its first tile)
  const uint16_t* at(int j, int64_t k) const {
    const int64_t kk = k0 + k;
    return g + (kk / kHalfChunk) * (kR * kHalfChunk) + (row0 + j) * kHalfChunk + kk % kHalfChunk;
  }
  __m256 load(int j, int64_t k) const { return load8<D>(at(j, k)); }
  __m256 tail(int j, int64_t k, int n) const { return load_tail<D>(at(j, k), n); }
  // Called at k % 32 == 0: the chunks holding inputs k .. k+31 of all 8 rows (8-12 lines).
  void prefetch(int j, int64_t k) const {
    if (!lead || j != 0) return;
    const char* a = reinterpret_cast<const char*>(at(-row0, k)) + kGroupPrefetchBytes;
    for (int l = 0; l < 3 * kR * kHalfChunk * 2; l += 64) _mm_prefetch(a + l, _MM_HINT_T0);
  }
};

int64_t group_elems(int64_t K) { return (K + kHalfChunk - 1) / kHalfChunk * kHalfChunk * kR; }

template <DType D>
void grouped_small_m(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y, int64_t n0, int64_t n1) {
  // One x row: the group's 8 rows in one tile (one sequential stream, 8 accumulator chains);
  // more rows: tiles of up to 3 x 4 as the prefill tile.
  const int nr_max = M == 1 ? kR : kNr;
  const int mr_max = int(std::min<int64_t>(M, kMr));
  const int64_t kc = dot_block(K);
  for (int64_t g0 = n0; g0 < n1; g0 += kR) {
    const uint16_t* g = W + (g0 / kR) * group_elems(K);
    const int rows = int(std::min<int64_t>(kR, n1 - g0));
    for (int64_t kb = 0; kb < K; kb += kc) {
      const int64_t kl = std::min(kc, K - kb);
      const float* b = bias && kb + kl == K ? bias + g0 : nullptr;
      for (int j0 = 0; j0 < rows; j0 += nr_max) {
        const int nr = std::min(nr_max, rows - j0);
        const GroupRows<D> w{g, kb, j0, j0 == 0};
        for (int64_t m = 0; m < M; m += mr_max) {
          const int mr = int(std::min<int64_t>(mr_max, M - m));
          tile_fn<GroupRows<D>>(mr, nr)(x + m * K + kb, K, w, kl / 8 * 8, int(kl % 8),
                                        y + m * N + g0 + j0, N, kb == 0, b ? b + j0 : nullptr);
        }
      }
    }
  }
}

// Rows [n0, n1) (n0 a multiple of kR), inputs [k0, k0 + kl), to f32 rows of stride ld; a
// group stores zeros past K, so whole 8-input steps are converted.
template <DType D>
void convert_group_panel(const uint16_t* W, int64_t K, int64_t n0, int64_t n1, int64_t k0,
                         int64_t kl, float* panel, int64_t ld) {
  for (int64_t g0 = n0; g0 < n1; g0 += kR) {
    const GroupRows<D> w{W + (g0 / kR) * group_elems(K), k0, 0, false};
    const int rows = int(std::min<int64_t>(kR, n1 - g0));
    for (int64_t k = 0; k < kl; k += 8)
      for (int r = 0; r < rows; ++r)
        _mm256_storeu_ps(panel + (g0 - n0 + r) * ld + k, w.load(r, k));
  }
}

template <DType D>
void grouped_typed(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                   const float* bias, float* y, ThreadPool& pool) {
  static_assert(kNc % kR == 0, "a prefill panel holds whole row groups");
  if (M < kPackedMinM) {
    pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
      grouped_small_m<D>(x, M, K, W, N, bias, y, n0, n1);
    }, kR);
  } else {
    pool.parallel_for(N, [&](int, int64_t n0, int64_t n1) {
      large_m(x, M, K, N, bias, y, n0, n1,
              [&](int64_t nb, int64_t ne, int64_t kb, int64_t kl, float* panel, int64_t ld) {
                convert_group_panel<D>(W, K, nb, ne, kb, kl, panel, ld);
              });
    }, kR);
  }
}

}  // namespace

void linear_half_packed(const float* x, int64_t M, int64_t K, const uint16_t* W, DType dt,
                        int64_t N, const float* bias, float* y, ThreadPool& pool) {
  if (dt == DType::BF16) return grouped_typed<DType::BF16>(x, M, K, W, N, bias, y, pool);
  return grouped_typed<DType::F16>(x, M, K, W, N, bias, y, pool);
}

void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const float* bias,
            float* y, ThreadPool& pool) {
  const int64_t N = W.shape[0];
  switch (W.dtype) {
    case DType::F16: return linear_typed<DType::F16>(x, M, K, W.data, N, bias, y, pool);
    case DType::BF16: return linear_typed<DType::BF16>(x, M, K, W.data, N, bias, y, pool);
    default: return linear_typed<DType::F32>(x, M, K, W.data, N, bias, y, pool);
  }
}

}  // namespace medrt::cpu::avx2
