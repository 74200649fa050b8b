// AVX-512 + VNNI row-group kernel of the quantized types (int8, nf4, int4): one zmm of int32
// lanes is the 16 rows of a row group (quant_layout.h), so each vpdpbusd multiplies 4 inputs
// of all 16 rows by the same 4 broadcast activation codes and the arithmetic per row is the
// scalar one of quant_portable.cpp, bit for bit. vpdpbusd wants unsigned weights: 4-bit codes
// are 0..15 already; int8 codes and the nf4 table get +128 (xor 0x80 / a biased table) and
// the block's 128 * sum(a) is subtracted from the exact int32 dot product.
//
// Compiled with AVX-512 flags: internal linkage only and no standard-library code (see
// gemm_avx512.cpp).
#include <immintrin.h>

// GCC 12's avx512fintrin.h trips -Wuninitialized on its own "undefined vector" idiom once
// inlined (GCC bug 105593, fixed in GCC 13); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstring>

#include "kernels/quant_layout.h"

namespace medrt::cpu::quant::avx512vnni {
namespace {

// Activation rows per tile: 8 x (isum, acc) + one unpacked weight unit fit the 32 registers,
// and a block's weights are unpacked once per 8 rows.
constexpr int kMaxTile = 8;

inline __m512 f16x16(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Activation rows m .. m + MR - 1 against RG consecutive row groups starting at rg (RG = 2
// for one or two rows: the activation broadcasts are then shared by 32 output rows).
// nvalid[r]: valid rows of row group r.
template <Kind K, int MR, int RG>
void tile(const Layout& L, const uint8_t* rg, const Act& a, int64_t m, float* y, int64_t ldy,
          const int* nvalid, const float* bias) {
  constexpr bool kInt8 = K == Kind::Int8Row || K == Kind::Int8Group;
  constexpr bool kBiased = kInt8 || K == Kind::Nf4;  // weights carried as u8 = w + 128
  const int64_t kp = a.nb * kBlock;
  const int8_t* xq[MR];
  const ActBlock* xb[MR];
  __m512 acc[RG][MR];
  for (int i = 0; i < MR; ++i) {
    xq[i] = a.codes + (m + i) * kp;
    xb[i] = a.blocks + (m + i) * a.nb;
    for (int r = 0; r < RG; ++r) acc[r][i] = _mm512_setzero_ps();
  }
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  alignas(16) int8_t biased[16];
  for (int c = 0; c < 16; ++c) biased[c] = int8_t(kNf4Int8[c] ^ 0x80);
  const __m512i lut = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<__m128i*>(biased)));

  for (int64_t g = 0; g < L.ngroups; ++g) {
    const uint8_t* gh[RG];
    __m512 s[RG], zm[RG];
    for (int r = 0; r < RG; ++r) {
      gh[r] = rg + r * L.rowgroup_bytes + g * L.group_bytes;
      s[r] = zm[r] = _mm512_setzero_ps();
      if constexpr (K != Kind::Int8Row) s[r] = f16x16(gh[r]);
      if constexpr (K == Kind::Int4Zero || K == Kind::Int4Min) zm[r] = f16x16(gh[r] + kRows * 2);
    }
    for (int64_t j = 0; j < L.gb; ++j) {
      const int64_t b = g * L.gb + j;
      __m512i isum[RG][MR];
      for (int r = 0; r < RG; ++r)
        for (int i = 0; i < MR; ++i) isum[r][i] = _mm512_setzero_si512();
      if constexpr (kInt8) {
        for (int q = 0; q < 8; ++q) {
          __m512i w[RG];
          for (int r = 0; r < RG; ++r)
            w[r] = _mm512_xor_si512(
                _mm512_loadu_si512(gh[r] + L.group_header + j * L.block_bytes + q * 64), flip);
          for (int i = 0; i < MR; ++i) {
            const __m512i x = bcast4(xq[i] + b * kBlock + 4 * q);
            for (int r = 0; r < RG; ++r) isum[r][i] = _mm512_dpbusd_epi32(isum[r][i], w[r], x);
          }
        }
      } else {
        for (int u = 0; u < 4; ++u) {
          __m512i lo[RG], hi[RG];
          for (int r = 0; r < RG; ++r) {
            const __m512i v =
                _mm512_loadu_si512(gh[r] + L.group_header + j * L.block_bytes + u * 64);
            lo[r] = _mm512_and_si512(v, nibble);
            hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            if constexpr (K == Kind::Nf4) {
              lo[r] = _mm512_shuffle_epi8(lut, lo[r]);
              hi[r] = _mm512_shuffle_epi8(lut, hi[r]);
            }
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* xp = xq[i] + b * kBlock + 4 * u;
            const __m512i xl = bcast4(xp), xh = bcast4(xp + 16);
            for (int r = 0; r < RG; ++r) {
              isum[r][i] = _mm512_dpbusd_epi32(isum[r][i], lo[r], xl);
              isum[r][i] = _mm512_dpbusd_epi32(isum[r][i], hi[r], xh);
            }
          }
        }
      }
      for (int i = 0; i < MR; ++i) {
        const ActBlock& ab = xb[i][b];
        const __m512 d = _mm512_set1_ps(ab.d);
        for (int r = 0; r < RG; ++r) {
          __m512i is = isum[r][i];
          if constexpr (kBiased) is = _mm512_sub_epi32(is, _mm512_set1_epi32(ab.qsum * 128));
          const __m512 fi = _mm512_cvtepi32_ps(is);
          if constexpr (K == Kind::Int8Row) {
            acc[r][i] = _mm512_fmadd_ps(fi, d, acc[r][i]);
          } else if constexpr (K == Kind::Int4Zero) {
            const __m512 t = _mm512_fnmadd_ps(zm[r], _mm512_set1_ps(ab.sum), fi);
            acc[r][i] = _mm512_fmadd_ps(t, _mm512_mul_ps(s[r], d), acc[r][i]);
          } else {
            acc[r][i] = _mm512_fmadd_ps(fi, _mm512_mul_ps(s[r], d), acc[r][i]);
            if constexpr (K == Kind::Int4Min)
              acc[r][i] = _mm512_fmadd_ps(zm[r], _mm512_set1_ps(ab.dsum), acc[r][i]);
          }
        }
      }
    }
  }

  for (int r = 0; r < RG; ++r) {
    const __mmask16 valid = __mmask16((1u << nvalid[r]) - 1u);
    const float* br = bias ? bias + r * kRows : nullptr;
    const __m512 bv = br ? _mm512_maskz_loadu_ps(valid, br) : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i) {
      __m512 v = acc[r][i];
      if constexpr (K == Kind::Int8Row || K == Kind::Nf4) {
        const __m512 post =
            K == Kind::Nf4
                ? _mm512_set1_ps(kInv127)
                : _mm512_loadu_ps(reinterpret_cast<const float*>(rg + r * L.rowgroup_bytes));
        v = br ? _mm512_fmadd_ps(v, post, bv) : _mm512_mul_ps(v, post);
      } else if (br) {
        v = _mm512_add_ps(v, bv);
      }
      _mm512_mask_storeu_ps(y + (m + i) * ldy + r * kRows, valid, v);
    }
  }
}

template <Kind K, int RG>
void rows(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
          int64_t ldy, const int* nvalid, const float* bias) {
  int64_t m = m0;
  for (; m + kMaxTile <= m1; m += kMaxTile)
    tile<K, kMaxTile, 1>(L, rg, a, m, y, ldy, nvalid, bias);
  switch (m1 - m) {
    case 7: return tile<K, 7, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    case 6: return tile<K, 6, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    case 5: return tile<K, 5, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    case 4: return tile<K, 4, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    case 3: return tile<K, 3, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    case 2: return tile<K, 2, RG>(L, rg, a, m, y, ldy, nvalid, bias);
    case 1: return tile<K, 1, RG>(L, rg, a, m, y, ldy, nvalid, bias);
    default: return;
  }
}

// Row groups [0, nrg) from rg: pairs of them while there are two left and at most two rows.
template <Kind K>
void groups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
            int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias) {
  for (int64_t g = 0; g < nrg;) {
    const int64_t r0 = g * kRows;
    int nvalid[2];
    for (int r = 0; r < 2; ++r) {
      const int64_t left = nrows - r0 - r * kRows;
      nvalid[r] = int(left < kRows ? (left > 0 ? left : 0) : kRows);
    }
    const float* b = bias ? bias + r0 : nullptr;
    if (m1 - m0 <= 2 && g + 1 < nrg) {
      rows<K, 2>(L, rg + g * L.rowgroup_bytes, a, m0, m1, y + r0, ldy, nvalid, b);
      g += 2;
    } else {
      rows<K, 1>(L, rg + g * L.rowgroup_bytes, a, m0, m1, y + r0, ldy, nvalid, b);
      g += 1;
    }
  }
}

}  // namespace

void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias) {
  switch (L.kind) {
    case Kind::Int8Row: return groups<Kind::Int8Row>(L, rg, nrg, a, m0, m1, y, ldy, nrows, bias);
    case Kind::Int8Group:
      return groups<Kind::Int8Group>(L, rg, nrg, a, m0, m1, y, ldy, nrows, bias);
    case Kind::Nf4: return groups<Kind::Nf4>(L, rg, nrg, a, m0, m1, y, ldy, nrows, bias);
    case Kind::Int4Zero:
      return groups<Kind::Int4Zero>(L, rg, nrg, a, m0, m1, y, ldy, nrows, bias);
    case Kind::Int4Min: return groups<Kind::Int4Min>(L, rg, nrg, a, m0, m1, y, ldy, nrows, bias);
  }
}

}  // namespace medrt::cpu::quant::avx512vnni
