#include <numeric>
#include <string>

#include "check.h"
#include "engine/block_manager.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"

using namespace medrt;
using namespace medrt::engine;

namespace {

Sequence make_seq(uint64_t id, std::vector<int32_t> tokens) {
  return Sequence(id, std::move(tokens), SamplingParams{}, id);
}

std::vector<int32_t> range(int32_t begin, int32_t end) {
  std::vector<int32_t> v(size_t(end - begin));
  std::iota(v.begin(), v.end(), begin);
  return v;
}

// Marks every token computed, as the engine does after the forward pass.
void compute_all(BlockManager& bm, Sequence& s) {
  CHECK(bm.allocate(s, s.num_uncomputed_tokens()));
  s.num_computed_tokens = s.num_tokens();
  bm.commit(s);
}

}  // namespace

TEST(allocate_and_free_restore_the_pool) {
  BlockManager bm(8, 4, true);
  Sequence a = make_seq(1, range(0, 10));
  CHECK(bm.allocate(a, 10));
  CHECK(a.block_table.size() == 3);
  CHECK(bm.num_free() == 5);
  for (int32_t b : a.block_table) CHECK(bm.ref_count(b) == 1);
  CHECK(bm.allocate(a, 2));  // 12 tokens still fit in 3 blocks
  CHECK(bm.num_free() == 5);
  bm.free(a);
  CHECK(a.block_table.empty());
  CHECK(a.num_computed_tokens == 0);
  CHECK(bm.num_free() == 8);
}

TEST(allocate_fails_without_side_effects) {
  BlockManager bm(2, 4, true);
  Sequence a = make_seq(1, range(0, 12));
  CHECK(!bm.allocate(a, 12));
  CHECK(a.block_table.empty());
  CHECK(bm.num_free() == 2);
  CHECK_THROWS(InvalidRequest, BlockManager(0, 4, true), "num_blocks");
}

TEST(shared_prefix_is_reused_and_counted) {
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, range(0, 22));  // 5 full blocks + 2 tokens
  compute_all(bm, a);
  CHECK(a.block_hashes.size() == 5);

  std::vector<int32_t> tb = range(0, 12);  // 3 full blocks shared, then a different tail
  tb.push_back(999);
  tb.push_back(998);
  Sequence b = make_seq(2, tb);
  std::vector<int32_t> prefix = bm.find_prefix(b);
  CHECK(prefix.size() == 3);
  CHECK(bm.num_free_in(prefix) == 0);  // a still holds them
  bm.acquire_prefix(b, prefix);
  CHECK(b.num_computed_tokens == 12);
  CHECK(bm.prefix_queries() == 3);  // (14 - 1) / 4 full blocks looked up
  CHECK(bm.prefix_hits() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(b.block_table[size_t(i)] == a.block_table[size_t(i)]);
    CHECK(bm.ref_count(a.block_table[size_t(i)]) == 2);
  }
  CHECK(bm.ref_count(a.block_table[3]) == 1);
  int64_t free_before = bm.num_free();
  CHECK(bm.allocate(b, 2));
  CHECK(bm.num_free() == free_before - 1);
  bm.free(a);
  bm.free(b);
  CHECK(bm.num_free() == 16);
}

TEST(prompt_logprobs_limit_the_prefix_served) {
  // Prompt-token scores need the logits of every scored position: those positions must be
  // computed, not served from the cache; the positions before them may be.
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, range(0, 22));
  compute_all(bm, a);
  SamplingParams p;
  p.prompt_logprobs = 0;
  Sequence all(2, range(0, 22), p, 2);  // scores tokens 1..21: position 0 onwards computed
  CHECK(all.prefix_cache_limit() == 0);
  CHECK(bm.find_prefix(all).empty());
  p.prompt_logprobs_start = 14;  // scores tokens 14..21: positions 13.. computed
  Sequence tail(3, range(0, 22), p, 3);
  CHECK(tail.prefix_cache_limit() == 13);
  CHECK(bm.find_prefix(tail).size() == 3);  // 12 tokens: the full blocks within 13
  CHECK(tail.prompt_logprob_rows(12, 10) == std::pair(13, 21));  // the last is sampled
  CHECK(tail.prompt_logprob_rows(0, 12) == std::pair(0, 0));     // nothing scored before 13
  tail.prompt_logprobs.resize(3);  // tokens 14..16 scored, e.g. before a preemption
  CHECK(tail.prefix_cache_limit() == 16);
  CHECK(tail.prompt_logprob_rows(12, 10) == std::pair(16, 21));
  tail.prompt_logprobs.resize(8);  // every prompt token scored: back to the usual limit
  CHECK(tail.prefix_cache_limit() == 21);
  CHECK(tail.prompt_logprob_rows(12, 10) == std::pair(12, 12));
  bm.free(a);
}

TEST(prefix_differs_in_first_block_misses) {
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, range(0, 16));
  compute_all(bm, a);
  std::vector<int32_t> tb = range(0, 16);
  tb[1] = 77;  // the chain makes every later block differ too
  Sequence b = make_seq(2, tb);
  CHECK(bm.find_prefix(b).empty());
}

