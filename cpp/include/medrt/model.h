// One decoder graph (Llama and Qwen2) written over the kernels in kernels.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "medrt/checkpoint.h"
#include "medrt/config.h"
#include "medrt/kv_cache.h"
#include "medrt/thread_pool.h"

namespace medrt {

// The tokens of one engine step, flattened across sequences (prefill chunks and decodes mixed).
struct ForwardBatch {
  std::vector<int32_t> tokens;        // [T]
  std::vector<int32_t> positions;     // [T] absolute position of each token in its sequence
  std::vector<int32_t> token_seq;     // [T] index into the batch's sequences
  std::vector<int32_t> slot_mapping;  // [T] KV slot = block * block_size + offset
  std::vector<int32_t> block_tables;  // [n_seqs * max_blocks], padded with -1
  int64_t n_seqs = 0;
  int64_t max_blocks = 0;
  std::vector<int32_t> logit_rows;    // rows of T whose logits the caller wants, in order
};

class Model {
 public:
  // Opens and validates the checkpoint (every tensor the architecture needs, with the shape the
  // config implies) and binds weights in place from the mapping.
  static std::unique_ptr<Model> load(const std::string& dir, ThreadPool& pool);

  const ModelConfig& config() const { return ckpt_->config(); }
  const Checkpoint& checkpoint() const { return *ckpt_; }

  // Runs the decoder over the batch: writes K/V of every token into `kv`, and writes
  // logits [batch.logit_rows.size(), vocab] to `logits`.
  void forward(const ForwardBatch& batch, KVCache& kv, float* logits);

  ~Model();

 private:
  Model() = default;
  struct Impl;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace medrt
