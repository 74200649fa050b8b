// The decoder over a hand-written checkpoint: it runs, and a row's logits do not depend on
// what else is in the batch or on how its prompt was split into chunks (bitwise).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include "check.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"
#include "medrt/model.h"
#include "tiny_checkpoint.h"

using namespace medrt;
using medrt_test::TempDir;
using medrt_test::TinyCheckpoint;

namespace {

constexpr int64_t kBlock = 4;

struct Seq {
  std::vector<int32_t> tokens;
  std::vector<int32_t> blocks;  // physical block ids, in logical order
};

// Appends rows [start, end) of `s` as batch sequence `seq_index`.
void add_rows(ForwardBatch& b, const Seq& s, int32_t seq_index, int32_t start, int32_t end) {
  for (int32_t p = start; p < end; ++p) {
    b.tokens.push_back(s.tokens[size_t(p)]);
    b.positions.push_back(p);
    b.token_seq.push_back(seq_index);
    b.slot_mapping.push_back(int32_t(s.blocks[size_t(p / kBlock)] * kBlock + p % kBlock));
    b.logit_rows.push_back(int32_t(b.tokens.size() - 1));
  }
}

void set_tables(ForwardBatch& b, const std::vector<const Seq*>& seqs) {
  b.n_seqs = int64_t(seqs.size());
  b.max_blocks = 0;
  for (const Seq* s : seqs) b.max_blocks = std::max(b.max_blocks, int64_t(s->blocks.size()));
  b.block_tables.assign(size_t(b.n_seqs * b.max_blocks), -1);
  for (size_t i = 0; i < seqs.size(); ++i)
    std::copy(seqs[i]->blocks.begin(), seqs[i]->blocks.end(),
              b.block_tables.begin() + int64_t(i) * b.max_blocks);
}

std::vector<float> run(Model& m, KVCache& kv, const ForwardBatch& b) {
  std::vector<float> logits(b.logit_rows.size() * size_t(m.config().vocab_size));
  m.forward(b, kv, logits.data());
  return logits;
}

bool bitwise_equal(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

struct Fixture {
  TempDir dir{"model_forward"};
  ThreadPool pool{2};
  std::unique_ptr<Model> model;
  Seq a{{5, 9, 3, 17, 40, 2, 33}, {6, 1}};
  Seq b{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, {0, 7, 3, 5, 2}};

  Fixture() {
    TinyCheckpoint ck;
    ck.fill_random(7);
    ck.write(dir.path);
    model = Model::load(dir.path.string(), pool);
  }
  int64_t vocab() const { return model->config().vocab_size; }
  // Logits of every row of s, prefilled alone into a fresh cache of dtype dt.
  std::vector<float> prefill(const Seq& s, DType dt) {
    KVCache kv(model->config(), 8, kBlock, dt);
    ForwardBatch b;
    add_rows(b, s, 0, 0, int32_t(s.tokens.size()));
    set_tables(b, {&s});
    return run(*model, kv, b);
  }
};

}  // namespace

TEST(forward_gives_finite_logits_that_depend_on_the_token) {
  Fixture f;
  KVCache kv(f.model->config(), 8, kBlock);
  ForwardBatch b;
  add_rows(b, f.a, 0, 0, int32_t(f.a.tokens.size()));
  set_tables(b, {&f.a});
  std::vector<float> logits = run(*f.model, kv, b);
  bool finite = true;
  for (float x : logits) finite = finite && std::isfinite(x);
  CHECK(finite);
  const size_t V = size_t(f.vocab());
  CHECK(!bitwise_equal(&logits[0], &logits[V], V));
}

TEST(batching_two_sequences_matches_each_alone_bitwise) {
  Fixture f;
  for (DType dt : {DType::F32, DType::F16}) {  // either KV cache dtype
    const size_t V = size_t(f.vocab());
    const int32_t na = int32_t(f.a.tokens.size()), nb = int32_t(f.b.tokens.size());
    const std::vector<float> alone_a = f.prefill(f.a, dt), alone_b = f.prefill(f.b, dt);
    // Both in one forward, sequence b first so that a's rows sit at other batch indices.
    KVCache kv(f.model->config(), 8, kBlock, dt);
    ForwardBatch b;
    add_rows(b, f.b, 0, 0, nb);
    add_rows(b, f.a, 1, 0, na);
    set_tables(b, {&f.b, &f.a});
    const std::vector<float> together = run(*f.model, kv, b);
    CHECK(bitwise_equal(together.data(), alone_b.data(), size_t(nb) * V));
    CHECK(bitwise_equal(together.data() + size_t(nb) * V, alone_a.data(), size_t(na) * V));
  }
}

TEST(chunked_prefill_and_decode_match_one_prefill_bitwise) {
  Fixture f;
  for (DType dt : {DType::F32, DType::F16}) {  // either KV cache dtype
    const size_t V = size_t(f.vocab());
    const std::vector<float> whole = f.prefill(f.b, dt);
    // Chunks of 9 and 6 rows, then one row at a time, each forward asking only for the last row.
    KVCache kv(f.model->config(), 8, kBlock, dt);
    const std::vector<std::pair<int32_t, int32_t>> steps = {{0, 9}, {9, 15}, {15, 16}, {16, 17},
                                                            {17, 18}, {18, 19}, {19, 20}};
    for (auto [start, end] : steps) {
      ForwardBatch b;
      add_rows(b, f.b, 0, start, end);
      b.logit_rows = {int32_t(end - start - 1)};
      set_tables(b, {&f.b});
      std::vector<float> last = run(*f.model, kv, b);
      CHECK(bitwise_equal(last.data(), whole.data() + size_t(end - 1) * V, V));
    }
  }
}

// An f16 KV cache changes each cached key and value by one f16 rounding (relative 2^-11):
// the logits move by about that much, and no more.
TEST(an_f16_kv_cache_stays_close_to_f32) {
  Fixture f;
  const ModelConfig& c = f.model->config();
  CHECK(KVCache(c, 8, kBlock, DType::F16).bytes() * 2 == KVCache(c, 8, kBlock).bytes());
  const std::vector<float> a = f.prefill(f.b, DType::F32), b = f.prefill(f.b, DType::F16);
  float worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(a[i]));
  }
  std::fprintf(stderr, "  f16 KV: max |logit difference| %.3g of logits up to %.3g\n",
               double(worst), double(scale));
  CHECK(worst > 0);  // the cache really held f16
  CHECK(worst < 2e-3f * scale);
}

