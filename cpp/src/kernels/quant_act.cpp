// Activation quantization (ActFormat::Q8Block32, quant_layout.h): the scalar definition, which
// quant_act_avx2.cpp reproduces bit for bit, so every kernel reads the same codes and scales.
#include "kernels/quant_kernels.h"

namespace medrt::cpu::quant {
namespace {

// Round half to even for |v| <= 2^22 in the default rounding mode, as nearbyint, but inline
// and vectorizable (nearbyint is a library call on baseline x86-64).
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: the sum keeps no fraction bits
  return (v + kMagic) - kMagic;
}

}  // namespace

void portable::quantize_row(const float* x, int64_t K, int64_t nb, int8_t* codes,
                            ActBlock* blocks) {
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t n = K - b * kBlock < kBlock ? K - b * kBlock : kBlock;
    float xb[kBlock] = {};  // the block, zero-padded
    for (int64_t i = 0; i < n; ++i) xb[i] = x[b * kBlock + i];
    float amax = 0.0f;
    for (int i = 0; i < kBlock; ++i) {
      const float a = xb[i] < 0.0f ? -xb[i] : xb[i];
      amax = a > amax ? a : amax;  // a NaN input is skipped
    }
    const float d = amax / 127.0f;
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    int8_t* q = codes + b * kBlock;
    for (int i = 0; i < kBlock; ++i) {
      // |x * id| <= 127 up to one rounding; the clamp (written so that NaN becomes -127) keeps
      // every code in [-127, 127].
      float v = xb[i] * id;
      v = v >= -127.0f ? v : -127.0f;
      v = v <= 127.0f ? v : 127.0f;
      q[i] = int8_t(round_even(v));
      sum += q[i];
    }
    blocks[b] = {d, float(sum), d * float(sum), sum};
  }
}

void quantize_act(const float* x, int64_t M, int64_t K, ActBuffer& out, ThreadPool& pool) {
  const int64_t nb = (K + kBlock - 1) / kBlock;
  out.codes.resize(size_t(M * nb * kBlock));
  out.blocks.resize(size_t(M * nb));
  const auto quantize_row =
      active_isa() == Isa::Portable ? portable::quantize_row : avx2::quantize_row;
  auto rows = [&](int, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      quantize_row(x + m * K, K, nb, out.codes.data() + m * nb * kBlock,
                   out.blocks.data() + m * nb);
  };
  if (M * K >= (int64_t(1) << 16))
    pool.parallel_for(M, rows);
  else
    rows(0, 0, M);
}

}  // namespace medrt::cpu::quant
