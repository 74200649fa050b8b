// AVX2 row-group kernel of the quantized types (int8, nf4, int4, int6), also used on AVX-512 CPUs
// without VNNI. A ymm of int32 lanes is 8 rows of a row group (quant_layout.h); a single
// activation row runs against both halves at once, tiles of more rows against one half after
// the other (the second reads the row group from L1/L2). The
// 4-input dot products are vpmaddubsw (u8 x s8 -> s16 pairs) and vpmaddwd by ones; the
// arithmetic per row is the scalar one of quant_portable.cpp, bit for bit, because the int32
// block sums are exact:
//   int4:      codes 0..15 are the unsigned operand; a pair is at most 2 * 15 * 127 = 3810 in
//              magnitude, so the 8 pairs of a block add up in int16 (<= 30480) before one
//              vpmaddwd.
//   int6:      codes 0..63 (the high bits or-ed in above the nibbles) are the unsigned
//              operand; a pair is at most 2 * 63 * 127 = 16002, so the two vpmaddubsw of a
//              unit (lo and hi nibble lanes) add up in int16 (<= 32004) before one vpmaddwd.
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

// Keeps v in a register at this point of the loop. Without it GCC hoists every product of the
// unrolled block ahead of the sums (integer adds reassociate) and spills most of them to the
// stack: about 30 stores and reloads per block and tile.
inline void pin(__m256i& v) { __asm__("" : "+x"(v)); }

inline __m256i signed_dot4(__m256i abs_w, __m256i w, __m256i x, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w)), ones);
}

