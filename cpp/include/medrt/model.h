// One decoder graph (Llama and Qwen2) written over the Backend interface (backend.h): the model
// calls backend ops only, so the same code runs on the CPU, on a GPU, or split across both
// (each layer on its own backend; the hidden state is copied across where consecutive layers
// differ).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "medrt/backend.h"
#include "medrt/checkpoint.h"
#include "medrt/config.h"
#include "medrt/kv_cache.h"
#include "medrt/thread_pool.h"

namespace medrt {

namespace model {
class LoraSet;
}

// The tokens of one engine step, flattened across sequences (prefill chunks and decodes mixed).
// Host memory; the model copies it to each backend that is not the host.
struct ForwardBatch {
  std::vector<int32_t> tokens;        // [T]
  std::vector<int32_t> positions;     // [T] absolute position of each token in its sequence
  std::vector<int32_t> token_seq;     // [T] index into the batch's sequences
  std::vector<int32_t> slot_mapping;  // [T] KV slot = block * block_size + offset
  std::vector<int32_t> block_tables;  // [n_seqs * max_blocks], padded with -1
  int64_t n_seqs = 0;
  int64_t max_blocks = 0;
  std::vector<int32_t> logit_rows;    // rows of T whose logits the caller wants, in order
  std::vector<int32_t> token_lora;    // [T] LoRA adapter of each token (0: base); empty: all base

  void clear();  // empties every array, keeping their capacity (and so their addresses)
};

// Where the model runs: `io` holds the embedding, the final norm and the LM head (and produces
// the logits); `layers[i]` runs decoder layer i. Backends must outlive the model.
struct ModelPlacement {
  Backend* io = nullptr;
  std::vector<Backend*> layers;  // empty: every layer on `io`
};

// What the weights are, for model_info: modules and bytes per weight type.
struct WeightSummary {
  std::string type;  // weight_type_name
  int64_t modules = 0;
  int64_t bytes = 0;  // as stored in the checkpoint
};

class Model {
 public:
  // Opens and validates the checkpoint (every module the architecture needs, with the shape the
  // config implies) and prepares the weights on a CPU backend over `pool` that the model owns
  // (`act`: how its quantized weights read activations, linear.h).
  static std::unique_ptr<Model> load(const std::string& dir, ThreadPool& pool,
                                     ActPrecision act = ActPrecision::Int8);
  // The same on the given backends.
  static std::unique_ptr<Model> load(const std::string& dir, const ModelPlacement& placement);

  const ModelConfig& config() const { return ckpt_->config(); }
  const Checkpoint& checkpoint() const { return *ckpt_; }
  Backend& io_backend() const;
  const std::vector<Backend*>& layer_backends() const;  // one per layer
  std::vector<WeightSummary> weight_summary() const;

  // Sizes the activation and index buffers for up to `max_tokens` rows, `max_logit_rows` logit
  // rows and `max_table_entries` block-table entries now, so that forward() never reallocates
  // (persistent addresses, as graph capture needs). forward() grows them when a batch is larger.
  void reserve(int64_t max_tokens, int64_t max_logit_rows, int64_t max_table_entries = 0);

  // Adapter mode: after each base projection, rows whose batch.token_lora names an adapter of
  // `loras` get its delta (model/lora_set.h). `loras` must outlive the model; nullptr: none.
  void set_loras(model::LoraSet* loras);

  // Runs the decoder over the batch: writes K/V of every token into `kv`, and writes logits
  // [batch.logit_rows.size(), vocab] to `logits` (host memory).
  void forward(const ForwardBatch& batch, KVCache& kv, float* logits);

  // forward() in its three parts, for CUDA graphs (docs/cuda.md, "Graphs"):
  // - stage(): checks the batch and copies its index arrays into the model's persistent buffers
  //   on every backend (host-to-device copies: never inside a capture);
  // - enqueue(): queues every op of the pass over the staged batch on those buffers, the part a
  //   graph captures (no host copy, no sync, no allocation once reserve() covered the batch,
  //   and only the staged sizes, never their values, decide which kernels run). A host `io`
  //   backend writes the logits straight into `host_logits`; a device one into its own buffer;
  // - read_logits(): copies the first `rows` logit rows of a device `io` to the host (waits).
  void stage(const ForwardBatch& batch, KVCache& kv);
  void enqueue(KVCache& kv, float* host_logits);
  void read_logits(float* logits, int64_t rows);
  // How many times a persistent buffer has been reallocated (a batch larger than reserve()'s):
  // graphs captured before the count changed hold stale addresses and must be captured again.
  int64_t buffer_moves() const;

  ~Model();

 private:
  Model() = default;
  struct Impl;
  std::unique_ptr<Checkpoint> ckpt_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace medrt
