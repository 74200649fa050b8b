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
#include <algorithm>

#include "kernels/quant_kernels.h"

namespace medrt::cpu::quant {
namespace {

constexpr int64_t kDecodeMaxRows = 8;
constexpr int64_t kChunkRows = 64;

ActBuffer& act_scratch() {
  thread_local ActBuffer buf;
  return buf;
}

struct Call {
  const Layout& L;
  const uint8_t* base;
  Act a;
  float* y;
  const float* bias;
  int64_t out;

  void rowgroup(RowGroupFn fn, int64_t g, int64_t m0, int64_t m1) const {
    const int64_t n0 = g * kRows;
    const int nvalid = int(std::min<int64_t>(kRows, out - n0));
    fn(L, base + g * L.rowgroup_bytes, a, m0, m1, y + n0, out, nvalid,
       bias ? bias + n0 : nullptr);
  }
};

Call prepare(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Layout& L = layout_of(w);
  ActBuffer& act = act_scratch();
  quantize_act(x, M, w.in, act, pool);
  return {L,      w.packed.get() + kHeaderBytes, act.view(L.nb), y,
          w.bias.empty() ? nullptr : w.bias.data(), w.out};
}

template <RowGroupFn Fn>
void decode(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Call c = prepare(w, x, M, y, pool);
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  pool.parallel_for(nrg, [&](int, int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) c.rowgroup(Fn, g, 0, M);
  });
}

template <RowGroupFn Fn>
void prefill(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const Call c = prepare(w, x, M, y, pool);
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  const int64_t chunks = (M + kChunkRows - 1) / kChunkRows;
  pool.parallel_for(chunks * nrg, [&](int, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m0 = (u / nrg) * kChunkRows;
      c.rowgroup(Fn, u % nrg, m0, std::min(M, m0 + kChunkRows));
    }
  });
}

template <RowGroupFn Fn>
constexpr WeightKernels entry(const char* name) {
  return {name, ActFormat::Q8Block32, pack_quant, decode<Fn>, prefill<Fn>, kDecodeMaxRows,
          quant_dequant_row};
}

constexpr WeightKernels kPortable[3] = {entry<portable::quant_rowgroup>("int8/portable"),
                                        entry<portable::quant_rowgroup>("nf4/portable"),
                                        entry<portable::quant_rowgroup>("int4/portable")};
constexpr WeightKernels kAvx2[3] = {entry<avx2::quant_rowgroup>("int8/avx2"),
                                    entry<avx2::quant_rowgroup>("nf4/avx2"),
                                    entry<avx2::quant_rowgroup>("int4/avx2")};
constexpr WeightKernels kVnni[3] = {entry<avx512vnni::quant_rowgroup>("int8/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroup>("nf4/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroup>("int4/avx512vnni")};

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
