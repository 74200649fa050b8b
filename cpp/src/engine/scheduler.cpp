#include "engine/scheduler.h"

#include <algorithm>

namespace medrt::engine {

Scheduler::Scheduler(BlockManager& blocks, int max_num_seqs, int max_num_batched_tokens)
    : blocks_(blocks), max_num_seqs_(max_num_seqs), max_num_batched_tokens_(max_num_batched_tokens) {}

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  waiting_.push_back(seq);
}

void Scheduler::remove(Sequence* seq) {
  if (seq->status == SeqStatus::Running)
    running_.erase(std::find(running_.begin(), running_.end(), seq));
  else if (seq->status == SeqStatus::Waiting)
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  blocks_.free(*seq);
  seq->status = SeqStatus::Finished;
}

void Scheduler::preempt(Sequence* victim, std::vector<ScheduledSeq>& batch, int& budget) {
  auto in_batch = std::find_if(batch.begin(), batch.end(),
                               [&](const ScheduledSeq& s) { return s.seq == victim; });
  if (in_batch != batch.end()) {
    budget += in_batch->num_tokens;
    batch.erase(in_batch);
  }
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  blocks_.free(*victim);
  victim->status = SeqStatus::Waiting;
  waiting_.push_front(victim);
  ++num_preemptions_;
}

bool Scheduler::reserve(Sequence* seq, int n, std::vector<ScheduledSeq>& batch, int& budget) {
  while (!blocks_.allocate(*seq, n)) {
    Sequence* victim = running_.back();
    preempt(victim, batch, budget);
    if (victim == seq) return false;
  }
  return true;
}

void Scheduler::schedule(std::vector<ScheduledSeq>& batch) {
  batch.clear();
  int budget = max_num_batched_tokens_;
  int64_t preemptions_before = num_preemptions_;

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    if (s->num_uncomputed_tokens() != 1) {
      ++i;
      continue;
    }
    if (!reserve(s, 1, batch, budget)) break;  // s was the newest: nothing after it remains
    batch.push_back({s, 1, true});
    --budget;
    ++i;
  }

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    int left = s->num_uncomputed_tokens();
    if (left <= 1) {
      ++i;
      continue;
    }
    // Shrink the chunk to the free blocks before resorting to preemption.
    int64_t fits = (int64_t(s->block_table.size()) + blocks_.num_free()) * blocks_.block_size() -
                   s->num_computed_tokens;
    int n = int(std::min<int64_t>({left, budget, std::max<int64_t>(fits, 1)}));
    if (!reserve(s, n, batch, budget)) break;
    batch.push_back({s, n, n == left});
    budget -= n;
    ++i;
  }

  if (num_preemptions_ == preemptions_before) admit_waiting(batch, budget);
}

void Scheduler::admit_waiting(std::vector<ScheduledSeq>& batch, int& budget) {
  while (!waiting_.empty() && budget > 0 && int64_t(running_.size()) < max_num_seqs_) {
    Sequence* s = waiting_.front();
    std::vector<int32_t> prefix = blocks_.find_prefix(*s);
    int cached = int(prefix.size()) * blocks_.block_size();
    int left = s->num_tokens() - cached;
    int64_t free_after = blocks_.num_free() - blocks_.num_free_in(prefix);
    if (blocks_.blocks_for(s->num_tokens()) - int64_t(prefix.size()) > free_after) break;
    blocks_.acquire_prefix(*s, prefix);
    if (s->num_cached_tokens < 0) s->num_cached_tokens = cached;
    int n = std::min(left, budget);
    blocks_.allocate(*s, n);
    waiting_.pop_front();
    s->status = SeqStatus::Running;
    running_.push_back(s);
    batch.push_back({s, n, n == left});
    budget -= n;
  }
}

void Scheduler::advance(const std::vector<ScheduledSeq>& batch) {
  for (const ScheduledSeq& s : batch) {
    s.seq->num_computed_tokens += s.num_tokens;
    blocks_.commit(*s.seq);
  }
}

}  // namespace medrt::engine
