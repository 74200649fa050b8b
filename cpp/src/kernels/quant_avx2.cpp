// AVX2 row-group kernel of the quantized types (int8, nf4, int4), also used on AVX-512 CPUs
// without VNNI. A ymm of int32 lanes is 8 rows of a row group (quant_layout.h); the group's
// two halves are computed one after the other (the second reads the row group from L2). The
// 4-input dot products are vpmaddubsw (u8 x s8 -> s16 pairs) and vpmaddwd by ones; the
// arithmetic per row is the scalar one of quant_portable.cpp, bit for bit, because the int32
// block sums are exact:
//   int4:      codes 0..15 are the unsigned operand; a pair is at most 2 * 15 * 127 = 3810 in
//              magnitude, so the 8 pairs of a block add up in int16 (<= 30480) before one
//              vpmaddwd.
//   int8, nf4: signed weights: |w| (vpabsb) times a with w's sign (vpsignb); a pair is at most
//              2 * 128 * 127 = 32512, so each goes through vpmaddwd at once.
//
// Compiled with AVX2 flags: internal linkage only and no standard-library code (see
// gemm_avx512.cpp).
#include <immintrin.h>

#include <cstring>

#include "kernels/quant_layout.h"

namespace medrt::cpu::quant::avx2 {
namespace {

constexpr int kMaxTile = 4;  // activation rows per tile: 4 x (isum, acc) + weights in registers
constexpr int kHalf = 8;

inline __m256 f16x8(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i signed_dot4(__m256i abs_w, __m256i w, __m256i x, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w)), ones);
}

