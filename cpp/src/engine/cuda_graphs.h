// CUDA graphs for decode-only steps, on the runner side (ARCHITECTURE.md: the model runner is
// the only place that knows about batches, buffers and graphs).
//
// How it plugs into ModelRunner::execute (docs/cuda.md, "Graphs"):
//   - stage(b): pads the step to b rows (pad rows: token 0, position 0, slot -1 so kv_write
//     skips them, a block-table row of valid block ids, max_blocks fixed at the runner's
//     maximum) and copies the index arrays into the model's persistent device buffers. Runs
//     outside capture: host-to-device copies are not captured.
//   - enqueue(b): queues the decoder's ops for b rows on those buffers (Model's forward minus
//     its staging and its final copy of the logits); this is what gets captured.
// A decode-only step of n sequences then is: run(n) -> stage(bucket) + replay, and the runner
// copies the first n logit rows back. Mixed and prefill steps, enforce_eager, and placements
// with layers on the CPU (their hidden-state copies synchronise) run eagerly.
#pragma once
#include <functional>
#include <map>
#include <memory>

#include "engine/graph_buckets.h"
#include "medrt/backend.h"
#include "medrt/cuda.h"

namespace medrt::engine {

class DecodeGraphs {
 public:
  struct Hooks {
    std::function<void(int rows)> stage;
    std::function<void(int rows)> enqueue;
  };

  DecodeGraphs(Backend& io, int max_num_seqs, bool enforce_eager);

  bool enabled() const { return enabled_; }
  // Captures the warm-up buckets (1, 2, 4, 8, 16, ...). Each capture runs stage() first so the
  // captured ops see valid inputs.
  void warm_up(const Hooks& hooks);
  // Runs a decode-only step of n sequences from a graph when one fits (stage + replay, queued,
  // not waited for) and returns the bucket used; returns 0 when the caller must run it eagerly.
  // Counts n, and captures it exactly once it has been seen often (GraphBuckets).
  int run(int n, const Hooks& hooks);

  const GraphBuckets& buckets() const { return buckets_; }
  int64_t replays() const { return replays_; }

 private:
  void capture(int rows, const Hooks& hooks);

  Backend& io_;
  bool enabled_;
  GraphBuckets buckets_;
  std::map<int, std::unique_ptr<StepGraph>> graphs_;
  int64_t replays_ = 0;
};

}  // namespace medrt::engine
