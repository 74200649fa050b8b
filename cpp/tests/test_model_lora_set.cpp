// LoraSet: the per-row LoRA delta against a double-precision reference, batch invariance
// (bit-identical rows whatever else is in the batch) and the errors that name what is wrong.
#include <algorithm>
#include <random>
#include <vector>

#include "check.h"
#include "medrt/error.h"
#include "model/lora_set.h"

using namespace medrt;
using namespace medrt::model;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_layers = 2;
  c.num_heads = 3;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  return c;
}

std::vector<float> randn(size_t n, std::mt19937& g) {
  std::normal_distribution<float> d(0.0f, 0.5f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

LoraModuleWeights module(const std::string& name, int64_t r, int64_t in, int64_t out,
                         std::mt19937& g) {
  LoraModuleWeights m;
  m.module = name;
  m.rank = r, m.in = in, m.out = out;
  m.a = randn(size_t(r * in), g);
  m.b = randn(size_t(out * r), g);
  return m;
}

// Adapter 1: rank 3 on layer 1's q_proj and down_proj; adapter 2: rank 5 on layer 1's q_proj.
LoraAdapterWeights adapter(int which, std::mt19937& g) {
  LoraAdapterWeights w;
  w.scale = which == 1 ? 2.0f : 0.75f;
  w.modules.push_back(module("model.layers.1.self_attn.q_proj", which == 1 ? 3 : 5, 24, 24, g));
  if (which == 1) w.modules.push_back(module("model.layers.1.mlp.down_proj", 3, 40, 24, g));
  return w;
}

}  // namespace

TEST(delta_matches_reference_and_leaves_base_rows) {
  ThreadPool pool(2);
  ModelConfig cfg = tiny_config();
  LoraSet set(cfg, pool);
  std::mt19937 g(1);
  LoraAdapterWeights w1 = adapter(1, g), w2 = adapter(2, g);
  set.add(1, w1);
  set.add(2, w2);
  const std::vector<int32_t> row_adapter = {2, 0, 1, 2, 1};
  const int64_t T = 5, D = 24;
  std::vector<float> x = randn(size_t(T * D), g), y = randn(size_t(T * D), g);
  const std::vector<float> y0 = y;
  LoraRows rows;
  set.group(row_adapter, nullptr, T, rows);
  CHECK(rows.rows.size() == 4);
  set.apply(1, LoraProj::Q, rows, x.data(), y.data());
  for (int64_t t = 0; t < T; ++t) {
    const LoraAdapterWeights* w = row_adapter[t] == 1 ? &w1 : row_adapter[t] == 2 ? &w2 : nullptr;
    for (int64_t o = 0; o < D; ++o) {
      double want = y0[size_t(t * D + o)];
      if (w) {
        const LoraModuleWeights& m = w->modules[0];
        for (int64_t k = 0; k < m.rank; ++k) {
          double z = 0;
          for (int64_t i = 0; i < D; ++i) z += double(m.a[size_t(k * D + i)]) * x[size_t(t * D + i)];
          want += w->scale * z * m.b[size_t(o * m.rank + k)];
        }
      }
      CHECK_NEAR(y[size_t(t * D + o)], want, 1e-4);
    }
  }
  // A projection an adapter does not adapt (layer 0, or adapter 2's down_proj) adds nothing.
  std::vector<float> y2 = y0;
  set.apply(0, LoraProj::Q, rows, x.data(), y2.data());
  CHECK(y2 == y0);
}

TEST(a_rows_delta_does_not_depend_on_the_batch) {
  ThreadPool pool(3);
  ModelConfig cfg = tiny_config();
  LoraSet set(cfg, pool);
  std::mt19937 g(2);
  set.add(1, adapter(1, g));
  set.add(2, adapter(2, g));
  const int64_t F = 40, D = 24;
  std::vector<float> row = randn(size_t(F), g);
  std::vector<float> alone_y(size_t(D), 0.5f);
  LoraRows rows;
  set.group({1}, nullptr, 1, rows);
  set.apply(1, LoraProj::Down, rows, row.data(), alone_y.data());
  // The same row as the 6th of 9 rows of mixed adapters.
  std::vector<float> x = randn(size_t(9 * F), g);
  std::copy(row.begin(), row.end(), x.begin() + 5 * F);
  std::vector<float> y(size_t(9 * D), 0.5f);
  set.group({2, 1, 0, 1, 2, 1, 0, 2, 1}, nullptr, 9, rows);
  set.apply(1, LoraProj::Down, rows, x.data(), y.data());
  CHECK(std::equal(alone_y.begin(), alone_y.end(), y.begin() + 5 * D));
  // Output rows picked from tokens (the last layer's logit rows).
  const std::vector<int32_t> pick = {3, 0};
  set.group({2, 1, 0, 1}, pick.data(), 2, rows);
  CHECK(rows.rows.size() == 2 && rows.rows[0] == 0 && rows.rows[1] == 1);
}

TEST(bad_adapters_and_ids_name_what_is_wrong) {
  ThreadPool pool(1);
  ModelConfig cfg = tiny_config();
  LoraSet set(cfg, pool);
  std::mt19937 g(3);
  LoraAdapterWeights w;
  w.modules.push_back(module("model.layers.2.self_attn.q_proj", 2, 24, 24, g));
  CHECK_THROWS(InvalidCheckpoint, set.add(1, w), "'model.layers.2.self_attn.q_proj' is not a projection");
  w.modules[0] = module("model.layers.0.self_attn.k_proj", 2, 24, 24, g);
  CHECK_THROWS(InvalidCheckpoint, set.add(1, w), "do not fit the base [8, 24]");
  w.modules[0] = module("model.layers.0.lm_head", 2, 24, 24, g);
  CHECK_THROWS(InvalidCheckpoint, set.add(1, w), "is not a projection");
  CHECK_THROWS(InvalidRequest, set.add(0, adapter(1, g)), "must be > 0");
  set.add(4, adapter(1, g));
  CHECK_THROWS(InvalidRequest, set.add(4, adapter(1, g)), "already loaded");
  LoraRows rows;
  CHECK_THROWS(InvalidRequest, set.group({4, 9}, nullptr, 2, rows), "id 9 is not loaded");
  CHECK(set.remove(4) && !set.remove(4) && set.empty());
}