// Rows [8h, 8h + 8) of the row group, h = h0 .. h0 + NH - 1, for activation rows
// m .. m + MR - 1 (NH = 2 for a single row: both halves share its activation broadcasts).
// nvalid[r]: valid rows of half h0 + r.
template <Kind K, int MR, int NH>
void tile(const Layout& L, const uint8_t* rg, int h0, const Act& a, int64_t m, float* y,
          int64_t ldy, const int* nvalid, const float* bias) {
  const int64_t kp = a.nb * kBlock;
  const int8_t* xq[MR];
  const ActBlock* xb[MR];
  __m256 acc[NH][MR];
  for (int i = 0; i < MR; ++i) {
    xq[i] = a.codes + (m + i) * kp;
    xb[i] = a.blocks + (m + i) * a.nb;
    for (int r = 0; r < NH; ++r) acc[r][i] = _mm256_setzero_ps();
  }
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i lut = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)));

  for (int64_t g = 0; g < L.ngroups; ++g) {
    const uint8_t* gh = group_header_at(rg, L, g);
    const uint8_t* codes = group_codes_at(rg, L, g) + h0 * 32;
    __m256 s[NH], zm[NH];
    for (int r = 0; r < NH; ++r) {
      s[r] = zm[r] = _mm256_setzero_ps();
      if constexpr (K != Kind::Int8Row) s[r] = f16x8(gh + (h0 + r) * kHalf * 2);
      if constexpr (K == Kind::Int4Zero || K == Kind::Int4Min)
        zm[r] = f16x8(gh + kRows * 2 + (h0 + r) * kHalf * 2);
      if constexpr (K == Kind::Int6) zm[r] = _mm256_set1_ps(float(kInt6Zero));
    }
    for (int64_t j = 0; j < L.gb; ++j) {
      const int64_t b = g * L.gb + j;
      const uint8_t* blk = codes + j * L.block_bytes;
      __m256i isum[NH][MR];
      if constexpr (K == Kind::Int8Row || K == Kind::Int8Group) {
        for (int r = 0; r < NH; ++r)
          for (int i = 0; i < MR; ++i) isum[r][i] = _mm256_setzero_si256();
        for (int q = 0; q < 8; ++q) {
          __m256i w[NH], aw[NH];
          for (int r = 0; r < NH; ++r) {
            w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q * 64 + r * 32));
            aw[r] = _mm256_abs_epi8(w[r]);
          }
          for (int i = 0; i < MR; ++i) {
            const __m256i x = bcast4(xq[i] + b * kBlock + 4 * q);
            for (int r = 0; r < NH; ++r) {
              isum[r][i] = _mm256_add_epi32(isum[r][i], signed_dot4(aw[r], w[r], x, ones));
              pin(isum[r][i]);
            }
          }
        }
      } else if constexpr (K == Kind::Nf4) {
        for (int r = 0; r < NH; ++r)
          for (int i = 0; i < MR; ++i) isum[r][i] = _mm256_setzero_si256();
        for (int u = 0; u < 4; ++u) {
          __m256i lo[NH], hi[NH], alo[NH], ahi[NH];
          for (int r = 0; r < NH; ++r) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + u * 64 + r * 32));
            lo[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, nibble));
            hi[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
            alo[r] = _mm256_abs_epi8(lo[r]);
            ahi[r] = _mm256_abs_epi8(hi[r]);
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            const __m256i xl = bcast4(x), xh = bcast4(x + 16);
            for (int r = 0; r < NH; ++r) {
              isum[r][i] = _mm256_add_epi32(isum[r][i], signed_dot4(alo[r], lo[r], xl, ones));
              isum[r][i] = _mm256_add_epi32(isum[r][i], signed_dot4(ahi[r], hi[r], xh, ones));
              pin(isum[r][i]);
            }
          }
        }
      } else if constexpr (K == Kind::Int6) {
        const __m256i high = _mm256_set1_epi8(0x30);
        for (int r = 0; r < NH; ++r)
          for (int i = 0; i < MR; ++i) isum[r][i] = _mm256_setzero_si256();
        for (int u = 0; u < 4; ++u) {
          __m256i lo[NH], hi[NH];
          for (int r = 0; r < NH; ++r) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + u * 64 + r * 32));
            const __m256i h = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(blk + kHighBits + (u / 2) * 64 + r * 32));
            // Fields 2 (u % 2) and 2 (u % 2) + 1 of h to bits 4-5 (16-bit shifts; the bits
            // that cross into the neighbouring byte are masked off).
            const __m256i hl = u % 2 ? h : _mm256_slli_epi16(h, 4);
            const __m256i hh = u % 2 ? _mm256_srli_epi16(h, 2) : _mm256_slli_epi16(h, 2);
            lo[r] = _mm256_or_si256(_mm256_and_si256(v, nibble), _mm256_and_si256(hl, high));
            hi[r] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), nibble),
                                    _mm256_and_si256(hh, high));
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            const __m256i xl = bcast4(x), xh = bcast4(x + 16);
            for (int r = 0; r < NH; ++r) {
              const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[r], xl),
                                                   _mm256_maddubs_epi16(hi[r], xh));
              isum[r][i] = _mm256_add_epi32(isum[r][i], _mm256_madd_epi16(s16, ones));
              pin(isum[r][i]);
            }
          }
        }
      } else {
        __m256i s16[NH][MR];
        for (int r = 0; r < NH; ++r)
          for (int i = 0; i < MR; ++i) s16[r][i] = _mm256_setzero_si256();
        for (int u = 0; u < 4; ++u) {
          __m256i lo[NH], hi[NH];
          for (int r = 0; r < NH; ++r) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + u * 64 + r * 32));
            lo[r] = _mm256_and_si256(v, nibble);
            hi[r] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
          }
          for (int i = 0; i < MR; ++i) {
            const int8_t* x = xq[i] + b * kBlock + 4 * u;
            const __m256i xl = bcast4(x), xh = bcast4(x + 16);
            for (int r = 0; r < NH; ++r) {
              s16[r][i] = _mm256_add_epi16(s16[r][i], _mm256_maddubs_epi16(lo[r], xl));
              s16[r][i] = _mm256_add_epi16(s16[r][i], _mm256_maddubs_epi16(hi[r], xh));
              pin(s16[r][i]);
            }
          }
        }
        for (int r = 0; r < NH; ++r)
          for (int i = 0; i < MR; ++i) isum[r][i] = _mm256_madd_epi16(s16[r][i], ones);
      }
      for (int i = 0; i < MR; ++i) {
        const ActBlock& ab = xb[i][b];
        const __m256 d = _mm256_set1_ps(ab.d);
        for (int r = 0; r < NH; ++r) {
          const __m256 fi = _mm256_cvtepi32_ps(isum[r][i]);
          if constexpr (K == Kind::Int8Row) {
            acc[r][i] = _mm256_fmadd_ps(fi, d, acc[r][i]);
          } else if constexpr (K == Kind::Int4Zero || K == Kind::Int6) {
            const __m256 t = _mm256_fnmadd_ps(zm[r], _mm256_set1_ps(ab.sum), fi);
            acc[r][i] = _mm256_fmadd_ps(t, _mm256_mul_ps(s[r], d), acc[r][i]);
          } else {
            acc[r][i] = _mm256_fmadd_ps(fi, _mm256_mul_ps(s[r], d), acc[r][i]);
            if constexpr (K == Kind::Int4Min)
              acc[r][i] = _mm256_fmadd_ps(zm[r], _mm256_set1_ps(ab.dsum), acc[r][i]);
          }
        }
      }
    }
  }

  for (int r = 0; r < NH; ++r) {
    const int h = h0 + r;
    alignas(32) float bias8[kHalf] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (bias) std::memcpy(bias8, bias + h * kHalf, size_t(nvalid[r]) * sizeof(float));
    const __m256 bv = _mm256_load_ps(bias8);
    for (int i = 0; i < MR; ++i) {
      __m256 v = acc[r][i];
      if constexpr (K == Kind::Int8Row || K == Kind::Nf4) {
        const __m256 post = K == Kind::Nf4
                                ? _mm256_set1_ps(kInv127)
                                : _mm256_loadu_ps(reinterpret_cast<const float*>(rg) + h * kHalf);
        v = bias ? _mm256_fmadd_ps(v, post, bv) : _mm256_mul_ps(v, post);
      } else if (bias) {
        v = _mm256_add_ps(v, bv);
      }
      float* out = y + (m + i) * ldy + h * kHalf;
      if (nvalid[r] == kHalf) {
        _mm256_storeu_ps(out, v);
      } else {
        alignas(32) float lanes[kHalf];
        _mm256_store_ps(lanes, v);
        std::memcpy(out, lanes, size_t(nvalid[r]) * sizeof(float));
      }
    }
  }
}

