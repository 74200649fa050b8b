#include "engine/cuda_graphs.h"

namespace medrt::engine {

DecodeGraphs::DecodeGraphs(Backend& io, int max_num_seqs, bool enforce_eager)
    : io_(io), enabled_(!enforce_eager && is_cuda_backend(io)), buckets_(max_num_seqs) {}

void DecodeGraphs::capture(int rows, const Hooks& hooks) {
  hooks.stage(rows);
  graphs_[rows] = capture_step_graph(io_, [&] { hooks.enqueue(rows); });
  buckets_.mark_captured(rows);
}

void DecodeGraphs::warm_up(const Hooks& hooks) {
  if (!enabled_) return;
  for (int rows : buckets_.warmup_sizes()) capture(rows, hooks);
  io_.synchronize();
}

int DecodeGraphs::run(int n, const Hooks& hooks) {
  if (!enabled_) return 0;
  if (buckets_.note(n)) capture(n, hooks);
  const int bucket = buckets_.bucket_for(n);
  if (bucket == 0) return 0;
  hooks.stage(bucket);
  graphs_.at(bucket)->replay();
  ++replays_;
  return bucket;
}

}  // namespace medrt::engine
