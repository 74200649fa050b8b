// Activation quantization (ActFormat::Q8Block32, quant_layout.h): the scalar definition, which
// quant_act_avx2.cpp reproduces bit for bit, so every kernel reads the same codes and scales.
#include <vector>

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

namespace {

using QuantizeRowFn = void (*)(const float*, int64_t, int64_t, int8_t*, ActBlock*);

QuantizeRowFn active_quantize_row() {
  return active_isa() == Isa::Portable ? portable::quantize_row : avx2::quantize_row;
}

// Runs rows(m0, m1) over [0, M), on the pool when the rows hold enough inputs to pay for it.
template <class Rows>
void over_rows(int64_t M, int64_t K, ThreadPool& pool, const Rows& rows) {
  if (M * K >= (int64_t(1) << 16))
    pool.parallel_for(M, [&](int, int64_t m0, int64_t m1) { rows(m0, m1); });
  else
    rows(0, M);
}

}  // namespace

void quantize_act(const float* x, int64_t M, int64_t K, ActBuffer& out, ThreadPool& pool) {
  const int64_t nb = (K + kBlock - 1) / kBlock;
  out.codes.resize(size_t(M * nb * kBlock));
  out.blocks.resize(size_t(M * nb));
  const QuantizeRowFn quantize_row = active_quantize_row();
  over_rows(M, K, pool, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      quantize_row(x + m * K, K, nb, out.codes.data() + m * nb * kBlock,
                   out.blocks.data() + m * nb);
  });
}

void quantize_act_split(const float* x, int64_t M, int64_t K, ActBuffer& out, ThreadPool& pool) {
  const int64_t nb = (K + kBlock - 1) / kBlock, width = nb * kBlock;
  out.codes.resize(size_t(2 * M * width));
  out.blocks.resize(size_t(2 * M * nb));
  const QuantizeRowFn quantize_row = active_quantize_row();
  over_rows(M, 2 * K, pool, [&](int64_t m0, int64_t m1) {
    thread_local std::vector<float> residual;
    residual.resize(size_t(K));
    for (int64_t m = m0; m < m1; ++m) {
      int8_t* q = out.codes.data() + 2 * m * width;
      ActBlock* blocks = out.blocks.data() + 2 * m * nb;
      quantize_row(x + m * K, K, nb, q, blocks);
      // Computed here, in the one portable build of this loop, so every ISA reads the same
      // residual codes.
      for (int64_t i = 0; i < K; ++i)
        residual[size_t(i)] = x[m * K + i] - blocks[i / kBlock].d * float(q[i]);
      quantize_row(residual.data(), K, nb, q + width, blocks + nb);
    }
  });
}

}  // namespace medrt::cpu::quant
