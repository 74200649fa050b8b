// AVX-512 + VNNI row-group kernel of the quantized types (int8, nf4, int4, int6): one zmm of int32
// lanes is the 16 rows of a row group (quant_layout.h), so each vpdpbusd multiplies 4 inputs
// of all 16 rows by the same 4 broadcast activation codes and the arithmetic per row is the
// scalar one of quant_portable.cpp, bit for bit. vpdpbusd wants unsigned weights: 4-bit codes
// are 0..15 already, int6 codes 0..63; int8 codes and the nf4 table get +128 (xor 0x80 / a
// biased table) and the block's 128 * sum(a) is subtracted from the exact int32 dot product.
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

template <Kind K, int MR>
void tile(const Layout& L, const uint8_t* rg, const Act& a, int64_t m, float* y, int64_t ldy,
          int nvalid, const float* bias) {
  constexpr bool kInt8 = K == Kind::Int8Row || K == Kind::Int8Group;
  constexpr bool kBiased = kInt8 || K == Kind::Nf4;  // weights carried as u8 = w + 128
  const int64_t kp = a.nb * kBlock;
  const int8_t* xq[MR];
  const ActBlock* xb[MR];
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) {
    xq[i] = a.codes + (m + i) * kp;
    xb[i] = a.blocks + (m + i) * a.nb;
    acc[i] = _mm512_setzero_ps();
  }
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m512i high = _mm512_set1_epi8(0x30);
  alignas(16) int8_t biased[16];
  for (int c = 0; c < 16; ++c) biased[c] = int8_t(kNf4Int8[c] ^ 0x80);
  const __m512i lut = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<__m128i*>(biased)));

  for (int64_t g = 0; g < L.ngroups; ++g) {
    const uint8_t* gh = group_header_at(rg, L, g);
    const uint8_t* codes = group_codes_at(rg, L, g);
    __m512 s = _mm512_setzero_ps(), zm = _mm512_setzero_ps();
    if constexpr (K != Kind::Int8Row) s = f16x16(gh);
    if constexpr (K == Kind::Int4Zero || K == Kind::Int4Min) zm = f16x16(gh + kRows * 2);
    if constexpr (K == Kind::Int6) zm = _mm512_set1_ps(float(kInt6Zero));
    for (int64_t j = 0; j < L.gb; ++j) {
      const int64_t b = g * L.gb + j;
      const uint8_t* blk = codes + j * L.block_bytes;
      __m512i isum[MR];
      for (int i = 0; i < MR; ++i) isum[i] = _mm512_setzero_si512();
      if constexpr (kInt8) {
        for (int q = 0; q < 8; ++q) {
          const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(blk + q * 64), flip);
          for (int i = 0; i < MR; ++i)
            isum[i] = _mm512_dpbusd_epi32(isum[i], w, bcast4(xq[i] + b * kBlock + 4 * q));
        }
      } else {
        for (int u = 0; u < 4; ++u) {
          const __m512i v = _mm512_loadu_si512(blk + u * 64);
          __m512i lo = _mm512_and_si512(v, nibble);
          __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
          if constexpr (K == Kind::Nf4) {
            lo = _mm512_shuffle_epi8(lut, lo);
            hi = _mm512_shuffle_epi8(lut, hi);
          }
          if constexpr (K == Kind::Int6) {  // or in the high bits: quant_avx2.cpp explains
            const __m512i h = _mm512_loadu_si512(blk + kHighBits + (u / 2) * 64);
            const __m512i hl = u % 2 ? h : _mm512_slli_epi16(h, 4);
            const __m512i hh = u % 2 ? _mm512_srli_epi16(h, 2) : _mm512_slli_epi16(h, 2);
            lo = _mm512_or_si512(lo, _mm512_and_si512(hl, high));
            hi = _mm512_or_si512(hi, _mm512_and_si512(hh, high));
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            isum[i] = _mm512_dpbusd_epi32(isum[i], lo, bcast4(x));
            isum[i] = _mm512_dpbusd_epi32(isum[i], hi, bcast4(x + 16));
          }
        }
      }
      for (int i = 0; i < MR; ++i) {
        const ActBlock& ab = xb[i][b];
        if constexpr (kBiased)
          isum[i] = _mm512_sub_epi32(isum[i], _mm512_set1_epi32(ab.qsum * 128));
        const __m512 fi = _mm512_cvtepi32_ps(isum[i]);
        const __m512 d = _mm512_set1_ps(ab.d);
        if constexpr (K == Kind::Int8Row) {
          acc[i] = _mm512_fmadd_ps(fi, d, acc[i]);
        } else if constexpr (K == Kind::Int4Zero || K == Kind::Int6) {
          const __m512 t = _mm512_fnmadd_ps(zm, _mm512_set1_ps(ab.sum), fi);
          acc[i] = _mm512_fmadd_ps(t, _mm512_mul_ps(s, d), acc[i]);
        } else {
          acc[i] = _mm512_fmadd_ps(fi, _mm512_mul_ps(s, d), acc[i]);
          if constexpr (K == Kind::Int4Min)
            acc[i] = _mm512_fmadd_ps(zm, _mm512_set1_ps(ab.dsum), acc[i]);
        }
      }
    }
  }

  const __mmask16 valid = __mmask16((1u << nvalid) - 1u);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(valid, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) {
    __m512 r = acc[i];
    if constexpr (K == Kind::Int8Row || K == Kind::Nf4) {
      const __m512 post = K == Kind::Nf4
                              ? _mm512_set1_ps(kInv127)
                              : _mm512_loadu_ps(reinterpret_cast<const float*>(rg));
      r = bias ? _mm512_fmadd_ps(r, post, b) : _mm512_mul_ps(r, post);
    } else if (bias) {
      r = _mm512_add_ps(r, b);
    }
    _mm512_mask_storeu_ps(y + (m + i) * ldy, valid, r);
  }
}

