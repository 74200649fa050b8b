// paged_attention(): several sequences of different lengths in one batch, with scattered
// block tables, against a naive double-precision softmax; rows must not depend on the batch.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "isas.h"
#include "medrt/error.h"
#include "medrt/kernels.h"

using namespace medrt;

namespace {

struct Setup {
  int64_t n_heads, H, hd, bs, blocks, max_blocks;
  std::vector<float> k, v, q;
  std::vector<int32_t> table, token_seq, positions;
  cpu::PagedKV cache() { return {k.data(), v.data(), blocks, bs, H, hd}; }
  cpu::AttentionBatch batch() {
    return {int64_t(positions.size()), token_seq.data(), positions.data(), table.data(),
            max_blocks};
  }
};

// Sequence s has lens[s] cached tokens; its blocks are a shuffled permutation of the pool.
// Rows: the last `rows[s]` positions of each sequence (prefill chunk or one decode row).
Setup make_setup(int64_t n_heads, int64_t H, int64_t hd, int64_t bs, std::vector<int64_t> lens,
                 std::vector<int64_t> rows, std::mt19937& rng) {
  Setup s{n_heads, H, hd, bs, 0, 0, {}, {}, {}, {}, {}, {}};
  for (int64_t len : lens) s.max_blocks = std::max(s.max_blocks, (len + bs - 1) / bs);
  s.blocks = s.max_blocks * int64_t(lens.size()) + 3;
  std::vector<int32_t> perm(static_cast<size_t>(s.blocks));
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = int32_t(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  s.table.assign(size_t(s.max_blocks) * lens.size(), -1);
  size_t next = 0;
  for (size_t q = 0; q < lens.size(); ++q)
    for (int64_t b = 0; b * bs < lens[q]; ++b)
      s.table[q * size_t(s.max_blocks) + size_t(b)] = perm[next++];
  std::normal_distribution<float> dist(0.0f, 1.0f);
  s.k.resize(size_t(s.blocks * H * bs * hd));
  s.v.resize(s.k.size());
  for (auto& e : s.k) e = dist(rng);
  for (auto& e : s.v) e = dist(rng);
  for (size_t q = 0; q < lens.size(); ++q)
    for (int64_t r = 0; r < rows[q]; ++r) {
      s.token_seq.push_back(int32_t(q));
      s.positions.push_back(int32_t(lens[q] - rows[q] + r));
    }
  s.q.resize(s.positions.size() * size_t(n_heads * hd));
  for (auto& e : s.q) e = 2.0f * dist(rng);
  return s;
}

std::vector<double> reference(Setup& s, float scale) {
  const int64_t G = s.n_heads / s.H;
  std::vector<double> out(s.q.size());
  for (size_t t = 0; t < s.positions.size(); ++t)
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t kvh = h / G, n = s.positions[t] + 1;
      std::vector<double> sc(static_cast<size_t>(n));
      double mx = -1e300, sum = 0;
      auto slot = [&](int64_t j) {
        const size_t seq = size_t(s.token_seq[t]);
        const int64_t blk = s.table[seq * size_t(s.max_blocks) + size_t(j / s.bs)];
        return ((blk * s.H + kvh) * s.bs + j % s.bs) * s.hd;
      };
      for (int64_t j = 0; j < n; ++j) {
        double d = 0;
        for (int64_t i = 0; i < s.hd; ++i)
          d += double(s.q[(t * size_t(s.n_heads) + size_t(h)) * size_t(s.hd) + size_t(i)]) *
               s.k[size_t(slot(j) + i)];
        sc[size_t(j)] = d * scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      for (auto& e : sc) sum += (e = std::exp(e - mx));
      for (int64_t i = 0; i < s.hd; ++i) {
        double o = 0;
        for (int64_t j = 0; j < n; ++j) o += sc[size_t(j)] * s.v[size_t(slot(j) + i)];
        out[(t * size_t(s.n_heads) + size_t(h)) * size_t(s.hd) + size_t(i)] = o / sum;
      }
    }
  return out;
}

}  // namespace

TEST(attention_matches_naive_softmax) {
  std::mt19937 rng(1);
  ThreadPool pool(2);
  struct Shape { int64_t n_heads, H, hd, bs; };
  // SmolLM2 and Qwen2 head layouts, plus odd head_dim and block sizes (20 / 5, 8 / 1).
  for (Shape sh : {Shape{9, 3, 64, 16}, Shape{4, 4, 20, 5}, Shape{12, 2, 128, 16},
                   Shape{2, 1, 8, 1}}) {
    Setup s = make_setup(sh.n_heads, sh.H, sh.hd, sh.bs, {1, 40, 77, 3}, {1, 7, 1, 3}, rng);
    const float scale = 1.0f / std::sqrt(float(sh.hd));
    auto ref = reference(s, scale);
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      std::vector<float> out(s.q.size());
      cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), scale, out.data(), pool);
      int bad = 0;
      for (size_t i = 0; i < out.size(); ++i)
        if (std::fabs(out[i] - ref[i]) > 1e-5 * (std::fabs(ref[i]) + 0.1) && bad++ < 5)
          std::fprintf(stderr, "  %s hd=%ld i=%zu out=%.8g ref=%.8g\n", cpu::isa_name(isa),
                       long(sh.hd), i, double(out[i]), ref[i]);
      CHECK(bad == 0);
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(attention_rows_independent_of_batch_and_threads) {
  std::mt19937 rng(2);
  ThreadPool p1(1), p2(2), p3(3);
  Setup s = make_setup(9, 3, 64, 16, {50, 33, 120}, {20, 1, 9}, rng);
  const float scale = 0.125f;
  const size_t row = size_t(s.n_heads * s.hd);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    std::vector<float> full(s.q.size());
    cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), scale, full.data(), p2);
    for (size_t t = 0; t < s.positions.size(); ++t) {
      cpu::AttentionBatch one = s.batch();
      one.T = 1;
      one.token_seq += t;
      one.positions += t;
      std::vector<float> out(row);
      cpu::paged_attention(s.q.data() + t * row, s.n_heads, s.cache(), one, scale, out.data(), p2);
      CHECK(std::memcmp(out.data(), full.data() + t * row, row * 4) == 0);
    }
    for (ThreadPool* p : {&p1, &p3}) {
      std::vector<float> other(s.q.size());
      cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), scale, other.data(), *p);
      CHECK(std::memcmp(other.data(), full.data(), full.size() * 4) == 0);
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(attention_isas_agree) {
  if (cpu::detected_isa() != cpu::Isa::Avx2) return;
  std::mt19937 rng(4);
  ThreadPool pool(2);
  Setup s = make_setup(12, 2, 128, 16, {300, 17}, {5, 1}, rng);
  std::vector<float> a(s.q.size()), b(s.q.size());
  cpu::set_isa(cpu::Isa::Portable);
  cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), 0.09f, a.data(), pool);
  cpu::set_isa(cpu::Isa::Avx2);
  cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), 0.09f, b.data(), pool);
  cpu::set_isa(cpu::detected_isa());
  for (size_t i = 0; i < a.size(); ++i) CHECK_NEAR(a[i], b[i], 2e-6 * (1 + std::fabs(a[i])));
}

