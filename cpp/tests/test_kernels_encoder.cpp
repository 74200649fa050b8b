// The encoder ops (LayerNorm, GELU-erf, bidirectional attention over packed rows, mean
// pooling) against double-precision references on every instruction set this CPU has.
#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "isas.h"
#include "kernels/encoder_kernels.h"
#include "medrt/kernels.h"
#include "medrt/thread_pool.h"

using namespace medrt;

namespace {

std::vector<float> random_vec(int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = dist(rng);
  return v;
}

}  // namespace

TEST(layernorm_matches_reference) {
  std::mt19937 rng(3);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (int64_t D : {1, 5, 8, 13, 384}) {
      const int64_t T = 4;
      // A large common offset: a one-pass variance would lose its digits here.
      auto x = random_vec(T * D, rng, 95.0f, 105.0f);
      auto w = random_vec(D, rng, -2.0f, 2.0f);
      auto b = random_vec(D, rng, -1.0f, 1.0f);
      std::vector<float> y(x.size());
      cpu::layernorm(x.data(), T, D, w.data(), b.data(), 1e-12f, y.data());
      for (int64_t t = 0; t < T; ++t) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < D; ++i) mean += x[size_t(t * D + i)];
        mean /= double(D);
        for (int64_t i = 0; i < D; ++i) var += std::pow(x[size_t(t * D + i)] - mean, 2);
        var /= double(D);
        for (int64_t i = 0; i < D; ++i) {
          const double ref = D == 1 ? b[size_t(i)]
                                    : (x[size_t(t * D + i)] - mean) / std::sqrt(var + 1e-12) *
                                              w[size_t(i)] + b[size_t(i)];
          CHECK_NEAR(y[size_t(t * D + i)], ref, 2e-4 * (1 + std::fabs(ref)));
        }
      }
      // In place gives the same result.
      std::vector<float> z = x;
      cpu::layernorm(z.data(), T, D, w.data(), b.data(), 1e-12f, z.data());
      for (size_t i = 0; i < z.size(); ++i) CHECK(z[i] == y[i]);
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(gelu_erf_matches_reference) {
  std::mt19937 rng(4);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (int64_t n : {1, 7, 8, 1003}) {
      auto x = random_vec(n, rng, -9.0f, 9.0f);
      x[0] = 0.0f;
      std::vector<float> y = x;
      cpu::gelu_erf(y.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double xi = x[size_t(i)];
        const double ref = 0.5 * xi * (1.0 + std::erf(xi / std::sqrt(2.0)));
        CHECK_NEAR(y[size_t(i)], ref, 2e-6 * (1 + std::fabs(xi)));
      }
    }
    // Far tails: x for large x, 0 (not NaN) for very negative x.
    std::vector<float> t{-200.0f, -30.0f, 30.0f, 200.0f};
    cpu::gelu_erf(t.data(), 4);
    CHECK_NEAR(t[0], 0.0, 1e-6);
    CHECK_NEAR(t[1], 0.0, 1e-6);
    CHECK_NEAR(t[2], 30.0, 1e-5);
    CHECK_NEAR(t[3], 200.0, 1e-4);
  }
  cpu::set_isa(cpu::detected_isa());
}

namespace {

// Double-precision softmax attention of one query row over its sequence's keys.
std::vector<double> reference_attention(const std::vector<float>& qkv, int64_t stride,
                                        int64_t H, int64_t n_heads, int64_t head_dim,
                                        int64_t row, int64_t b, int64_t e, double scale) {
  std::vector<double> out(size_t(n_heads * head_dim), 0.0);
  for (int64_t h = 0; h < n_heads; ++h) {
    std::vector<double> s;
    double mx = -1e300;
    for (int64_t j = b; j < e; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < head_dim; ++d)
        dot += double(qkv[size_t(row * stride + h * head_dim + d)]) *
               qkv[size_t(j * stride + H + h * head_dim + d)];
      s.push_back(dot * scale);
      mx = std::max(mx, s.back());
    }
    double sum = 0;
    for (double& v : s) sum += (v = std::exp(v - mx));
    for (int64_t j = b; j < e; ++j)
      for (int64_t d = 0; d < head_dim; ++d)
        out[size_t(h * head_dim + d)] +=
            s[size_t(j - b)] / sum * qkv[size_t(j * stride + 2 * H + h * head_dim + d)];
  }
  return out;
}

}  // namespace

