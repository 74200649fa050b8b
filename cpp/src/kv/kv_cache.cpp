#include "medrt/kv_cache.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "medrt/error.h"

namespace medrt {

int64_t KVCache::bytes_per_block(const ModelConfig& c, int64_t block_size) {
  return int64_t(c.num_layers) * 2 * c.num_kv_heads * block_size * c.head_dim * int64_t(sizeof(float));
}

void KVCache::check_sizes() const {
  if (num_blocks_ <= 0 || block_size_ <= 0)
    throw InvalidRequest("KV cache needs num_blocks > 0 and block_size > 0 (got " +
                         std::to_string(num_blocks_) + ", " + std::to_string(block_size_) + ")");
  // Slots (block * block_size + offset) and block ids travel as int32 in every batch.
  if (num_blocks_ > INT32_MAX / block_size_)
    throw CapacityError("KV cache of " + std::to_string(num_blocks_) + " blocks x " +
                        std::to_string(block_size_) + " tokens exceeds the 2^31 - 1 slots a " +
                        "32-bit slot index can address");
  int64_t floats = 0;
  if (__builtin_mul_overflow(num_layers_ * 2 * n_kv_heads_ * block_size_ * head_dim_, num_blocks_,
                             &floats) ||
      uint64_t(floats) > SIZE_MAX / sizeof(float))
    throw CapacityError("KV cache of " + std::to_string(num_blocks_) + " blocks does not fit in " +
                        "the address space");
}

KVCache::KVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size)
    : num_layers_(c.num_layers), num_blocks_(num_blocks), block_size_(block_size),
      n_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim) {
  check_sizes();
  host_.assign(size_t(num_layers_ * 2 * per_tensor()), 0.0f);
}

KVCache::KVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size,
                 const std::vector<Backend*>& layer_backends)
    : num_layers_(c.num_layers), num_blocks_(num_blocks), block_size_(block_size),
      n_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim) {
  check_sizes();
  if (int64_t(layer_backends.size()) != num_layers_)
    throw InvalidRequest("KV cache: " + std::to_string(layer_backends.size()) +
                         " layer backends for " + std::to_string(num_layers_) + " layers");
  const size_t bytes = size_t(2 * per_tensor()) * sizeof(float);
  layer_memory_.reserve(size_t(num_layers_));
  for (Backend* b : layer_backends) {
    layer_memory_.emplace_back(*b, bytes);
    if (b->is_host()) {
      float* p = layer_memory_.back().get<float>();
      std::fill(p, p + 2 * per_tensor(), 0.0f);
    }
  }
}

cpu::PagedKV KVCache::layer(int64_t l) {
  float* base = layer_memory_.empty() ? host_.data() + l * 2 * per_tensor()
                                      : layer_memory_[size_t(l)].get<float>();
  return cpu::PagedKV{base, base + per_tensor(), num_blocks_, block_size_, n_kv_heads_, head_dim_};
}

}  // namespace medrt
