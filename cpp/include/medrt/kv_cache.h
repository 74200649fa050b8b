// The paged KV pool: every layer's K and V blocks, each layer in the memory of the backend that
// runs it (layer-to-device mapping). Which block belongs to which sequence is the
// BlockManager's business (engine/); this class only owns memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "medrt/backend.h"
#include "medrt/config.h"
#include "medrt/kernels.h"

namespace medrt {

// The KV cache dtype as users spell it ("f32", "f16": EngineConfig's Python binding, the CLI,
// the replay fingerprint); another name is InvalidRequest listing these.
DType parse_kv_cache_dtype(const std::string& name);
const char* kv_cache_dtype_name(DType dtype);

class KVCache {
 public:
  // All layers in host memory (what the CPU backend reads). dtype: F32 or F16 (kernels.h
  // PagedKV); another is InvalidRequest.
  KVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size,
          DType dtype = DType::F32);
  // Layer l in the memory of layer_backends[l] (one entry per layer).
  KVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size,
          const std::vector<Backend*>& layer_backends, DType dtype = DType::F32);

  // Bytes one block takes across all layers (K and V of `dtype`).
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size,
                                 DType dtype = DType::F32);

  int64_t num_layers() const { return num_layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  int64_t bytes() const { return num_layers_ * 2 * tensor_bytes(); }
  // Layer l's K/V: [num_blocks, n_kv_heads, block_size, head_dim] of dtype() each.
  cpu::PagedKV layer(int64_t layer);

 private:
  // Bytes of one layer's K (or V): [num_blocks, n_kv_heads, block_size, head_dim] of dtype_.
  int64_t tensor_bytes() const {
    return num_blocks_ * n_kv_heads_ * block_size_ * head_dim_ * int64_t(dtype_size(dtype_));
  }
  void check_sizes() const;

  int64_t num_layers_, num_blocks_, block_size_, n_kv_heads_, head_dim_;
  DType dtype_;
  std::vector<uint8_t> host_;              // [layer][k|v][block][kv_head][slot][head_dim]
  std::vector<DeviceBuffer> layer_memory_;  // or one [k|v][...] buffer per layer
};

}  // namespace medrt
