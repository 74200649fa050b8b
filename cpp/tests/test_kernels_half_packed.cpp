// f16/bf16 weights repacked into row groups (kernels/half_layout.h) on AVX2 and AVX-512: every
// output row is bit-identical to the stored-layout GEMM of the same ISA (kernels.h linear) for
// ragged shapes (rows not a multiple of the group, K not a multiple of the chunk or k-block),
// every M regime and thread count; the embedding row reads back the stored values; the loader
// drops the mapped pages of a repacked weight.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "isas.h"
#include "kernels/weight_kernels.h"
#include "medrt/dtype.h"
#include "medrt/kernels.h"
#include "medrt/linear.h"

using namespace medrt;

namespace {

struct HalfWeight {
  std::vector<uint16_t> bits;
  TensorView view;
};

HalfWeight make_weight(int64_t N, int64_t K, DType dt, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 0.5f);
  HalfWeight w;
  w.bits.resize(size_t(N * K));
  for (auto& b : w.bits) b = dt == DType::F16 ? f32_to_f16(dist(rng)) : f32_to_bf16(dist(rng));
  w.view.dtype = dt;
  w.view.shape = {N, K};
  w.view.data = w.bits.data();
  w.view.nbytes = w.bits.size() * sizeof(uint16_t);
  return w;
}

std::vector<float> random_vec(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = dist(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST(packed_half_matches_stored_layout_bit_for_bit) {
  std::mt19937 rng(7);
  // (N, K): groups of 8 / 16 with a ragged last group; K below one chunk, ragged chunks, and K
  // over 768 so that the k-blocks (multiples of 8 on AVX2) split a 16-input chunk.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 1}, {5, 7}, {16, 16}, {17, 33}, {40, 100}, {37, 1000}, {130, 1537}};
  const std::vector<int64_t> Ms = {1, 2, 3, 5, 31, 32, 33, 70};
  ThreadPool p1(1), p2(2), p3(3);
  int checked = 0;
  for (cpu::Isa isa : isas()) {
    if (isa == cpu::Isa::Portable) continue;
    cpu::set_isa(isa);
    for (DType dt : {DType::F16, DType::BF16})
      for (auto [N, K] : shapes)
        for (bool with_bias : {false, true}) {
          HalfWeight w = make_weight(N, K, dt, rng);
          const std::vector<float> bias = random_vec(N, rng);
          TensorView bv{DType::F32, {N}, bias.data(), size_t(N) * sizeof(float)};
          LinearWeight lw = float_linear("layer", w.view, with_bias ? &bv : nullptr);
          const cpu::PackedLinear p = cpu::pack_linear(lw);
          CHECK(p.packed.size > 0);
          CHECK(p.kernels == cpu::half_weight_kernels(isa));
          for (int64_t M : Ms) {
            const std::vector<float> x = random_vec(M * K, rng);
            std::vector<float> want(size_t(M * N)), got(size_t(M * N));
            cpu::linear(x.data(), M, K, w.view, with_bias ? &bv : nullptr, want.data(), p2);
            for (ThreadPool* pool : {&p1, &p2, &p3}) {
              std::fill(got.begin(), got.end(), NAN);
              cpu::linear(p, x.data(), M, got.data(), *pool);
              if (!same_bits(got, want))
                std::printf("  %s %s N=%lld K=%lld M=%lld bias=%d threads=%d differs\n",
                            cpu::isa_name(isa), dtype_name(dt), (long long)N, (long long)K,
                            (long long)M, int(with_bias), pool->size());
              CHECK(same_bits(got, want));
              ++checked;
            }
          }
          // Each row alone gives the row it gave in the batch (the determinism contract).
          const int64_t M = 33;
          const std::vector<float> x = random_vec(M * K, rng);
          std::vector<float> all(static_cast<size_t>(M * N)), one(static_cast<size_t>(N));
          cpu::linear(p, x.data(), M, all.data(), p2);
          for (int64_t m = 0; m < M; m += 8) {
            cpu::linear(p, x.data() + m * K, 1, one.data(), p2);
            CHECK(std::memcmp(one.data(), all.data() + m * N, size_t(N) * sizeof(float)) == 0);
          }
        }
  }
  cpu::set_isa(cpu::detected_isa());
  if (cpu::detected_isa() != cpu::Isa::Portable) CHECK(checked > 0);
}

TEST(packed_half_rows_read_back_the_stored_values) {
  std::mt19937 rng(8);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (DType dt : {DType::F16, DType::BF16}) {
      const int64_t N = 21, K = 45;
      HalfWeight w = make_weight(N, K, dt, rng);
      const cpu::PackedLinear p = cpu::pack_linear(float_linear("embed", w.view));
      std::vector<float> row(static_cast<size_t>(K));
      for (int64_t r = 0; r < N; ++r) {
        p.kernels->dequant_row(p, r, row.data());
        for (int64_t k = 0; k < K; ++k) {
          const uint16_t b = w.bits[size_t(r * K + k)];
          CHECK(row[size_t(k)] == (dt == DType::F16 ? f16_to_f32(b) : bf16_to_f32(b)));
        }
      }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(packed_half_portable_reads_in_place) {
  std::mt19937 rng(9);
  cpu::set_isa(cpu::Isa::Portable);
  HalfWeight w = make_weight(9, 20, DType::F16, rng);
  const cpu::PackedLinear p = cpu::pack_linear(float_linear("layer", w.view));
  CHECK(p.packed.size == 0);
  CHECK(p.weight.data == w.view.data);
  cpu::set_isa(cpu::detected_isa());
}
