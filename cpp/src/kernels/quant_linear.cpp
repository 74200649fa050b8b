// The quantized linear layer: quantize the activations once, then run the ISA's row-group
// kernel over the output rows on the thread pool, and the traits-table entries that name it.
//
// Decode (M <= kDecodeMaxRows) splits the row groups statically over the threads and runs all
// M rows against each row group as it streams by (the weights are read once). Prefill cuts M
// into chunks of kChunkRows whose quantized activations stay in L2 and splits (chunk, row
// group) units over the threads, so a weight row group is reused by every row of a chunk
// (the kernels unpack each 32-input block once per register tile of activation rows: 8 rows
// with AVX-512 VNNI, 4 with AVX2).
// Every output element is computed by the same operations in the same order whichever path,
// tile, chunk or thread it falls in (quant_layout.h), so decode and prefill rows are
// bit-identical and a row never depends on the batch.
// With ActPrecision::Int8x2 each input row becomes two activation rows (its codes and its
// rounding residual's, quantize_act_split); the kernels run them as any other rows and
// finish() adds each pair, then the bias.
#include <algorithm>
#include <vector>

#include "kernels/quant_kernels.h"

namespace medrt::cpu::quant {
namespace {

constexpr int64_t kDecodeMaxRows = 8;
constexpr int64_t kChunkRows = 64;

ActBuffer& act_scratch() {
  thread_local ActBuffer buf;
  return buf;
}

// ActPrecision::Int8x2: the kernels' rows for the two terms of every input row, summed after.
std::vector<float>& terms_scratch() {
  thread_local std::vector<float> buf;
  return buf;
}

struct Call {
  const Layout& L;
  const uint8_t* base;
  Act a;
  int64_t rows;  // activation rows: M, or 2M with two terms per input row
  float* y;      // [rows, out]
  const float* bias;
  int64_t out;

  // Row groups [g0, g1) for activation rows [m0, m1).
  void rowgroups(RowGroupFn fn, int64_t g0, int64_t g1, int64_t m0, int64_t m1) const {
    const int64_t n0 = g0 * kRows;
    fn(L, base + g0 * L.rowgroup_bytes, g1 - g0, a, m0, m1, y + n0, out, out - n0,
       bias ? bias + n0 : nullptr);
  }
};

Call prepare(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Layout& L = layout_of(w);
  ActBuffer& act = act_scratch();
  const uint8_t* base = w.packed.get() + kHeaderBytes;
  const float* bias = w.bias.empty() ? nullptr : w.bias.data();
  if (w.act == ActPrecision::Int8x2) {
    quantize_act_split(x, M, w.in, act, pool);
    std::vector<float>& terms = terms_scratch();
    terms.resize(size_t(2 * M * w.out));
    return {L, base, act.view(L.nb), 2 * M, terms.data(), nullptr, w.out};  // bias: in finish
  }
  quantize_act(x, M, w.in, act, pool);
  return {L, base, act.view(L.nb), M, y, bias, w.out};
}

// Int8x2: y[m] = (terms[2m] + terms[2m + 1]) + bias, in that order for every path.
void finish(const PackedLinear& w, const Call& c, int64_t M, float* y, ThreadPool& pool) {
  if (c.y == y) return;
  const int64_t N = w.out;
  const float* bias = w.bias.empty() ? nullptr : w.bias.data();
  auto rows = [&](int, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* hi = c.y + 2 * m * N;
      const float* lo = hi + N;
      float* out = y + m * N;
      for (int64_t n = 0; n < N; ++n) out[n] = bias ? (hi[n] + lo[n]) + bias[n] : hi[n] + lo[n];
    }
  };
  if (M * N >= (int64_t(1) << 16))
    pool.parallel_for(M, rows);
  else
    rows(0, 0, M);
}

template <RowGroupFn Fn>
void decode(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Call c = prepare(w, x, M, y, pool);
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  pool.parallel_for(nrg, [&](int, int64_t g0, int64_t g1) { c.rowgroups(Fn, g0, g1, 0, c.rows); });
  finish(w, c, M, y, pool);
}

template <RowGroupFn Fn>
void prefill(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Call c = prepare(w, x, M, y, pool);
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  const int64_t chunks = (c.rows + kChunkRows - 1) / kChunkRows;
  pool.parallel_for(chunks * nrg, [&](int, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m0 = (u / nrg) * kChunkRows;
      c.rowgroups(Fn, u % nrg, u % nrg + 1, m0, std::min(c.rows, m0 + kChunkRows));
    }
  });
  finish(w, c, M, y, pool);
}

template <RowGroupFn Fn>
constexpr WeightKernels entry(const char* name) {
  return {name, ActFormat::Q8Block32, pack_quant, decode<Fn>, prefill<Fn>, kDecodeMaxRows,
          quant_dequant_row};
}

constexpr WeightKernels kPortable[3] = {entry<portable::quant_rowgroups>("int8/portable"),
                                        entry<portable::quant_rowgroups>("nf4/portable"),
                                        entry<portable::quant_rowgroups>("int4/portable")};
constexpr WeightKernels kAvx2[3] = {entry<avx2::quant_rowgroups>("int8/avx2"),
                                    entry<avx2::quant_rowgroups>("nf4/avx2"),
                                    entry<avx2::quant_rowgroups>("int4/avx2")};
constexpr WeightKernels kVnni[3] = {entry<avx512vnni::quant_rowgroups>("int8/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroups>("nf4/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroups>("int4/avx512vnni")};

}  // namespace

const WeightKernels* quant_weight_kernels(WeightType type, Isa isa) {
  int i;
  switch (type) {
    case WeightType::Int8: i = 0; break;
    case WeightType::Nf4: i = 1; break;
    case WeightType::Int4: i = 2; break;
    default: return nullptr;
  }
  switch (isa) {
    case Isa::Portable: return &kPortable[i];
    case Isa::Avx2: return &kAvx2[i];
    case Isa::Avx512: return cpu_has_avx512_vnni() ? &kVnni[i] : &kAvx2[i];
  }
  return nullptr;
}

}  // namespace medrt::cpu::quant
