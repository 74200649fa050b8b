// Portable row-group kernel of the quantized types: the arithmetic of quant_layout.h written
// out in scalar C++ (std::fma for every fused step), the reference the SIMD kernels must match
// bit for bit.
#include <cmath>
#include <cstring>

#include "kernels/quant_layout.h"
#include "medrt/dtype.h"

namespace medrt::cpu::quant::portable {
namespace {

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Exact integer dot product of row lr of code block `blk` with 32 activation codes.
int32_t block_dot(const Layout& L, const uint8_t* blk, int lr, const int8_t* xa) {
  int32_t isum = 0;
  if (L.block_bytes == 8 * 64) {
    for (int q = 0; q < 8; ++q)
      for (int t = 0; t < 4; ++t) isum += int8_t(blk[q * 64 + lr * 4 + t]) * xa[4 * q + t];
    return isum;
  }
  for (int u = 0; u < 4; ++u)
    for (int t = 0; t < 4; ++t) {
      const uint8_t byte = blk[u * 64 + lr * 4 + t];
      int lo = byte & 15, hi = byte >> 4;
      if (L.kind == Kind::Nf4) lo = kNf4Int8[lo], hi = kNf4Int8[hi];
      if (L.kind == Kind::Int6) {  // the high 2 bits: fields 2 (u % 2) and 2 (u % 2) + 1
        const int h = blk[kHighBits + (u / 2) * 64 + lr * 4 + t] >> (4 * (u % 2));
        lo |= (h & 3) << 4;
        hi |= ((h >> 2) & 3) << 4;
      }
      isum += lo * xa[4 * u + t] + hi * xa[16 + 4 * u + t];
    }
  return isum;
}

// One row group: y[m, 0 .. nvalid) for m in [m0, m1).
void rowgroup(const Layout& L, const uint8_t* rg, const Act& a, int64_t m0, int64_t m1, float* y,
              int64_t ldy, int nvalid, const float* bias) {
  const int64_t kp = a.nb * kBlock;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* xq = a.codes + m * kp;
    const ActBlock* xb = a.blocks + m * a.nb;
    for (int lr = 0; lr < nvalid; ++lr) {
      float acc = 0.0f;
      for (int64_t g = 0; g < L.ngroups; ++g) {
        const uint8_t* gh = group_header_at(rg, L, g) + lr * 2;
        const uint8_t* codes = group_codes_at(rg, L, g);
        const float s = L.kind == Kind::Int8Row ? 0.0f : f16_at(gh);
        float zm = 0.0f;
        if (L.kind == Kind::Int4Zero || L.kind == Kind::Int4Min) zm = f16_at(gh + kRows * 2);
        if (L.kind == Kind::Int6) zm = float(kInt6Zero);
        for (int64_t j = 0; j < L.gb; ++j) {
          const int64_t b = g * L.gb + j;
          const uint8_t* blk = codes + j * L.block_bytes;
          const float fi = float(block_dot(L, blk, lr, xq + b * kBlock));
          const ActBlock& ab = xb[b];
          switch (L.kind) {
            case Kind::Int8Row: acc = std::fma(fi, ab.d, acc); break;
            case Kind::Int8Group:
            case Kind::Nf4: acc = std::fma(fi, s * ab.d, acc); break;
            case Kind::Int4Zero:
            case Kind::Int6: acc = std::fma(std::fma(-zm, ab.sum, fi), s * ab.d, acc); break;
            case Kind::Int4Min: acc = std::fma(zm, ab.dsum, std::fma(fi, s * ab.d, acc)); break;
          }
        }
      }
      float post = 1.0f;
      bool has_post = true;
      if (L.kind == Kind::Int8Row)
        std::memcpy(&post, rg + lr * 4, 4);
      else if (L.kind == Kind::Nf4)
        post = kInv127;
      else
        has_post = false;
      float r = acc;
      if (has_post)
        r = bias ? std::fma(acc, post, bias[lr]) : acc * post;
      else if (bias)
        r = acc + bias[lr];
      y[m * ldy + lr] = r;
    }
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

}  // namespace medrt::cpu::quant::portable
