// The model runner: the one part of the engine that knows about forward batches, buffers and
// backends. It loads the model onto its backends, sizes the KV pool from the budget, turns the
// scheduler's output into the forward batch (kept in persistent arrays whose capacity is
// reserved up front, so their addresses do not move from step to step, as graph capture needs)
// and runs the model. The engine loop (engine.cpp) keeps only the loop: schedule, run, sample.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/cuda_graphs.h"
#include "engine/placement.h"
#include "engine/scheduler.h"
#include "medrt/backend.h"
#include "medrt/engine.h"
#include "medrt/kv_cache.h"
#include "medrt/model.h"
#include "model/lora_set.h"

namespace medrt::engine {

class ModelRunner {
 public:
  // Loads config.model_dir where config.device says (placement.h: the CPU backend over `pool`,
  // or the CUDA backend, with device_map); throws InvalidCheckpoint, InvalidRequest (a device
  // that cannot run here), or CapacityError when the KV budget holds no block. On CUDA it then
  // captures the decode graphs of the warm-up buckets (unless enforce_eager).
  ModelRunner(const EngineConfig& config, ThreadPool& pool);

  const ModelConfig& model_config() const { return model_->config(); }
  const Model& model() const { return *model_; }
  int64_t num_blocks() const { return kv_->num_blocks(); }

  // Runs the forward pass of one step. Returns the logits [rows, vocab], in schedule order:
  // for each scheduled sequence, the rows that score its prompt tokens
  // (Sequence::prompt_logprob_rows, with SamplingParams.prompt_logprobs), then its sampling
  // row if it samples (valid until the next call; the sampler may modify them in place).
  float* execute(const std::vector<ScheduledSeq>& sched);

  // Adapter mode: the LoRA adapters the model applies (change only between steps).
  model::LoraSet& loras() { return loras_; }

  // CUDA graphs: decode steps replayed, and the captured bucket sizes (empty when eager).
  int64_t graph_replays() const { return graphs_ ? graphs_->replays() : 0; }
  int64_t device_layers() const;  // decoder layers on a device backend (not the host)

 private:
  void build_batch(const std::vector<ScheduledSeq>& sched);
  // Decode graphs: copies the first `real` rows of batch_ (0 at warm-up) into graph_batch_
  // padded to `rows` rows and stages it (pad rows: token 0 at position 0 of block 0, slot -1
  // so nothing is written; their logits are never read).
  void stage_padded(int rows, int64_t real);
  void warm_up_graphs();

  EngineConfig cfg_;
  EnginePlacement placement_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KVCache> kv_;
  model::LoraSet loras_;
  ForwardBatch batch_;
  std::vector<float> logits_;  // [rows of this step, vocab]; grows, never shrinks
  int64_t max_blocks_ = 0;     // block-table width of a graph step (the longest sequence)
  std::unique_ptr<DecodeGraphs> graphs_;
  DecodeGraphs::Hooks step_hooks_;  // stage this step's rows padded to a bucket; enqueue
  ForwardBatch graph_batch_;
  int64_t graph_moves_ = 0;  // model_->buffer_moves() when the graphs were captured
};

}  // namespace medrt::engine
