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
  for (int32_t i = 0; i < int32_t(num_blocks); ++i)
    blocks_[size_t(i)].free_pos = free_.insert(free_.end(), i);
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
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    const Block& blk = blocks_[size_t(it->second)];
    if (blk.parent_hash != parent || !std::equal(blk.tokens.begin(), blk.tokens.end(), toks)) break;
    found.push_back(it->second);
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
    if (blk.ref_count++ == 0) free_.erase(blk.free_pos);
    seq.block_table.push_back(id);
    seq.block_hashes.push_back(blk.hash);
  }
  seq.num_computed_tokens = int(prefix.size()) * block_size_;
}

void BlockManager::unhash(int32_t id) {
  Block& blk = blocks_[size_t(id)];
  if (!blk.hashed) return;
  auto it = cached_.find(blk.hash);
  if (it != cached_.end() && it->second == id) cached_.erase(it);
  blk.hashed = false;
  blk.tokens.clear();
}

int32_t BlockManager::take_free_front() {
  int32_t id = free_.front();
  free_.pop_front();
  unhash(id);
  blocks_[size_t(id)].ref_count = 1;
  return id;
}

bool BlockManager::allocate(Sequence& seq, int n) {
  int64_t need = blocks_for(int64_t(seq.num_computed_tokens) + n) - int64_t(seq.block_table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
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
    if (blk.hashed || cached_.count(h)) continue;
    blk.hashed = true;
    blk.hash = h;
    blk.parent_hash = parent;
    blk.tokens.assign(toks, toks + block_size_);
    cached_.emplace(h, id);
  }
}

void BlockManager::free(Sequence& seq) {
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& blk = blocks_[size_t(*it)];
    if (--blk.ref_count != 0) continue;
    // Unhashed blocks hold nothing reusable: hand them out before any cached block.
    blk.free_pos = free_.insert(blk.hashed ? free_.end() : free_.begin(), *it);
  }
  seq.block_table.clear();
  seq.block_hashes.clear();
  seq.num_computed_tokens = 0;
}

}  // namespace medrt::engine
