#include "medrt/kv_cache.h"

#include <climits>
#include <cstdint>
#include <string>

#include "medrt/error.h"

namespace medrt {

int64_t KVCache::bytes_per_block(const ModelConfig& c, int64_t block_size) {
  return int64_t(c.num_layers) * 2 * c.num_kv_heads * block_size * c.head_dim * int64_t(sizeof(float));
}

KVCache::KVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size)
    : num_layers_(c.num_layers), num_blocks_(num_blocks), block_size_(block_size),
      n_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim) {
  if (num_blocks <= 0 || block_size <= 0)
    throw InvalidRequest("KV cache needs num_blocks > 0 and block_size > 0 (got " +
                         std::to_string(num_blocks) + ", " + std::to_string(block_size) + ")");
  // Slots (block * block_size + offset) and block ids travel as int32 in every batch.
  if (num_blocks > INT32_MAX / block_size)
    throw CapacityError("KV cache of " + std::to_string(num_blocks) + " blocks x " +
                        std::to_string(block_size) + " tokens exceeds the 2^31 - 1 slots a " +
                        "32-bit slot index can address");
  int64_t floats = 0;
  if (__builtin_mul_overflow(bytes_per_block(c, block_size) / int64_t(sizeof(float)), num_blocks,
                             &floats) ||
      uint64_t(floats) > SIZE_MAX / sizeof(float))
    throw CapacityError("KV cache of " + std::to_string(num_blocks) + " blocks does not fit in " +
                        "the address space");
  data_.assign(size_t(num_layers_ * 2 * num_blocks_ * n_kv_heads_ * block_size_ * head_dim_), 0.0f);
}

cpu::PagedKV KVCache::layer(int64_t l) {
  int64_t per_tensor = num_blocks_ * n_kv_heads_ * block_size_ * head_dim_;
  float* base = data_.data() + l * 2 * per_tensor;
  return cpu::PagedKV{base, base + per_tensor, num_blocks_, block_size_, n_kv_heads_, head_dim_};
}

}  // namespace medrt