TEST(encoder_attention_matches_reference_per_sequence) {
  std::mt19937 rng(5);
  ThreadPool pool(3);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (int64_t head_dim : {4, 8, 32, 13}) {
      const int64_t n_heads = 3, H = n_heads * head_dim, stride = 3 * H;
      const std::vector<int64_t> offsets{0, 1, 9, 26, 30};  // lengths 1, 8, 17, 4
      const int64_t T = offsets.back();
      auto qkv = random_vec(T * stride, rng, -2.0f, 2.0f);
      std::vector<float> out(size_t(T * H));
      const cpu::PackedRows rows{int64_t(offsets.size()) - 1, offsets.data()};
      const float scale = 1.0f / std::sqrt(float(head_dim));
      cpu::encoder_attention(qkv.data(), qkv.data() + H, qkv.data() + 2 * H, stride, n_heads,
                             head_dim, rows, scale, out.data(), pool);
      for (size_t s = 0; s + 1 < offsets.size(); ++s)
        for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r) {
          auto ref = reference_attention(qkv, stride, H, n_heads, head_dim, r, offsets[s],
                                         offsets[s + 1], scale);
          for (int64_t c = 0; c < H; ++c)
            CHECK_NEAR(out[size_t(r * H + c)], ref[size_t(c)], 1e-5 * (1 + std::fabs(ref[c])));
        }
      // A sequence alone gives bit-identical rows: no row sees another sequence.
      std::vector<float> alone(size_t(4 * H));
      const std::vector<int64_t> one{0, 4};
      std::vector<float> last(qkv.begin() + 26 * stride, qkv.end());
      cpu::encoder_attention(last.data(), last.data() + H, last.data() + 2 * H, stride, n_heads,
                             head_dim, cpu::PackedRows{1, one.data()}, scale, alone.data(), pool);
      for (int64_t i = 0; i < 4 * H; ++i) CHECK(alone[size_t(i)] == out[size_t(26 * H + i)]);
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(mean_pool_l2_matches_reference_per_sequence) {
  std::mt19937 rng(7);
  const int64_t D = 19;
  const std::vector<int64_t> offsets{0, 1, 6, 13};
  const std::vector<float> x = random_vec(13 * D, rng, -2.0f, 2.0f);
  std::vector<float> out(3 * D);
  cpu::mean_pool_l2(x.data(), D, offsets.data(), 3, out.data());
  for (int64_t s = 0; s < 3; ++s) {
    std::vector<double> mean(size_t(D), 0.0);
    for (int64_t t = offsets[size_t(s)]; t < offsets[size_t(s) + 1]; ++t)
      for (int64_t d = 0; d < D; ++d) mean[size_t(d)] += x[size_t(t * D + d)];
    double sq = 0;
    for (double& m : mean) {
      m /= double(offsets[size_t(s) + 1] - offsets[size_t(s)]);
      sq += m * m;
    }
    for (int64_t d = 0; d < D; ++d)
      CHECK_NEAR(out[size_t(s * D + d)], mean[size_t(d)] / std::sqrt(sq), 1e-6);
  }
  // A zero row stays zero (the norm is floored, not divided by).
  const std::vector<float> zeros(size_t(D), 0.0f);
  const std::vector<int64_t> one{0, 1};
  cpu::mean_pool_l2(zeros.data(), D, one.data(), 1, out.data());
  for (int64_t d = 0; d < D; ++d) CHECK(out[size_t(d)] == 0.0f);
}
