// Bookkeeping of the paged KV pool (the memory itself is medrt::KVCache): which blocks are
// free, how many sequences share each block, and which full blocks hold which tokens.
//
// Prefix caching: every full block whose K/V are computed gets a hash chained from the
// previous block's hash and its own token ids, so equal hashes mean equal prefixes. A hashed
// block whose last user leaves keeps its hash and goes to the back of the free list; it can be
// revived by a prefix hit until allocation reaches it at the front (least recently freed
// first). Unhashed blocks go to the front: they hold nothing worth keeping. A sequence's blocks
// are released newest first, so a shared prefix outlives its tail.
//
// The free list and the hash index are intrusive (links stored in the blocks, one bucket
// array sized at construction), so that allocating, freeing and hashing blocks never touches
// the heap: a steady decode step allocates nothing (test_engine_step_allocs).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/sequence.h"

namespace medrt::engine {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching);

  int64_t num_blocks() const { return int64_t(blocks_.size()); }
  int block_size() const { return block_size_; }
  int64_t num_free() const { return num_free_; }
  int ref_count(int32_t block) const { return blocks_[size_t(block)].ref_count; }

  // Blocks needed to hold `n` tokens.
  int64_t blocks_for(int64_t n) const { return (n + block_size_ - 1) / block_size_; }

  // The cached blocks holding the longest full-block prefix of seq's tokens, within
  // seq.prefix_cache_limit() (at least the last token, whose logits are needed, and any token
  // whose logits score the prompt are left to compute). Read-only; empty without prefix caching.
  std::vector<int32_t> find_prefix(const Sequence& seq) const;
  // How many of `prefix` sit in the free list (taking them lowers num_free()).
  int64_t num_free_in(const std::vector<int32_t>& prefix) const;
  // Gives a sequence without blocks the blocks of find_prefix(seq) and marks their tokens
  // computed. Counts the prefix-cache queries and hits.
  void acquire_prefix(Sequence& seq, const std::vector<int32_t>& prefix);

  // Extends seq's block table to cover num_computed_tokens + n tokens. Returns false and
  // changes nothing when the free blocks do not suffice.
  bool allocate(Sequence& seq, int n);
  // Hashes the blocks that became full and computed (call after the forward pass).
  void commit(Sequence& seq);
  // Releases every block of seq and resets its KV state (num_computed_tokens = 0).
  void free(Sequence& seq);

  int64_t prefix_queries() const { return queries_; }
  int64_t prefix_hits() const { return hits_; }

 private:
  struct Block {
    int ref_count = 0;
    bool hashed = false;
    uint64_t hash = 0;
    uint64_t parent_hash = 0;     // with `tokens`, guards against hash collisions
    std::vector<int32_t> tokens;  // the block's token ids while hashed (capacity kept)
    int32_t free_prev = -1, free_next = -1;  // the free list's links
    int32_t bucket_next = -1;                // the next block in its hash bucket
  };

  uint64_t hash_block(uint64_t parent, const int32_t* tokens) const;
  int32_t take_free_front();
  void unhash(int32_t id);

  // The free list (front: allocated next).
  void free_push(int32_t id, bool front);
  void free_erase(int32_t id);
  // The hash index: hash -> the hashed block holding it.
  int32_t cached_find(uint64_t h) const;
  void cached_insert(int32_t id);
  void cached_erase(int32_t id);

  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  int32_t free_head_ = -1, free_tail_ = -1;
  int64_t num_free_ = 0;
  std::vector<int32_t> buckets_;  // power-of-two count, -1 = empty
  uint64_t bucket_mask_ = 0;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace medrt::engine