template <Kind K>
void rows(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
          int64_t ldy, int nvalid, const float* bias) {
  int64_t m = m0;
  for (; m + kMaxTile <= m1; m += kMaxTile) tile<K, kMaxTile>(L, rg, a, m, y, ldy, nvalid, bias);
  switch (m1 - m) {
    case 7: return tile<K, 7>(L, rg, a, m, y, ldy, nvalid, bias);
    case 6: return tile<K, 6>(L, rg, a, m, y, ldy, nvalid, bias);
    case 5: return tile<K, 5>(L, rg, a, m, y, ldy, nvalid, bias);
    case 4: return tile<K, 4>(L, rg, a, m, y, ldy, nvalid, bias);
    case 3: return tile<K, 3>(L, rg, a, m, y, ldy, nvalid, bias);
    case 2: return tile<K, 2>(L, rg, a, m, y, ldy, nvalid, bias);
    case 1: return tile<K, 1>(L, rg, a, m, y, ldy, nvalid, bias);
    default: return;
  }
}

void rowgroup(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
              int64_t ldy, int nvalid, const float* bias) {
  switch (L.kind) {
    case Kind::Int8Row: return rows<Kind::Int8Row>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int8Group: return rows<Kind::Int8Group>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Nf4: return rows<Kind::Nf4>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int4Zero: return rows<Kind::Int4Zero>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int4Min: return rows<Kind::Int4Min>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
    case Kind::Int6: return rows<Kind::Int6>(L, rg, a, m0, m1, y, ldy, nvalid, bias);
  }
}

}  // namespace

// Row group after row group: one sequential stream per thread. (Running two row groups at
// once to share the activation broadcasts is 12% faster in cache but 2.5x slower streaming
// from memory on Zen 4: the two interleaved streams defeat the hardware prefetcher.)
void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias) {
  for (int64_t g = 0; g < nrg; ++g) {
    const int64_t r0 = g * kRows;
    const int nvalid = int(nrows - r0 < kRows ? nrows - r0 : kRows);
    rowgroup(L, rg + g * L.rowgroup_bytes, a, m0, m1, y + r0, ldy, nvalid,
             bias ? bias + r0 : nullptr);
  }
}

}  // namespace medrt::cpu::quant::avx512vnni