// Rows [8h, 8h + 8) of the row group for activation rows m .. m + MR - 1.
template <Kind K, int MR>
void tile(const Layout& L, const uint8_t* rg, int h, const Act& a, int64_t m, float* y,
          int64_t ldy, int nvalid, const float* bias) {
  const int64_t kp = a.nb * kBlock;
  const int8_t* xq[MR];
  const ActBlock* xb[MR];
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) {
    xq[i] = a.codes + (m + i) * kp;
    xb[i] = a.blocks + (m + i) * a.nb;
    acc[i] = _mm256_setzero_ps();
  }
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i lut = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)));

  for (int64_t g = 0; g < L.ngroups; ++g) {
    const uint8_t* gh = rg + g * L.group_bytes + h * kHalf * 2;
    const uint8_t* codes = rg + g * L.group_bytes + L.group_header + h * 32;
    __m256 s = _mm256_setzero_ps(), zm = _mm256_setzero_ps();
    if constexpr (K != Kind::Int8Row) s = f16x8(gh);
    if constexpr (K == Kind::Int4Zero || K == Kind::Int4Min) zm = f16x8(gh + kRows * 2);
    for (int64_t j = 0; j < L.gb; ++j) {
      const int64_t b = g * L.gb + j;
      const uint8_t* blk = codes + j * L.block_bytes;
      __m256i isum[MR];
      if constexpr (K == Kind::Int8Row || K == Kind::Int8Group) {
        for (int i = 0; i < MR; ++i) isum[i] = _mm256_setzero_si256();
        for (int q = 0; q < 8; ++q) {
          const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q * 64));
          const __m256i aw = _mm256_abs_epi8(w);
          for (int i = 0; i < MR; ++i)
            isum[i] = _mm256_add_epi32(
                isum[i], signed_dot4(aw, w, bcast4(xq[i] + b * kBlock + 4 * q), ones));
        }
      } else if constexpr (K == Kind::Nf4) {
        for (int i = 0; i < MR; ++i) isum[i] = _mm256_setzero_si256();
        for (int u = 0; u < 4; ++u) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + u * 64));
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nibble));
          const __m256i hi =
              _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
          const __m256i alo = _mm256_abs_epi8(lo), ahi = _mm256_abs_epi8(hi);
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            isum[i] = _mm256_add_epi32(isum[i], signed_dot4(alo, lo, bcast4(x), ones));
            isum[i] = _mm256_add_epi32(isum[i], signed_dot4(ahi, hi, bcast4(x + 16), ones));
          }
        }
      } else {
        __m256i s16[MR];
        for (int i = 0; i < MR; ++i) s16[i] = _mm256_setzero_si256();
        for (int u = 0; u < 4; ++u) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + u * 64));
          const __m256i lo = _mm256_and_si256(v, nibble);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(lo, bcast4(x)));
            s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(hi, bcast4(x + 16)));
          }
        }
        for (int i = 0; i < MR; ++i) isum[i] = _mm256_madd_epi16(s16[i], ones);
      }
      for (int i = 0; i < MR; ++i) {
        const ActBlock& ab = xb[i][b];
        const __m256 fi = _mm256_cvtepi32_ps(isum[i]);
        const __m256 d = _mm256_set1_ps(ab.d);
        if constexpr (K == Kind::Int8Row) {
          acc[i] = _mm256_fmadd_ps(fi, d, acc[i]);
        } else if constexpr (K == Kind::Int4Zero) {
          const __m256 t = _mm256_fnmadd_ps(zm, _mm256_set1_ps(ab.sum), fi);
          acc[i] = _mm256_fmadd_ps(t, _mm256_mul_ps(s, d), acc[i]);
        } else {
          acc[i] = _mm256_fmadd_ps(fi, _mm256_mul_ps(s, d), acc[i]);
          if constexpr (K == Kind::Int4Min)
            acc[i] = _mm256_fmadd_ps(zm, _mm256_set1_ps(ab.dsum), acc[i]);
        }
      }
    }
  }

  alignas(32) float bias8[kHalf] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (bias) std::memcpy(bias8, bias + h * kHalf, size_t(nvalid) * sizeof(float));
  const __m256 bv = _mm256_load_ps(bias8);
  for (int i = 0; i < MR; ++i) {
    __m256 r = acc[i];
    if constexpr (K == Kind::Int8Row || K == Kind::Nf4) {
      const __m256 post = K == Kind::Nf4
                              ? _mm256_set1_ps(kInv127)
                              : _mm256_loadu_ps(reinterpret_cast<const float*>(rg) + h * kHalf);
      r = bias ? _mm256_fmadd_ps(r, post, bv) : _mm256_mul_ps(r, post);
    } else if (bias) {
      r = _mm256_add_ps(r, bv);
    }
    float* out = y + (m + i) * ldy + h * kHalf;
    if (nvalid == kHalf) {
      _mm256_storeu_ps(out, r);
    } else {
      alignas(32) float lanes[kHalf];
      _mm256_store_ps(lanes, r);
      std::memcpy(out, lanes, size_t(nvalid) * sizeof(float));
    }
  }
}

template <Kind K>
void rows(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
          int64_t ldy, int nvalid, const float* bias) {
  for (int h = 0; h < 2; ++h) {
    const int nh = nvalid - h * kHalf > kHalf ? kHalf : nvalid - h * kHalf;
    if (nh <= 0) return;
    int64_t m = m0;
    for (; m + kMaxTile <= m1; m += kMaxTile)
      tile<K, kMaxTile>(L, rg, h, a, m, y, ldy, nh, bias);
    switch (m1 - m) {
      case 3: tile<K, 3>(L, rg, h, a, m, y, ldy, nh, bias); break;
      case 2: tile<K, 2>(L, rg, h, a, m, y, ldy, nh, bias); break;
      case 1: tile<K, 1>(L, rg, h, a, m, y, ldy, nh, bias); break;
      default: break;
    }
  }
}

}  // namespace

void quant_rowgroup(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1,
                    float* y, int64_t ldy, int nvalid, const float* bias) {
  switch (L.kind) {
    case Kind::Int8Row: return rows<Kind::Int8Row>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int8Group: return rows<Kind::Int8Group>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Nf4: return rows<Kind::Nf4>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int4Zero: return rows<Kind::Int4Zero>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int4Min: return rows<Kind::Int4Min>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
  }
}

}  // namespace medrt::cpu::quant::avx2
