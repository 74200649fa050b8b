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
// Weights of one input (q/k/v, gate/up: quant_linear_shared) share one quantization of it and
// one parallel region over all their units, which saves a quantization and a barrier each.
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
  const Layout* L = nullptr;
  const uint8_t* base = nullptr;
  Act a{};
  int64_t rows = 0;  // activation rows: M, or 2M with two terms per input row
  float* y = nullptr;  // [rows, out]
  const float* bias = nullptr;
  int64_t out = 0;

  // Row groups [g0, g1) for activation rows [m0, m1).
  void rowgroups(RowGroupFn fn, int64_t g0, int64_t g1, int64_t m0, int64_t m1) const {
    const int64_t n0 = g0 * kRows;
    fn(*L, base + g0 * L->rowgroup_bytes, g1 - g0, a, m0, m1, y + n0, out, out - n0,
       bias ? bias + n0 : nullptr);
  }
};

// Quantizes x once for weights of its width and precision (one or two terms per row).
Act quantize_input(const PackedLinear& w, const float* x, int64_t M, ThreadPool& pool) {
  ActBuffer& act = act_scratch();
  if (w.act == ActPrecision::Int8x2)
    quantize_act_split(x, M, w.in, act, pool);
  else
    quantize_act(x, M, w.in, act, pool);
  return act.view((w.in + kBlock - 1) / kBlock);
}

// One weight's work over the quantized input: its row groups for every activation row
// (decode: a unit is a row group) or for one chunk of kChunkRows rows (prefill: a unit is a
// (chunk, row group) pair, chunk-major), so a weight row group is reused across a chunk.
struct Job {
  RowGroupFn fn = nullptr;
  Call c{};
  int64_t nrg = 0;    // row groups
  int64_t units = 0;  // nrg (decode) or chunks * nrg (prefill)

  void run(bool decode, int64_t u0, int64_t u1) const {
    if (decode) return c.rowgroups(fn, u0, u1, 0, c.rows);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t m0 = (u / nrg) * kChunkRows;
      c.rowgroups(fn, u % nrg, u % nrg + 1, m0, std::min(c.rows, m0 + kChunkRows));
    }
  }
};

// The job of w on the quantized input a; with two terms its rows go to `terms` (2M * out
// floats) and finish() adds them.
Job job_for(const PackedLinear& w, const Act& a, int64_t M, bool decode, float* y, float* terms) {
  const bool two = w.act == ActPrecision::Int8x2;
  const Call c{&layout_of(w), w.packed.get() + kHeaderBytes, a, two ? 2 * M : M,
               two ? terms : y, two || w.bias.empty() ? nullptr : w.bias.data(), w.out};
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  return {w.kernels->rowgroups->fn, c, nrg,
          decode ? nrg : (c.rows + kChunkRows - 1) / kChunkRows * nrg};
}

// Int8x2: y[m] = (terms[2m] + terms[2m + 1]) + bias, in that order for every path.
void finish(const PackedLinear& w, const Job& j, int64_t M, float* y, ThreadPool& pool) {
  if (j.c.y == y) return;
  const int64_t N = w.out;
  const float* bias = w.bias.empty() ? nullptr : w.bias.data();
  const float* terms = j.c.y;
  auto rows = [&](int, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* hi = terms + 2 * m * N;
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

// ys[i] = ws[i] x for n <= kMaxShared weights of one `in` and one precision: x quantized once,
// every unit of every weight in one parallel region (the threads split the units'
// concatenation), then the two-term sums. A single linear is the case n = 1.
void run(const PackedLinear* const* ws, float* const* ys, int n, const float* x, int64_t M,
         bool decode, ThreadPool& pool) {
  const Act a = quantize_input(*ws[0], x, M, pool);
  std::vector<float>& terms = terms_scratch();
  if (ws[0]->act == ActPrecision::Int8x2) {
    int64_t floats = 0;
    for (int i = 0; i < n; ++i) floats += 2 * M * ws[i]->out;
    terms.resize(size_t(floats));
  }
  Job jobs[kMaxShared];
  int64_t total = 0, offset = 0;
  for (int i = 0; i < n; ++i) {
    jobs[i] = job_for(*ws[i], a, M, decode, ys[i], terms.data() + offset);
    if (ws[i]->act == ActPrecision::Int8x2) offset += 2 * M * ws[i]->out;
    total += jobs[i].units;
  }
  pool.parallel_for(total, [&](int, int64_t u0, int64_t u1) {
    int64_t base = 0;
    for (int i = 0; i < n; ++i) {
      const int64_t lo = std::max(u0, base), hi = std::min(u1, base + jobs[i].units);
      if (lo < hi) jobs[i].run(decode, lo - base, hi - base);
      base += jobs[i].units;
    }
  });
  for (int i = 0; i < n; ++i) finish(*ws[i], jobs[i], M, ys[i], pool);
}

// The table's decode and prefill entries: the same runner, the regime named by the entry (the
// traits table picks it from M; tests call each directly).
template <bool Decode>
void linear_one(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  const PackedLinear* ws[1] = {&w};
  run(ws, &y, 1, x, M, Decode, pool);
}

template <RowGroupFn Fn>
constexpr RowGroupKernel kRowGroupKernel{Fn};

template <RowGroupFn Fn>
constexpr WeightKernels entry(const char* name) {
  return {name,           ActFormat::Q8Block32, pack_quant,        linear_one<true>,
          linear_one<false>, kDecodeMaxRows,   quant_dequant_row, &kRowGroupKernel<Fn>};
}

constexpr WeightKernels kPortable[4] = {entry<portable::quant_rowgroups>("int8/portable"),
                                        entry<portable::quant_rowgroups>("nf4/portable"),
                                        entry<portable::quant_rowgroups>("int4/portable"),
                                        entry<portable::quant_rowgroups>("int6/portable")};
constexpr WeightKernels kAvx2[4] = {entry<avx2::quant_rowgroups>("int8/avx2"),
                                    entry<avx2::quant_rowgroups>("nf4/avx2"),
                                    entry<avx2::quant_rowgroups>("int4/avx2"),
                                    entry<avx2::quant_rowgroups>("int6/avx2")};
constexpr WeightKernels kVnni[4] = {entry<avx512vnni::quant_rowgroups>("int8/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroups>("nf4/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroups>("int4/avx512vnni"),
                                    entry<avx512vnni::quant_rowgroups>("int6/avx512vnni")};

}  // namespace

void quant_linear_shared(const PackedLinear* const* ws, float* const* ys, int n, const float* x,
                         int64_t M, ThreadPool& pool) {
  run(ws, ys, n, x, M, M <= kDecodeMaxRows, pool);
}

const WeightKernels* quant_weight_kernels(WeightType type, Isa isa) {
  int i;
  switch (type) {
    case WeightType::Int8: i = 0; break;
    case WeightType::Nf4: i = 1; break;
    case WeightType::Int4: i = 2; break;
    case WeightType::Int6: i = 3; break;
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
