// AVX-512 linear layer: the AVX2 kernel's design (gemm_avx2.cpp) at twice the vector width,
// with 32 registers for a larger tile. Its fixed summation order, shared by every path of this
// ISA: per k-block (dot_block16) a 16-lane FMA accumulator where lane l sums k = l (mod 16) in
// increasing k (the K tail is a masked step), folded to 8 lanes as lane l + lane l+8, then
// reduce4's order; block sums are added into y in block order, then the bias.
//
// This file is compiled with AVX-512 flags, so it defines its helpers with internal linkage and
// instantiates no standard-library container: an inline function emitted here could otherwise
// be the copy the linker keeps for the portable and AVX2 code on CPUs without AVX-512.
#include <immintrin.h>

// GCC 12's avx512fintrin.h trips -Wuninitialized on its own "undefined vector" idiom once
// inlined (GCC bug 105593, fixed in GCC 13); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#include "kernels/half_layout.h"
#include "kernels/kernels_impl.h"

namespace medrt::cpu::avx512 {
namespace {

// Four 8-lane sums in the order of hsum8 (kernels_impl.h), as avx2_util.h reduce4.
inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// A per-thread 64-byte aligned scratch buffer that only grows.
struct Scratch {
  float* data = nullptr;
  size_t capacity = 0;
  ~Scratch() { std::free(data); }
  float* get(size_t n) {
    if (n > capacity) {
      std::free(data);
      capacity = (n + 15) / 16 * 16;
      data = static_cast<float*>(std::aligned_alloc(64, capacity * sizeof(float)));
      if (!data) throw std::bad_alloc();
    }
    return data;
  }
};

constexpr int kMr = 4, kNr = 6;      // tile: 24 accumulators + 4 x vectors + 1 w in registers
constexpr int64_t kNc = 128;         // panel rows: 128 x one k-block of f32 (<= 384 KB, in L2)
constexpr int64_t kMc = 120;         // m-block: its x k-slice (<= 360 KB) stays in L2 too
constexpr int64_t kPackedMinM = 32;  // below this, converting W once costs more than it saves
constexpr int64_t kPrefetchBytes = 512;  // see gemm_avx2.cpp

// dot_block (kernels_impl.h) rounded to whole 16-lane steps.
int64_t dot_block16(int64_t K) {
  constexpr int64_t kMaxBlock = 768;
  const int64_t n = (K + kMaxBlock - 1) / kMaxBlock;
  return ((K + n - 1) / n + 15) / 16 * 16;
}

inline __mmask16 tail_mask16(int n) { return __mmask16((1u << n) - 1u); }

template <DType D>
inline __m512 load16(const void* p) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  } else {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

// The first n < 16 elements at p, zeros elsewhere; masked lanes are never read.
template <DType D>
inline __m512 load16_tail(const void* p, int n) {
  if constexpr (D == DType::F32) {
    return _mm512_maskz_loadu_ps(tail_mask16(n), p);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(tail_mask16(n), p);
    if constexpr (D == DType::F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

inline __m256 fold(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

struct PanelRows {
  const float* p;
  int64_t ld;
  __m512 load(int j, int64_t k) const { return _mm512_loadu_ps(p + j * ld + k); }
  __m512 tail(int j, int64_t k, int) const { return load(j, k); }
  void prefetch(int, int64_t) const {}
};

template <DType D>
struct StoredRows {
  using Elem = std::conditional_t<D == DType::F32, float, uint16_t>;
  const Elem* p;
  int64_t ld;
  __m512 load(int j, int64_t k) const { return load16<D>(p + j * ld + k); }
  __m512 tail(int j, int64_t k, int n) const { return load16_tail<D>(p + j * ld + k, n); }
  void prefetch(int j, int64_t k) const {
    const char* a = reinterpret_cast<const char*>(p + j * ld + k) + kPrefetchBytes;
    for (size_t off = 0; off < 32 * sizeof(Elem); off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
  }
};

// One k-block of an MR x NR tile (see gemm_avx2.cpp tile), kfull a multiple of 16.
template <int MR, int NR, class Rows>
void tile(const float* x, int64_t ldx, const Rows& w, int64_t kfull, int ktail, float* y,
          int64_t ldy, bool first, const float* bias) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kfull; k += 16) {
    if (k % 32 == 0)
      for (int j = 0; j < NR; ++j) w.prefetch(j, k);
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(x + i * ldx + k);
    for (int j = 0; j < NR; ++j) {
      __m512 wv = w.load(j, k);
      // Keeps wv in a register: GCC would otherwise fold the load into each of the MR FMAs,
      // tripling the loads that bound this loop.
      __asm__("" : "+v"(wv));
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  if (ktail) {
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i)
      xv[i] = _mm512_maskz_loadu_ps(tail_mask16(ktail), x + i * ldx + kfull);
    for (int j = 0; j < NR; ++j) {
      const __m512 wv = w.tail(j, kfull, ktail);
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
    }
  }
  const __m256 z = _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i)
    for (int j0 = 0; j0 < NR; j0 += 4) {
      __m128 r = reduce4(fold(acc[i][j0]), j0 + 1 < NR ? fold(acc[i][j0 + 1]) : z,
                         j0 + 2 < NR ? fold(acc[i][j0 + 2]) : z,
                         j0 + 3 < NR ? fold(acc[i][j0 + 3]) : z);
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

// The tile kernel for a runtime shape mr in [1, 4], nr in [1, 8].
template <class Rows>
TileFn<Rows> tile_fn(int mr, int nr) {
  static constexpr std::array<std::array<TileFn<Rows>, 8>, 4> table = {
      tile_row<Rows, 1>(std::make_integer_sequence<int, 8>{}),
      tile_row<Rows, 2>(std::make_integer_sequence<int, 8>{}),
      tile_row<Rows, 3>(std::make_integer_sequence<int, 8>{}),
      tile_row<Rows, 4>(std::make_integer_sequence<int, 8>{})};
  return table[size_t(mr - 1)][size_t(nr - 1)];
}

template <DType D>
using Elem = typename StoredRows<D>::Elem;

template <DType D>
void linear_small_m(const float* x, int64_t M, int64_t K, const Elem<D>* W, int64_t N,
                    const float* bias, float* y, int64_t n0, int64_t n1) {
  const int mr_max = int(std::min<int64_t>(M, kMr));
  const int64_t kc = dot_block16(K);
  for (int64_t n = n0; n < n1; n += kNr) {
    const int nr = int(std::min<int64_t>(kNr, n1 - n));
    for (int64_t kb = 0; kb < K; kb += kc) {
      const int64_t kl = std::min(kc, K - kb);
      const StoredRows<D> rows{W + n * K + kb, K};
      const float* b = bias && kb + kl == K ? bias + n : nullptr;
      for (int64_t m = 0; m < M; m += mr_max) {
        const int mr = int(std::min<int64_t>(mr_max, M - m));
        tile_fn<StoredRows<D>>(mr, nr)(x + m * K + kb, K, rows, kl / 16 * 16, int(kl % 16),
                                       y + m * N + n, N, kb == 0, b);
      }
    }
  }
}

// Rows [n0, n1) of W, columns [k0, k0 + kl), to f32 rows of stride ld, zero-padded to 16.
template <DType D>
void convert_panel(const Elem<D>* W, int64_t K, int64_t n0, int64_t n1, int64_t k0, int64_t kl,
                   float* panel, int64_t ld) {
  for (int64_t n = n0; n < n1; ++n) {
    const Elem<D>* src = W + n * K + k0;
    float* dst = panel + (n - n0) * ld;
    int64_t k = 0;
    for (; k + 16 <= kl; k += 16) _mm512_storeu_ps(dst + k, load16<D>(src + k));
    if (k < kl) _mm512_storeu_ps(dst + k, load16_tail<D>(src + k, int(kl - k)));
  }
}

// Rows [n0, n1) of y for M >= kPackedMinM: convert(nb, ne, kb, kl, panel, ld) writes rows
// [nb, ne), inputs [kb, kb + kl) of W as f32 rows of stride ld (whatever W's layout), and every
// row of x reuses that panel.
template <class ConvertPanel>
void large_m(const float* x, int64_t M, int64_t K, int64_t N, const float* bias, float* y,
             int64_t n0, int64_t n1, const ConvertPanel& convert) {
  const int64_t kc = dot_block16(K);
  // Aligned so that no panel load splits a cache line.
  thread_local Scratch panel_buf;
  float* const panel = panel_buf.get(size_t(kNc * kc));
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
            run(mr, nr)(x + (mb + mt) * K + kb, K, rows, kl / 16 * 16, int(kl % 16),
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
    }, kNr);
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

constexpr int kR = kHalfRowsAvx512;
constexpr int64_t kGroupPrefetchBytes = 1024;  // one sequential stream: prefetch farther ahead

template <DType D>
struct GroupRows {
  const uint16_t* g;  // the row group
  int64_t k0;         // the k-block's first input (a multiple of 16)
  int row0;           // the tile's first row in the group
  bool lead;          // this tile prefetches for the whole group (its first tile)
  const uint16_t* at(int j, int64_t k) const {
    const int64_t kk = k0 + k;
    return g + (kk / kHalfChunk) * (kR * kHalfChunk) + (row0 + j) * kHalfChunk + kk % kHalfChunk;
  }
  __m512 load(int j, int64_t k) const { return load16<D>(at(j, k)); }
  __m512 tail(int j, int64_t k, int n) const { return load16_tail<D>(at(j, k), n); }
  // Called at k % 32 == 0: the two chunks of inputs k .. k+31 (16 lines for all 16 rows).
  void prefetch(int j, int64_t k) const {
    if (!lead || j != 0) return;
    const char* a = reinterpret_cast<const char*>(at(-row0, k)) + kGroupPrefetchBytes;
    for (int l = 0; l < 2 * kR * kHalfChunk * 2; l += 64) _mm_prefetch(a + l, _MM_HINT_T0);
  }
};

int64_t group_elems(int64_t K) { return (K + kHalfChunk - 1) / kHalfChunk * kHalfChunk * kR; }

template <DType D>
void grouped_small_m(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y, int64_t n0, int64_t n1) {
  const int mr_max = int(std::min<int64_t>(M, kMr));
  const int64_t kc = dot_block16(K);
  for (int64_t g0 = n0; g0 < n1; g0 += kR) {
    const uint16_t* g = W + (g0 / kR) * group_elems(K);
    const int rows = int(std::min<int64_t>(kR, n1 - g0));
    for (int64_t kb = 0; kb < K; kb += kc) {
      const int64_t kl = std::min(kc, K - kb);
      const float* b = bias && kb + kl == K ? bias + g0 : nullptr;
      if (M == 1 && rows == kR) {  // the whole group in one pass: one sequential stream
        tile<1, kR, GroupRows<D>>(x + kb, K, GroupRows<D>{g, kb, 0, true}, kl / 16 * 16,
                                  int(kl % 16), y + g0, N, kb == 0, b);
        continue;
      }
      for (int j0 = 0; j0 < rows; j0 += kNr) {
        const int nr = std::min(kNr, rows - j0);
        const GroupRows<D> w{g, kb, j0, j0 == 0};
        for (int64_t m = 0; m < M; m += mr_max) {
          const int mr = int(std::min<int64_t>(mr_max, M - m));
          tile_fn<GroupRows<D>>(mr, nr)(x + m * K + kb, K, w, kl / 16 * 16, int(kl % 16),
                                        y + m * N + g0 + j0, N, kb == 0, b ? b + j0 : nullptr);
        }
      }
    }
  }
}

// Rows [n0, n1) (n0 a multiple of kR), inputs [k0, k0 + kl), to f32 rows of stride ld; a
// group stores zeros past K, so whole chunks are converted.
template <DType D>
void convert_group_panel(const uint16_t* W, int64_t K, int64_t n0, int64_t n1, int64_t k0,
                         int64_t kl, float* panel, int64_t ld) {
  for (int64_t g0 = n0; g0 < n1; g0 += kR) {
    const uint16_t* g = W + (g0 / kR) * group_elems(K);
    const int rows = int(std::min<int64_t>(kR, n1 - g0));
    for (int64_t k = 0; k < kl; k += kHalfChunk) {
      const uint16_t* chunk = g + ((k0 + k) / kHalfChunk) * (kR * kHalfChunk);
      for (int r = 0; r < rows; ++r)
        _mm512_storeu_ps(panel + (g0 - n0 + r) * ld + k, load16<D>(chunk + r * kHalfChunk));
    }
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

}  // namespace medrt::cpu::avx512