// Layer-to-backend mapping: the same decoder split over two backends (layers 0-1 on one, the
// rest and the LM head on another, so the hidden state crosses twice) gives the same logits as
// one backend, bit for bit, and each layer's KV lives with its backend.
TEST(layers_split_across_backends_give_the_same_logits) {
  Fixture f;
  ForwardBatch batch;
  add_rows(batch, f.b, 0, 0, 20);
  set_tables(batch, {&f.b});
  KVCache kv(f.model->config(), 8, kBlock);
  const std::vector<float> one = run(*f.model, kv, batch);

  std::unique_ptr<Backend> first = make_cpu_backend(f.pool), second = make_cpu_backend(f.pool);
  const int layers = f.model->config().num_layers;
  CHECK(layers >= 2);
  ModelPlacement placement{second.get(), {}};
  for (int i = 0; i < layers; ++i) placement.layers.push_back(i < 1 ? first.get() : second.get());
  placement.io = first.get();  // embedding on `first`, layer 0 on `first`, the rest elsewhere
  auto split = Model::load(f.dir.path.string(), placement);
  CHECK(&split->io_backend() == first.get());
  CHECK(split->layer_backends()[size_t(layers - 1)] == second.get());
  KVCache kv_split(split->config(), 8, kBlock, split->layer_backends());
  const std::vector<float> two = run(*split, kv_split, batch);
  CHECK(one.size() == two.size());
  CHECK(bitwise_equal(one.data(), two.data(), one.size()));

  ModelPlacement too_few{first.get(), {first.get()}};
  CHECK_THROWS(InvalidRequest, Model::load(f.dir.path.string(), too_few), "layers");
}

