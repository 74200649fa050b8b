// The paged KV pool: one allocation holding every layer's K and V blocks. Which block belongs
// to which sequence is the BlockManager's business (engine/); this class only owns memory.
#pragma once
#include <cstdint>
#include <vector>

#include "medrt/config.h"
#include "medrt/kernels.h"

namespace medrt {

class KVCache {
 public:
  KVCache(const ModelConfig& config, int64_t num_blocks, int64_t block_size);

  // Bytes one block takes across all layers (K and V, f32).
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t bytes() const { return int64_t(data_.size() * sizeof(float)); }
  cpu::PagedKV layer(int64_t layer);

 private:
  int64_t num_layers_, num_blocks_, block_size_, n_kv_heads_, head_dim_;
  std::vector<float> data_;  // [layer][k|v][block][kv_head][slot][head_dim]
};

}  // namespace medrt
