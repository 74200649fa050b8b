// The paged KV pool: every layer's K and V blocks, each layer in the memory of the backend that
// runs it (layer-to-device mapping). Which block belongs to which sequence is the
// BlockManager's business (engine/); this class only owns memory.
#pragma once
#include <cstdint>
#include <vector>

#include "medrt/backend.h"
#include "medrt/config.h"
#include "medrt/kernels.h"

namespace medrt {

class KVCache {
 public:
  // All layers in host memory (what the CPU backend reads).
  KVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size);
  // Layer l in the memory of layer_backends[l] (one entry per layer).
  KVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size,
          const std::vector<Backend*>& layer_backends);

  // Bytes one block takes across all layers (K and V, f32).
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size);

  int64_t num_layers() const { return num_layers_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t bytes() const { return num_layers_ * 2 * per_tensor() * int64_t(sizeof(float)); }
  // Layer l's K/V: [num_blocks, n_kv_heads, block_size, head_dim] f32 each.
  cpu::PagedKV layer(int64_t layer);

 private:
  int64_t per_tensor() const { return num_blocks_ * n_kv_heads_ * block_size_ * head_dim_; }
  void check_sizes() const;

  int64_t num_layers_, num_blocks_, block_size_, n_kv_heads_, head_dim_;
  std::vector<float> host_;                // [layer][k|v][block][kv_head][slot][head_dim]
  std::vector<DeviceBuffer> layer_memory_;  // or one [k|v][...] buffer per layer
};

}  // namespace medrt