// An f16 cache is read exactly as the f32 cache holding the same rounded values: every ISA
// widens each half to the float it denotes, so the outputs are the same bits.
TEST(attention_over_an_f16_cache_equals_f32_of_the_rounded_values) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  struct Shape { int64_t n_heads, H, hd, bs; };
  for (Shape sh : {Shape{9, 3, 64, 16}, Shape{4, 4, 20, 5}, Shape{2, 1, 13, 3}}) {
    Setup s = make_setup(sh.n_heads, sh.H, sh.hd, sh.bs, {1, 40, 77}, {1, 7, 2}, rng);
    std::vector<uint16_t> k16(s.k.size()), v16(s.v.size());
    for (size_t i = 0; i < s.k.size(); ++i) {
      k16[i] = f32_to_f16(s.k[i]);
      v16[i] = f32_to_f16(s.v[i]);
      s.k[i] = f16_to_f32(k16[i]);
      s.v[i] = f16_to_f32(v16[i]);
    }
    cpu::PagedKV half = s.cache();
    half.k = k16.data(), half.v = v16.data(), half.dtype = DType::F16;
    const float scale = 1.0f / std::sqrt(float(sh.hd));
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      std::vector<float> want(s.q.size()), got(s.q.size());
      cpu::paged_attention(s.q.data(), s.n_heads, s.cache(), s.batch(), scale, want.data(), pool);
      cpu::paged_attention(s.q.data(), s.n_heads, half, s.batch(), scale, got.data(), pool);
      CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(attention_rejects_bad_shapes) {
  std::mt19937 rng(3);
  ThreadPool pool(1);
  Setup s = make_setup(4, 4, 8, 4, {5}, {1}, rng);
  std::vector<float> out(s.q.size());
  auto run = [&](int64_t n_heads) {
    cpu::paged_attention(s.q.data(), n_heads, s.cache(), s.batch(), 1.0f, out.data(), pool);
  };
  CHECK_THROWS(Error, run(3), "not a multiple");
  s.table[0] = int32_t(s.blocks);
  CHECK_THROWS(Error, run(4), "outside the cache");
  s.positions[0] = int32_t(s.max_blocks * s.bs);
  CHECK_THROWS(Error, run(4), "beyond the block table");
  s.positions[0] = 0;
  s.table[0] = 0;
  cpu::PagedKV bf16 = s.cache();
  bf16.dtype = DType::BF16;
  CHECK_THROWS(InvalidRequest,
               cpu::paged_attention(s.q.data(), 4, bf16, s.batch(), 1.0f, out.data(), pool),
               "KV cache dtype BF16 is not supported");
}
