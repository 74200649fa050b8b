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

namespace medrt::engine {

class ModelRunner {
 public:
  // Loads config.model_dir on the CPU backend over `pool`; throws InvalidCheckpoint, or
  // CapacityError when the KV budget holds no block.
  ModelRunner(const EngineConfig& config, ThreadPool& pool);

  const ModelConfig& model_config() const { return model_->config(); }
  const Model& model() const { return *model_; }
  int64_t num_blocks() const { return kv_->num_blocks(); }

  // Runs the forward pass of one step. Returns the logits [rows, vocab] of the scheduled
  // sequences that sample, in schedule order (valid until the next call; the sampler may
  // modify them in place).
  float* execute(const std::vector<ScheduledSeq>& sched);

 private:
  void build_batch(const std::vector<ScheduledSeq>& sched);

  EngineConfig cfg_;
  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KVCache> kv_;
  ForwardBatch batch_;
  std::vector<float> logits_;  // [rows sampled this step, vocab]; grows, never shrinks
};

}  // namespace medrt::engine
