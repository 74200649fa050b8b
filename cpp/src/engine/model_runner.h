// The model runner: the one part of the engine that knows about forward batches, buffers and
// backends. It loads the model onto its backends, sizes the KV pool from the budget, turns the
// scheduler's output into the forward batch (kept in persistent arrays whose capacity is
// reserved up front, so their addresses do not move from step to step, as graph capture needs)
// and runs the model. The engine loop (engine.cpp) keeps only the loop: schedule, run, sample.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/scheduler.h"
#include "medrt/backend.h"
#include "medrt/engine.h"
#include "medrt/kv_cache.h"
#include "medrt/model.h"
#include "model/lora_set.h"

namespace medrt::engine {

class ModelRunner {
 public:
  // Loads config.model_dir on the CPU backend over `pool`; throws InvalidCheckpoint, or
  // CapacityError when the KV budget holds no block.
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

 private:
  void build_batch(const std::vector<ScheduledSeq>& sched);

  EngineConfig cfg_;
  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KVCache> kv_;
  model::LoraSet loras_;
  ForwardBatch batch_;
  std::vector<float> logits_;  // [rows of this step, vocab]; grows, never shrinks
};

}  // namespace medrt::engine
