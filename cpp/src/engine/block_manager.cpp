#include "engine/block_manager.h"

#include <algorithm>
#include <climits>

#include "medrt/error.h"

namespace medrt::engine {
namespace {

// The chain root; a block's hash also covers its parent's, so it identifies the whole prefix.
constexpr uint64_t kRootHash = 0x6d65647274ull;

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The chain root of a sequence: K/V computed under a LoRA adapter differ from the base's and
// from every other adapter's, so each adapter's blocks form their own chain.
uint64_t root_hash(const Sequence& seq) {
  return seq.prefix_salt == 0 ? kRootHash : mix(kRootHash ^ mix(seq.prefix_salt));
}

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks <= 0 || block_size <= 0)
    throw InvalidRequest("the KV pool needs num_blocks > 0 and block_size > 0 (got " +
                         std::to_string(num_blocks) + ", " + std::to_string(block_size) + ")");
  // Block ids are int32 in block tables, and so are slots (block * block_size + offset).
  if (num_blocks > INT32_MAX / block_size)
    throw CapacityError("KV pool of " + std::to_string(num_blocks) + " blocks x " +
                        std::to_string(block_size) + " tokens exceeds the 2^31 - 1 slots a " +
                        "32-bit slot index can address");
  blocks_.resize(size_t(num_blocks));
  for (int32_t i = 0; i < int32_t(num_blocks); ++i) free_push(i, false);
  if (prefix_caching_) {
    size_t n = 1;
    while (n < size_t(num_blocks)) n <<= 1;
    buckets_.assign(n, -1);
    bucket_mask_ = n - 1;
    for (Block& b : blocks_) b.tokens.reserve(size_t(block_size));
  }
}

void BlockManager::free_push(int32_t id, bool front) {
  Block& b = blocks_[size_t(id)];
  if (free_head_ < 0) {
    b.free_prev = b.free_next = -1;
    free_head_ = free_tail_ = id;
  } else if (front) {
    b.free_prev = -1;
    b.free_next = free_head_;
    blocks_[size_t(free_head_)].free_prev = id;
    free_head_ = id;
  } else {
    b.free_next = -1;
    b.free_prev = free_tail_;
    blocks_[size_t(free_tail_)].free_next = id;
    free_tail_ = id;
  }
  ++num_free_;
}

void BlockManager::free_erase(int32_t id) {
  Block& b = blocks_[size_t(id)];
  (b.free_prev >= 0 ? blocks_[size_t(b.free_prev)].free_next : free_head_) = b.free_next;
  (b.free_next >= 0 ? blocks_[size_t(b.free_next)].free_prev : free_tail_) = b.free_prev;
  b.free_prev = b.free_next = -1;
  --num_free_;
}

int32_t BlockManager::cached_find(uint64_t h) const {
  for (int32_t id = buckets_[size_t(h & bucket_mask_)]; id >= 0; id = blocks_[size_t(id)].bucket_next)
    if (blocks_[size_t(id)].hash == h) return id;
  return -1;
}

void BlockManager::cached_insert(int32_t id) {
  int32_t& head = buckets_[size_t(blocks_[size_t(id)].hash & bucket_mask_)];
  blocks_[size_t(id)].bucket_next = head;
  head = id;
}

void BlockManager::cached_erase(int32_t id) {
  int32_t* link = &buckets_[size_t(blocks_[size_t(id)].hash & bucket_mask_)];
  while (*link >= 0 && *link != id) link = &blocks_[size_t(*link)].bucket_next;
  if (*link == id) *link = blocks_[size_t(id)].bucket_next;
  blocks_[size_t(id)].bucket_next = -1;
}

uint64_t BlockManager::hash_block(uint64_t parent, const int32_t* tokens) const {
  uint64_t h = mix(parent + 0x9e3779b97f4a7c15ull);
  for (int i = 0; i < block_size_; ++i) h = mix(h ^ (uint64_t(uint32_t(tokens[i])) + 0x9e3779b97f4a7c15ull));
  return h;
}

