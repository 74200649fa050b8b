// Element-wise ops, embedding and kv_write against double-precision references, on every
// instruction set this CPU has, plus agreement between the instruction sets.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "isas.h"
#include "medrt/dtype.h"
#include "medrt/error.h"
#include "medrt/kernels.h"

using namespace medrt;

namespace {

std::vector<float> random_vec(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = dist(rng);
  return v;
}

// Runs fn once per instruction set and checks every pair of outputs agree within tol.
template <class Fn>
void check_isas_agree(Fn fn, double tol) {
  std::vector<std::vector<float>> outs;
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    outs.push_back(fn());
  }
  cpu::set_isa(cpu::detected_isa());
  for (size_t i = 1; i < outs.size(); ++i)
    for (size_t j = 0; j < outs[0].size(); ++j)
      CHECK_NEAR(outs[i][j], outs[0][j], tol * (1 + std::fabs(outs[0][j])));
}

}  // namespace

TEST(rmsnorm_matches_reference) {
  std::mt19937 rng(1);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (int64_t D : {1, 7, 8, 64, 577}) {
      const int64_t T = 3;
      auto x = random_vec(T * D, rng, 3.0f);
      auto w = random_vec(D, rng);
      std::vector<uint16_t> w16(static_cast<size_t>(D));
      for (int64_t i = 0; i < D; ++i) {
        w16[size_t(i)] = f32_to_bf16(w[size_t(i)]);
        w[size_t(i)] = bf16_to_f32(w16[size_t(i)]);
      }
      TensorView wv{DType::F32, {D}, w.data(), size_t(D) * 4};
      TensorView wb{DType::BF16, {D}, w16.data(), size_t(D) * 2};
      std::vector<float> y(size_t(T * D)), yb(size_t(T * D)), inplace = x;
      cpu::rmsnorm(x.data(), T, D, wv, 1e-6f, y.data());
      cpu::rmsnorm(x.data(), T, D, wb, 1e-6f, yb.data());
      cpu::rmsnorm(inplace.data(), T, D, wv, 1e-6f, inplace.data());
      CHECK(std::memcmp(y.data(), inplace.data(), y.size() * 4) == 0);
      CHECK(std::memcmp(y.data(), yb.data(), y.size() * 4) == 0);
      for (int64_t t = 0; t < T; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += double(x[size_t(t * D + i)]) * x[size_t(t * D + i)];
        const double inv = 1.0 / std::sqrt(ss / double(D) + 1e-6);
        for (int64_t i = 0; i < D; ++i) {
          const double ref = x[size_t(t * D + i)] * inv * w[size_t(i)];
          CHECK_NEAR(y[size_t(t * D + i)], ref, 1e-6 * (1 + std::fabs(ref)));
        }
      }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(rope_rotate_half_matches_reference) {
  std::mt19937 rng(2);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (int64_t hd : {2, 6, 64, 128}) {
      const int64_t T = 4, H = 3;
      std::vector<float> inv_freq(static_cast<size_t>(hd / 2));
      for (int64_t i = 0; i < hd / 2; ++i)
        inv_freq[size_t(i)] = float(1.0 / std::pow(10000.0, 2.0 * double(i) / double(hd)));
      const int32_t pos[T] = {0, 1, 17, 4095};
      auto x = random_vec(T * H * hd, rng);
      auto y = x;
      cpu::rope(y.data(), T, H, hd, pos, inv_freq.data());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < hd / 2; ++i) {
            // The angle is rounded to float as Hugging Face computes it in f32.
            const float angle = float(pos[t]) * inv_freq[size_t(i)];
            const double c = std::cos(double(angle)), s = std::sin(double(angle));
            const size_t base = size_t((t * H + h) * hd);
            const double a = x[base + size_t(i)], b = x[base + size_t(i + hd / 2)];
            CHECK_NEAR(y[base + size_t(i)], a * c - b * s, 1e-6);
            CHECK_NEAR(y[base + size_t(i + hd / 2)], b * c + a * s, 1e-6);
          }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(silu_mul_and_add_match_reference) {
  std::mt19937 rng(3);
  const int64_t T = 3, F = 37, stride = 80;
  auto gate = random_vec(T * stride, rng, 12.0f);
  auto up = random_vec(T * stride, rng, 2.0f);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    std::vector<float> out(size_t(T * F));
    cpu::silu_mul(gate.data(), up.data(), T, F, stride, out.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < F; ++i) {
        const double g = gate[size_t(t * stride + i)];
        const double ref = g / (1 + std::exp(-g)) * up[size_t(t * stride + i)];
        CHECK_NEAR(out[size_t(t * F + i)], ref, 2e-6 * (1 + std::fabs(ref)));
      }
    for (int64_t n : {1, 8, 29}) {
      auto a = random_vec(n, rng), b = random_vec(n, rng), c = a;
      cpu::add_inplace(c.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) CHECK(c[size_t(i)] == a[size_t(i)] + b[size_t(i)]);
    }
  }
  cpu::set_isa(cpu::detected_isa());
  check_isas_agree([&] {
    std::vector<float> out(size_t(T * F));
    cpu::silu_mul(gate.data(), up.data(), T, F, stride, out.data());
    return out;
  }, 1e-6);
}

TEST(embedding_converts_rows_and_rejects_bad_ids) {
  const int64_t V = 5, D = 19;
  std::vector<float> f(size_t(V * D));
  std::vector<uint16_t> h(size_t(V * D)), b(size_t(V * D));
  for (size_t i = 0; i < f.size(); ++i) {
    h[i] = f32_to_f16(float(i) * 0.37f - 3.0f);
    b[i] = f32_to_bf16(float(i) * 0.37f - 3.0f);
    f[i] = float(i) * 0.37f - 3.0f;
  }
  const int32_t tok[3] = {4, 0, 4};
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    std::vector<float> out(size_t(3 * D));
    TensorView tf{DType::F32, {V, D}, f.data(), f.size() * 4};
    TensorView th{DType::F16, {V, D}, h.data(), h.size() * 2};
    TensorView tb{DType::BF16, {V, D}, b.data(), b.size() * 2};
    cpu::embedding(tok, 3, tf, out.data());
    for (int64_t i = 0; i < D; ++i) CHECK(out[size_t(i)] == f[size_t(4 * D + i)]);
    cpu::embedding(tok, 3, th, out.data());
    for (int64_t i = 0; i < D; ++i) CHECK(out[size_t(D + i)] == f16_to_f32(h[size_t(i)]));
    cpu::embedding(tok, 3, tb, out.data());
    for (int64_t i = 0; i < D; ++i)
      CHECK(out[size_t(2 * D + i)] == bf16_to_f32(b[size_t(4 * D + i)]));
    const int32_t bad[2] = {1, 5};
    CHECK_THROWS(InvalidRequest, cpu::embedding(bad, 2, tf, out.data()), "token id 5");
    const int32_t neg[1] = {-1};
    CHECK_THROWS(InvalidRequest, cpu::embedding(neg, 1, th, out.data()), "token id -1");
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(kv_write_places_rows_by_slot) {
  const int64_t blocks = 3, bs = 4, H = 2, hd = 5, T = 3;
  std::vector<float> kc(size_t(blocks * H * bs * hd), -1.0f), vc = kc;
  cpu::PagedKV cache{kc.data(), vc.data(), blocks, bs, H, hd};
  std::vector<float> k(size_t(T * H * hd)), v(size_t(T * H * hd));
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = float(i);
    v[i] = -float(i) - 100;
  }
  const int32_t slots[T] = {9, -1, 2};  // block 2 offset 1; skipped; block 0 offset 2
  cpu::kv_write(k.data(), v.data(), T, slots, cache);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t d = 0; d < hd; ++d) {
      CHECK(kc[size_t(((2 * H + h) * bs + 1) * hd + d)] == k[size_t((0 * H + h) * hd + d)]);
      CHECK(vc[size_t(((0 * H + h) * bs + 2) * hd + d)] == v[size_t((2 * H + h) * hd + d)]);
    }
  int written = 0;
  for (float e : kc) written += e != -1.0f;
  CHECK(written == 2 * H * hd);
}

// An f16 cache gets each value rounded to the nearest half, ties to even, by every ISA alike
// (medrt::f32_to_f16: overflow to inf, subnormal halves), including head_dim tails.
TEST(kv_write_rounds_to_f16_like_the_scalar_conversion) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t hd : {5, 13, 64}) {
    const int64_t blocks = 2, bs = 3, H = 2, T = 4;
    std::vector<float> k(size_t(T * H * hd)), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = dist(rng) * (i % 7 == 0 ? 3e4f : i % 7 == 1 ? 1e-6f : 1.0f);  // inf, subnormal
      v[i] = i % 5 == 0 ? f16_to_f32(uint16_t(0x3c00 + i)) + 0x1p-11f : dist(rng);  // ties
    }
    const int32_t slots[T] = {5, 0, -1, 3};
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      std::vector<uint16_t> kc(size_t(blocks * H * bs * hd), 0x7e00), vc = kc;  // NaN marks
      cpu::PagedKV cache{kc.data(), vc.data(), blocks, bs, H, hd, DType::F16};
      cpu::kv_write(k.data(), v.data(), T, slots, cache);
      int written = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (slots[t] < 0) continue;
        const int64_t block = slots[t] / bs, off = slots[t] % bs;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < hd; ++d) {
            const size_t dst = size_t(((block * H + h) * bs + off) * hd + d);
            const size_t src = size_t((t * H + h) * hd + d);
            CHECK(kc[dst] == f32_to_f16(k[src]));
            CHECK(vc[dst] == f32_to_f16(v[src]));
            ++written;
          }
      }
      for (uint16_t e : kc) written -= e != 0x7e00;
      CHECK(written == 0);  // nothing outside the three slots
    }
  }
  cpu::set_isa(cpu::detected_isa());
  std::vector<uint16_t> kc(16), vc(16);
  const float x[4] = {1, 2, 3, 4};
  const int32_t slot[1] = {0};
  cpu::PagedKV bf16{kc.data(), vc.data(), 1, 1, 1, 4, DType::BF16};
  CHECK_THROWS(InvalidRequest, cpu::kv_write(x, x, 1, slot, bf16),
               "KV cache dtype BF16 is not supported (f32 or f16)");
}