TEST(forward_refuses_a_malformed_batch) {
  Fixture f;
  KVCache kv(f.model->config(), 8, kBlock);
  ForwardBatch good;
  add_rows(good, f.a, 0, 0, int32_t(f.a.tokens.size()));
  set_tables(good, {&f.a});
  std::vector<float> logits(good.logit_rows.size() * size_t(f.vocab()));

  ForwardBatch b = good;
  b.slot_mapping[0] = 8 * kBlock;
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "slot");
  b = good;
  b.block_tables[1] = -1;  // position 4..6 live in the second block
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "block 1");
  b = good;
  b.token_seq[2] = 1;
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "sequence 1");
  b = good;
  b.positions.pop_back();
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "same length");
  b = good;
  b.logit_rows = {7};
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "logit row 7");
  b = good;
  b.tokens[0] = int32_t(f.vocab());
  CHECK_THROWS(InvalidRequest, f.model->forward(b, kv, logits.data()), "");
}

TEST(tied_embeddings_need_no_lm_head) {
  TempDir dir("model_tied");
  TinyCheckpoint ck;
  ck.tie = true;
  ck.fill_random(3);
  ck.write(dir.path);
  ThreadPool pool(1);
  auto m = Model::load(dir.path.string(), pool);
  CHECK(m->config().tie_word_embeddings);
  KVCache kv(m->config(), 2, kBlock);
  Seq s{{4, 8, 15}, {1}};
  ForwardBatch b;
  add_rows(b, s, 0, 0, 3);
  set_tables(b, {&s});
  std::vector<float> logits = run(*m, kv, b);
  CHECK(std::isfinite(logits[0]));
}

TEST(load_names_a_missing_or_misshaped_tensor) {
  TempDir dir("model_bad");
  TinyCheckpoint ck;
  ck.fill_random(1);
  ck.tensors.erase("model.layers.1.mlp.up_proj.weight");
  ck.write(dir.path);
  ThreadPool pool(1);
  CHECK_THROWS(InvalidCheckpoint, Model::load(dir.path.string(), pool),
               "model.layers.1.mlp.up_proj.weight");

  TinyCheckpoint wrong;
  wrong.fill_random(1);
  wrong.tensors["model.layers.0.self_attn.k_proj.weight"].shape = {8, 64};  // same bytes
  wrong.write(dir.path);
  CHECK_THROWS(InvalidCheckpoint, Model::load(dir.path.string(), pool),
               "model.layers.0.self_attn.k_proj.weight");

  TinyCheckpoint no_bias;
  no_bias.fill_random(1);
  no_bias.tensors.erase("model.layers.0.self_attn.o_proj.bias");
  no_bias.write(dir.path);
  CHECK_THROWS(InvalidCheckpoint, Model::load(dir.path.string(), pool),
               "model.layers.0.self_attn.o_proj.bias");
}

TEST(load_refuses_integer_weights) {
  TempDir dir("model_int");
  TinyCheckpoint ck;
  ck.fill_random(1);
  ck.tensors["model.layers.0.self_attn.v_proj.weight"].dtype = "I32";
  ck.write(dir.path);
  ThreadPool pool(1);
  CHECK_THROWS(InvalidCheckpoint, Model::load(dir.path.string(), pool),
               "model.layers.0.self_attn.v_proj.weight");
}

TEST(stage_enqueue_read_is_forward_and_reserve_keeps_buffers_in_place) {
  // forward() in its three parts (what a CUDA graph captures the middle of) gives the same
  // logits; once reserve() covers a batch no buffer moves, and a larger batch moves some.
  Fixture f;
  const int32_t na = int32_t(f.a.tokens.size());
  const std::vector<float> whole = f.prefill(f.a, DType::F32);
  KVCache kv(f.model->config(), 8, kBlock);
  ForwardBatch b;
  add_rows(b, f.a, 0, 0, na);
  set_tables(b, {&f.a});
  f.model->reserve(na, na, b.max_blocks);
  const int64_t moves = f.model->buffer_moves();
  std::vector<float> parts(whole.size());
  f.model->stage(b, kv);
  f.model->enqueue(kv, parts.data());
  f.model->read_logits(parts.data(), na);  // a host io backend wrote them in enqueue
  CHECK(bitwise_equal(parts.data(), whole.data(), whole.size()));
  CHECK(f.model->buffer_moves() == moves);
  ForwardBatch longer;
  add_rows(longer, f.b, 0, 0, int32_t(f.b.tokens.size()));
  set_tables(longer, {&f.b});
  KVCache kv2(f.model->config(), 8, kBlock);
  std::vector<float> logits(longer.logit_rows.size() * size_t(f.vocab()));
  f.model->forward(longer, kv2, logits.data());
  CHECK(f.model->buffer_moves() > moves);
}