std::vector<int32_t> BlockManager::find_prefix(const Sequence& seq) const {
  std::vector<int32_t> found;
  if (!prefix_caching_) return found;
  int max_blocks = seq.prefix_cache_limit() / block_size_;
  uint64_t parent = root_hash(seq);
  for (int b = 0; b < max_blocks; ++b) {
    const int32_t* toks = seq.tokens.data() + size_t(b) * size_t(block_size_);
    uint64_t h = hash_block(parent, toks);
    const int32_t id = cached_find(h);
    if (id < 0) break;
    const Block& blk = blocks_[size_t(id)];
    if (blk.parent_hash != parent || !std::equal(blk.tokens.begin(), blk.tokens.end(), toks)) break;
    found.push_back(id);
    parent = h;
  }
  return found;
}

int64_t BlockManager::num_free_in(const std::vector<int32_t>& prefix) const {
  return std::count_if(prefix.begin(), prefix.end(),
                       [&](int32_t id) { return blocks_[size_t(id)].ref_count == 0; });
}

void BlockManager::acquire_prefix(Sequence& seq, const std::vector<int32_t>& prefix) {
  if (!prefix_caching_) return;
  queries_ += seq.prefix_cache_limit() / block_size_;
  hits_ += int64_t(prefix.size());
  for (int32_t id : prefix) {
    Block& blk = blocks_[size_t(id)];
    if (blk.ref_count++ == 0) free_erase(id);
    seq.block_table.push_back(id);
    seq.block_hashes.push_back(blk.hash);
  }
  seq.num_computed_tokens = int(prefix.size()) * block_size_;
}

void BlockManager::unhash(int32_t id) {
  Block& blk = blocks_[size_t(id)];
  if (!blk.hashed) return;
  cached_erase(id);
  blk.hashed = false;
  blk.tokens.clear();
}

int32_t BlockManager::take_free_front() {
  int32_t id = free_head_;
  free_erase(id);
  unhash(id);
  blocks_[size_t(id)].ref_count = 1;
  return id;
}

bool BlockManager::allocate(Sequence& seq, int n) {
  int64_t need = blocks_for(int64_t(seq.num_computed_tokens) + n) - int64_t(seq.block_table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  // Room for the blocks of every token the sequence reserved (tokens.capacity(): prompt and
  // completion), so that decoding never grows the tables.
  const size_t room = size_t(blocks_for(int64_t(seq.tokens.capacity())));
  if (seq.block_table.capacity() < room) seq.block_table.reserve(room);
  if (prefix_caching_ && seq.block_hashes.capacity() < room) seq.block_hashes.reserve(room);
  for (int64_t i = 0; i < need; ++i) seq.block_table.push_back(take_free_front());
  return true;
}

void BlockManager::commit(Sequence& seq) {
  if (!prefix_caching_) return;
  size_t full = size_t(seq.num_computed_tokens / block_size_);
  while (seq.block_hashes.size() < full) {
    size_t b = seq.block_hashes.size();
    uint64_t parent = b == 0 ? root_hash(seq) : seq.block_hashes[b - 1];
    const int32_t* toks = seq.tokens.data() + b * size_t(block_size_);
    uint64_t h = hash_block(parent, toks);
    seq.block_hashes.push_back(h);
    int32_t id = seq.block_table[b];
    Block& blk = blocks_[size_t(id)];
    // An equal block computed by another sequence keeps the cache entry; this one stays private.
    if (blk.hashed || cached_find(h) >= 0) continue;
    blk.hashed = true;
    blk.hash = h;
    blk.parent_hash = parent;
    blk.tokens.assign(toks, toks + block_size_);
    cached_insert(id);
  }
}

void BlockManager::free(Sequence& seq) {
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& blk = blocks_[size_t(*it)];
    if (--blk.ref_count != 0) continue;
    // Unhashed blocks hold nothing reusable: hand them out before any cached block.
    free_push(*it, !blk.hashed);
  }
  seq.block_table.clear();
  seq.block_hashes.clear();
  seq.num_computed_tokens = 0;
}

}  // namespace medrt::engine
