#include "model/batch_check.h"

#include <string>

#include "medrt/error.h"

namespace medrt::model {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw InvalidRequest("forward batch: " + what);
}

void check_cache(KVCache& kv, const ModelConfig& c) {
  cpu::PagedKV l0 = kv.layer(0);
  if (l0.n_kv_heads != c.num_kv_heads || l0.head_dim != c.head_dim ||
      kv.bytes() != kv.num_blocks() * KVCache::bytes_per_block(c, kv.block_size(), kv.dtype()))
    fail("the KV cache was built for a different model (layers, KV heads or head_dim)");
}

}  // namespace

void check_batch(const ForwardBatch& b, KVCache& kv, const ModelConfig& c,
                 std::vector<int64_t>& last_pos) {
  check_cache(kv, c);
  const size_t T = b.tokens.size();
  if (b.positions.size() != T || b.token_seq.size() != T || b.slot_mapping.size() != T)
    fail("tokens, positions, token_seq and slot_mapping must have the same length");
  if (b.n_seqs < 0 || b.max_blocks < 0 || int64_t(b.block_tables.size()) != b.n_seqs * b.max_blocks)
    fail("block_tables must hold n_seqs * max_blocks entries");

  const int64_t bs = kv.block_size(), num_slots = kv.num_blocks() * bs;
  last_pos.assign(size_t(b.n_seqs), -1);
  for (size_t t = 0; t < T; ++t) {
    const int32_t s = b.token_seq[t], pos = b.positions[t], slot = b.slot_mapping[t];
    if (s < 0 || s >= b.n_seqs) fail("row " + std::to_string(t) + " names sequence " +
                                     std::to_string(s) + " of " + std::to_string(b.n_seqs));
    if (pos < 0) fail("row " + std::to_string(t) + " has negative position");
    if (slot >= num_slots)
      fail("row " + std::to_string(t) + " writes slot " + std::to_string(slot) +
           " of a cache with " + std::to_string(num_slots));
    if (pos > last_pos[size_t(s)]) last_pos[size_t(s)] = pos;
  }
  // Attention reads every block up to the row's position, so each must be a real block.
  for (int64_t s = 0; s < b.n_seqs; ++s) {
    if (last_pos[size_t(s)] < 0) continue;
    const int64_t needed = last_pos[size_t(s)] / bs + 1;
    if (needed > b.max_blocks)
      fail("sequence " + std::to_string(s) + " reaches position " +
           std::to_string(last_pos[size_t(s)]) + " beyond its " + std::to_string(b.max_blocks) +
           " blocks");
    for (int64_t i = 0; i < needed; ++i) {
      const int32_t blk = b.block_tables[size_t(s * b.max_blocks + i)];
      if (blk < 0 || blk >= kv.num_blocks())
        fail("sequence " + std::to_string(s) + " block " + std::to_string(i) + " is " +
             std::to_string(blk) + ", not a block of the cache (" +
             std::to_string(kv.num_blocks()) + ")");
    }
  }
  for (int32_t r : b.logit_rows)
    if (r < 0 || size_t(r) >= T) fail("logit row " + std::to_string(r) + " is not a row of the batch");
}

}  // namespace medrt::model
