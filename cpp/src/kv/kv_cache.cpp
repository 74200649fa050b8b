#include "medrt/kv_cache.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <cstdint>
#include <string>

#include "medrt/error.h"

namespace medrt {

DType parse_kv_cache_dtype(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "f16") return DType::F16;
  throw InvalidRequest("KV cache dtype '" + name + "' is not one of: f32, f16");
}

const char* kv_cache_dtype_name(DType dtype) {
  cpu::check_kv_dtype(dtype);
  return dtype == DType::F16 ? "f16" : "f32";
}

int64_t KVCache::bytes_per_block(const ModelConfig& c, int64_t block_size, DType dtype) {
  cpu::check_kv_dtype(dtype);
  return int64_t(c.num_layers) * 2 * c.num_kv_heads * block_size * c.head_dim *
         int64_t(dtype_size(dtype));
}

void KVCache::check_sizes() const {
  cpu::check_kv_dtype(dtype_);
  if (num_blocks_ <= 0 || block_size_ <= 0)
    throw InvalidRequest("KV cache needs num_blocks > 0 and block_size > 0 (got " +
                         std::to_string(num_blocks_) + ", " + std::to_string(block_size_) + ")");
  // Slots (block * block_size + offset) and block ids travel as int32 in every batch.
  if (num_blocks_ > INT32_MAX / block_size_)
    throw CapacityError("KV cache of " + std::to_string(num_blocks_) + " blocks x " +
                        std::to_string(block_size_) + " tokens exceeds the 2^31 - 1 slots a " +
                        "32-bit slot index can address");
  int64_t elems = 0;
  if (__builtin_mul_overflow(num_layers_ * 2 * n_kv_heads_ * block_size_ * head_dim_, num_blocks_,
                             &elems) ||
      uint64_t(elems) > SIZE_MAX / dtype_size(dtype_))
    throw CapacityError("KV cache of " + std::to_string(num_blocks_) + " blocks does not fit in " +
                        "the address space");
}

KVCache::KVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size, DType dtype)
    : num_layers_(c.num_layers), num_blocks_(num_blocks), block_size_(block_size),
      n_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim), dtype_(dtype) {
  check_sizes();
  host_.assign(size_t(bytes()), 0);  // zero bits are 0.0 in f32 and f16
}

KVCache::KVCache(const ModelConfig& c, int64_t num_blocks, int64_t block_size,
                 const std::vector<Backend*>& layer_backends, DType dtype)
    : num_layers_(c.num_layers), num_blocks_(num_blocks), block_size_(block_size),
      n_kv_heads_(c.num_kv_heads), head_dim_(c.head_dim), dtype_(dtype) {
  check_sizes();
  if (int64_t(layer_backends.size()) != num_layers_)
    throw InvalidRequest("KV cache: " + std::to_string(layer_backends.size()) +
                         " layer backends for " + std::to_string(num_layers_) + " layers");
  const size_t layer_bytes = size_t(2 * tensor_bytes());
  layer_memory_.reserve(size_t(num_layers_));
  for (Backend* b : layer_backends) {
    layer_memory_.emplace_back(*b, layer_bytes);
    if (b->is_host()) std::memset(layer_memory_.back().get<uint8_t>(), 0, layer_bytes);
  }
}

cpu::PagedKV KVCache::layer(int64_t l) {
  uint8_t* base = layer_memory_.empty() ? host_.data() + l * 2 * tensor_bytes()
                                        : layer_memory_[size_t(l)].get<uint8_t>();
  return cpu::PagedKV{base,        base + tensor_bytes(), num_blocks_, block_size_,
                      n_kv_heads_, head_dim_,             dtype_};
}

}  // namespace medrt
