// linear(): against a double-precision reference for every weight dtype and odd shapes, the
// two instruction sets against each other, and the determinism contract (a row's output is
// bit-identical whatever M, the tile it lands in, or the thread count).
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "isas.h"
#include "medrt/dtype.h"
#include "medrt/error.h"
#include "medrt/kernels.h"

using namespace medrt;

namespace {

// A weight tensor in `dtype` plus its exact f32 values (what the kernel must multiply by).
struct Weight {
  std::vector<uint16_t> half;
  std::vector<float> full;  // f32 storage, or the decoded values of `half`
  TensorView view;
};

Weight make_weight(int64_t N, int64_t K, DType dtype, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 0.5f);
  Weight w;
  w.full.resize(size_t(N * K));
  if (dtype != DType::F32) w.half.resize(size_t(N * K));
  for (size_t i = 0; i < w.full.size(); ++i) {
    float v = dist(rng);
    if (dtype == DType::F16) {
      w.half[i] = f32_to_f16(v);
      v = f16_to_f32(w.half[i]);
    } else if (dtype == DType::BF16) {
      w.half[i] = f32_to_bf16(v);
      v = bf16_to_f32(w.half[i]);
    }
    w.full[i] = v;
  }
  w.view.dtype = dtype;
  w.view.shape = {N, K};
  w.view.data = dtype == DType::F32 ? static_cast<const void*>(w.full.data()) : w.half.data();
  w.view.nbytes = size_t(N * K) * dtype_size(dtype);
  return w;
}

std::vector<float> random_vec(int64_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = dist(rng);
  return v;
}

// Checks y against sum_k x*w (+b) in double, with a tolerance scaled by sum_k |x*w|.
void check_against_reference(const std::vector<float>& x, const Weight& w, const float* bias,
                             const std::vector<float>& y, int64_t M, int64_t K, int64_t N) {
  int bad = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = bias ? bias[n] : 0.0, mag = bias ? std::fabs(bias[n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        double p = double(x[size_t(m * K + k)]) * w.full[size_t(n * K + k)];
        ref += p;
        mag += std::fabs(p);
      }
      if (std::fabs(y[size_t(m * N + n)] - ref) > 1e-6 * mag + 1e-30 && bad++ < 5)
        std::fprintf(stderr, "  M=%ld K=%ld N=%ld y[%ld,%ld]=%.9g ref=%.9g\n", long(M), long(K),
                     long(N), long(m), long(n), double(y[size_t(m * N + n)]), ref);
    }
  CHECK(bad == 0);
}

}  // namespace