TEST(last_token_is_always_left_to_compute) {
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, range(0, 8));
  compute_all(bm, a);
  CHECK(a.block_hashes.size() == 2);
  Sequence b = make_seq(2, range(0, 8));  // identical: only the first block may be reused
  CHECK(bm.find_prefix(b).size() == 1);
  Sequence c = make_seq(3, range(0, 9));
  CHECK(bm.find_prefix(c).size() == 2);
}

TEST(freed_blocks_stay_cached_until_reallocated) {
  BlockManager bm(6, 4, true);
  Sequence a = make_seq(1, range(0, 10));  // blocks: 2 full (hashed) + 1 partial
  compute_all(bm, a);
  std::vector<int32_t> a_blocks = a.block_table;
  bm.free(a);
  CHECK(bm.num_free() == 6);

  Sequence b = make_seq(2, range(0, 9));
  std::vector<int32_t> prefix = bm.find_prefix(b);
  CHECK(prefix.size() == 2);
  CHECK(bm.num_free_in(prefix) == 2);
  bm.acquire_prefix(b, prefix);
  CHECK(bm.num_free() == 4);
  CHECK(b.block_table[0] == a_blocks[0] && b.block_table[1] == a_blocks[1]);
  bm.free(b);

  // The partial block held nothing reusable: it is handed out before the cached ones.
  Sequence c = make_seq(3, range(100, 104));
  CHECK(bm.allocate(c, 4));
  CHECK(c.block_table[0] == a_blocks[2]);
  CHECK(bm.find_prefix(b).size() == 2);

  // Taking the whole pool evicts them.
  Sequence d = make_seq(4, range(200, 220));
  CHECK(bm.allocate(d, 20));
  CHECK(bm.num_free() == 0);
  CHECK(bm.find_prefix(b).empty());
}

TEST(each_lora_adapter_has_its_own_prefix_chain) {
  BlockManager bm(16, 4, true);
  Sequence base = make_seq(1, range(0, 9));
  compute_all(bm, base);
  Sequence adapted = make_seq(2, range(0, 9));
  adapted.prefix_salt = 7;  // the same tokens under a LoRA adapter: other K/V
  CHECK(bm.find_prefix(adapted).empty());
  compute_all(bm, adapted);
  Sequence again = make_seq(3, range(0, 9));
  again.prefix_salt = 7;
  CHECK(bm.find_prefix(again).size() == 2);
  Sequence other = make_seq(4, range(0, 9));
  other.prefix_salt = 8;
  CHECK(bm.find_prefix(other).empty());
  CHECK(bm.find_prefix(make_seq(5, range(0, 9))).size() == 2);  // the base's own
}

TEST(prefix_caching_off_never_hits) {
  BlockManager bm(8, 4, false);
  Sequence a = make_seq(1, range(0, 12));
  compute_all(bm, a);
  CHECK(a.block_hashes.empty());
  Sequence b = make_seq(2, range(0, 12));
  CHECK(bm.find_prefix(b).empty());
  bm.acquire_prefix(b, {});
  CHECK(bm.prefix_queries() == 0);
}

TEST(pool_beyond_32_bit_slots_is_refused_before_allocating) {
  // Block ids and slots are int32: 2^28 blocks of 16 tokens would wrap the slot index.
  CHECK_THROWS(medrt::CapacityError, BlockManager(int64_t(1) << 28, 16, true), "32-bit slot index");
  CHECK_THROWS(medrt::CapacityError, BlockManager(int64_t(1) << 33, 1, false), "32-bit slot index");
  medrt::ModelConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  CHECK_THROWS(medrt::CapacityError, medrt::KVCache(c, int64_t(1) << 28, 16), "32-bit slot index");
  CHECK(medrt::KVCache(c, 4, 16).bytes() == 2 * 2 * 4 * 16 * 8 * 4);
}

TEST(kv_cache_dtype_sets_the_bytes_and_only_f32_or_f16_are_taken) {
  medrt::ModelConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 1;
  c.head_dim = 8;
  using medrt::DType;
  medrt::KVCache half(c, 4, 16, DType::F16);
  CHECK(half.bytes() == 2 * 2 * 4 * 16 * 8 * 2);
  CHECK(half.bytes() == 4 * medrt::KVCache::bytes_per_block(c, 16, DType::F16));
  CHECK(half.layer(1).dtype == DType::F16);
  CHECK(static_cast<uint8_t*>(half.layer(1).k) - static_cast<uint8_t*>(half.layer(0).k) ==
        half.bytes() / 2);
  CHECK_THROWS(medrt::InvalidRequest, medrt::KVCache(c, 4, 16, DType::BF16),
               "KV cache dtype BF16 is not supported");
  CHECK(medrt::parse_kv_cache_dtype("f16") == DType::F16);
  CHECK(std::string(medrt::kv_cache_dtype_name(DType::F32)) == "f32");
  CHECK_THROWS(medrt::InvalidRequest, medrt::parse_kv_cache_dtype("fp8"),
               "KV cache dtype 'fp8' is not one of: f32, f16");
}
