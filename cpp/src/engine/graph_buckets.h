// Which batch sizes get a captured CUDA graph (the shape-aware graph cache of Zhang and Qin).
// A decode-only step of n sequences replays the graph of the smallest captured bucket >= n,
// its inputs padded to that size. The warm-up buckets are 1, 2, 4, 8, then every 8 up to
// max_num_seqs. The cache also counts the sizes it meets: a size that is not a bucket and has
// been seen `promote_after` times is captured exactly, so a steady load of, say, 13 sequences
// stops paying for 3 padded rows. Pure bookkeeping (no CUDA), so it is tested on any machine.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <vector>

namespace medrt::engine {

class GraphBuckets {
 public:
  GraphBuckets(int max_num_seqs, int promote_after = 32, int max_graphs = 64);

  // The warm-up sizes in increasing order (1, 2, 4, 8, 16, 24, ..., max_num_seqs).
  const std::vector<int>& warmup_sizes() const { return warmup_; }
  // Records that a decode step of n sequences ran; returns true when n should be captured now
  // (seen often enough, not yet captured, and the graph budget not spent).
  bool note(int n);
  void mark_captured(int n) { captured_.insert(n); }
  // The smallest captured size >= n, or 0 when none (the step runs eagerly).
  int bucket_for(int n) const;
  int64_t times_seen(int n) const;
  const std::set<int>& captured() const { return captured_; }

 private:
  int max_num_seqs_, promote_after_, max_graphs_;
  std::vector<int> warmup_;
  std::set<int> captured_;
  std::map<int, int64_t> seen_;
};

}  // namespace medrt::engine