template <Kind K>
void rows(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
          int64_t ldy, int nvalid, const float* bias) {
  int nh[2];
  for (int h = 0; h < 2; ++h) {
    const int left = nvalid - h * kHalf;
    nh[h] = left > kHalf ? kHalf : left > 0 ? left : 0;
  }
  if (m1 - m0 == 1 && nh[1] > 0) return tile<K, 1, 2>(L, rg, 0, a, m0, y, ldy, nh, bias);
  for (int h = 0; h < 2 && nh[h] > 0; ++h) {
    int64_t m = m0;
    for (; m + kMaxTile <= m1; m += kMaxTile)
      tile<K, kMaxTile, 1>(L, rg, h, a, m, y, ldy, nh + h, bias);
    switch (m1 - m) {
      case 3: tile<K, 3, 1>(L, rg, h, a, m, y, ldy, nh + h, bias); break;
      case 2: tile<K, 2, 1>(L, rg, h, a, m, y, ldy, nh + h, bias); break;
      case 1: tile<K, 1, 1>(L, rg, h, a, m, y, ldy, nh + h, bias); break;
      default: break;
    }
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

void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias) {
  for (int64_t g = 0; g < nrg; ++g) {
    const int64_t r0 = g * kRows;
    const int nvalid = int(nrows - r0 < kRows ? nrows - r0 : kRows);
    rowgroup(L, rg + g * L.rowgroup_bytes, a, m0, m1, y + r0, ldy, nvalid,
             bias ? bias + r0 : nullptr);
  }
}

}  // namespace medrt::cpu::quant::avx2