TEST(linear_matches_reference_all_dtypes_and_shapes) {
  std::mt19937 rng(1);
  ThreadPool pool(2);
  const int64_t shapes[][3] = {{1, 1, 1},   {1, 8, 8},    {1, 13, 5},   {2, 64, 33},
                               {3, 100, 17}, {5, 576, 40}, {16, 67, 29}, {37, 129, 71},
                               {70, 300, 50}, {130, 96, 130}, {33, 2100, 9}};
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (auto& s : shapes) {
        const int64_t M = s[0], K = s[1], N = s[2];
        Weight w = make_weight(N, K, dt, rng);
        auto x = random_vec(M * K, rng);
        auto b = random_vec(N, rng);
        TensorView bv{DType::F32, {N}, b.data(), size_t(N) * 4};
        std::vector<float> y(size_t(M * N));
        cpu::linear(x.data(), M, K, w.view, nullptr, y.data(), pool);
        check_against_reference(x, w, nullptr, y, M, K, N);
        cpu::linear(x.data(), M, K, w.view, &bv, y.data(), pool);
        check_against_reference(x, w, b.data(), y, M, K, N);
      }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(linear_bias_in_half_precision) {
  std::mt19937 rng(2);
  ThreadPool pool(2);
  const int64_t M = 3, K = 40, N = 11;
  Weight w = make_weight(N, K, DType::F16, rng);
  auto x = random_vec(M * K, rng);
  std::vector<uint16_t> b16(static_cast<size_t>(N));
  std::vector<float> bf(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    b16[size_t(n)] = f32_to_bf16(0.25f * float(n) - 1.0f);
    bf[size_t(n)] = bf16_to_f32(b16[size_t(n)]);
  }
  TensorView bv{DType::BF16, {N}, b16.data(), size_t(N) * 2};
  std::vector<float> y(size_t(M * N));
  cpu::linear(x.data(), M, K, w.view, &bv, y.data(), pool);
  check_against_reference(x, w, bf.data(), y, M, K, N);
}

TEST(linear_rows_independent_of_batch_and_threads) {
  std::mt19937 rng(3);
  ThreadPool p1(1), p2(2), p3(3);
  struct Case { int64_t M, K, N; };
  // M = 37 crosses the small-M / large-M switch; M = 130 spans two m-blocks and N = 150 two
  // panels; K = 2100 is three k-blocks with a tail.
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (Case c : {Case{37, 131, 53}, Case{37, 576, 77}, Case{37, 2100, 19},
                     Case{130, 2100, 150}}) {
        const int64_t M = c.M, K = c.K, N = c.N;
        Weight w = make_weight(N, K, dt, rng);
        auto x = random_vec(M * K, rng);
        auto b = random_vec(N, rng);
        TensorView bv{DType::F32, {N}, b.data(), size_t(N) * 4};
        std::vector<float> full(size_t(M * N));
        cpu::linear(x.data(), M, K, w.view, &bv, full.data(), p2);
        // Each row alone, and batches of the last rows through the small-M and large-M paths.
        for (int64_t m = 0; m < M; ++m) {
          std::vector<float> one(static_cast<size_t>(N));
          cpu::linear(x.data() + m * K, 1, K, w.view, &bv, one.data(), p2);
          CHECK(std::memcmp(one.data(), full.data() + m * N, size_t(N) * 4) == 0);
        }
        for (int64_t sub : {int64_t(2), int64_t(5), int64_t(16), int64_t(17), M - 1}) {
          std::vector<float> part(size_t(sub * N));
          cpu::linear(x.data() + (M - sub) * K, sub, K, w.view, &bv, part.data(), p2);
          CHECK(std::memcmp(part.data(), full.data() + (M - sub) * N, part.size() * 4) == 0);
        }
        for (ThreadPool* p : {&p1, &p3}) {
          std::vector<float> other(size_t(M * N));
          cpu::linear(x.data(), M, K, w.view, &bv, other.data(), *p);
          CHECK(std::memcmp(other.data(), full.data(), full.size() * 4) == 0);
        }
      }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(linear_isas_agree) {
  std::mt19937 rng(4);
  ThreadPool pool(2);
  const int64_t M = 40, K = 777, N = 45;
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    Weight w = make_weight(N, K, dt, rng);
    auto x = random_vec(M * K, rng);
    std::vector<std::vector<float>> outs;
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      outs.emplace_back(size_t(M * N));
      cpu::linear(x.data(), M, K, w.view, nullptr, outs.back().data(), pool);
    }
    for (size_t i = 1; i < outs.size(); ++i)
      for (size_t j = 0; j < outs[0].size(); ++j)
        CHECK_NEAR(outs[i][j], outs[0][j], 2e-5 * (1 + std::fabs(outs[0][j])));
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(set_isa_reports_the_choice) {
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    CHECK(cpu::active_isa() == isa);
  }
  cpu::set_isa(cpu::detected_isa());
  CHECK(std::string(cpu::isa_name(cpu::Isa::Avx512)) == "avx512");
  if (cpu::detected_isa() != cpu::Isa::Avx512)
    CHECK_THROWS(InvalidRequest, cpu::set_isa(cpu::Isa::Avx512), "lacks");
}

TEST(linear_rejects_mismatched_weight) {
  ThreadPool pool(1);
  std::vector<float> w(12), x(4), y(3);
  TensorView wv{DType::F32, {3, 4}, w.data(), 48};
  CHECK_THROWS(Error, cpu::linear(x.data(), 1, 5, wv, nullptr, y.data(), pool), "does not match");
  TensorView iv{DType::I32, {3, 4}, w.data(), 48};
  CHECK_THROWS(Error, cpu::linear(x.data(), 1, 4, iv, nullptr, y.data(), pool), "I32");
}
