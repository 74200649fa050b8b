#include "engine/graph_buckets.h"

#include <algorithm>
#include <string>

#include "medrt/error.h"

namespace medrt::engine {

GraphBuckets::GraphBuckets(int max_num_seqs, int promote_after, int max_graphs)
    : max_num_seqs_(max_num_seqs), promote_after_(promote_after), max_graphs_(max_graphs) {
  if (max_num_seqs < 1)
    throw InvalidRequest("max_num_seqs must be >= 1, got " + std::to_string(max_num_seqs));
  for (int n : {1, 2, 4})
    if (n < max_num_seqs) warmup_.push_back(n);
  for (int n = 8; n < max_num_seqs; n += 8) warmup_.push_back(n);
  warmup_.push_back(max_num_seqs);
}

bool GraphBuckets::note(int n) {
  if (n < 1 || n > max_num_seqs_) return false;
  const int64_t seen = ++seen_[n];
  return seen >= promote_after_ && !captured_.count(n) &&
         int(captured_.size()) < max_graphs_;
}

int GraphBuckets::bucket_for(int n) const {
  const auto it = captured_.lower_bound(n);
  return it == captured_.end() ? 0 : *it;
}

int64_t GraphBuckets::times_seen(int n) const {
  const auto it = seen_.find(n);
  return it == seen_.end() ? 0 : it->second;
}

}  // namespace medrt::engine
