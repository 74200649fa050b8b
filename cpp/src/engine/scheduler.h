// Continuous batching: decides, each step, which sequences compute how many tokens.
//
// A step takes, in order and within max_num_batched_tokens tokens: one decode token for every
// running sequence that has finished its prompt; the next prompt chunk of running sequences
// still in prefill; then new (or preempted) sequences from the front of the waiting queue,
// as long as fewer than max_num_seqs run and the free blocks can hold their whole remaining
// prompt. A prompt longer than the budget is split into chunks over several steps.
//
// When a running sequence needs a block and none is free, the most recently admitted running
// sequence is preempted by recompute: its blocks are freed and it goes back to the front of
// the waiting queue with its generated tokens, to be prefilled again (prompt + output) when
// readmitted. The oldest sequence is thus never preempted, so one always progresses (each
// request alone fits the pool: the engine checks that at admission). No new sequence is
// admitted in a step that preempted.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace medrt::engine {

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int num_tokens = 0;   // computed this step, starting at seq->num_computed_tokens
  bool sample = false;  // this chunk ends at the sequence's last token: sample from its logits
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, int max_num_seqs, int max_num_batched_tokens);

  void add(Sequence* seq);     // to the back of the waiting queue
  void remove(Sequence* seq);  // finished or aborted: leaves the queues, its blocks are freed

  // The sequences of this step, in a deterministic order (decodes, then prefill chunks).
  // Allocates the blocks the scheduled tokens need.
  // The next step's batch into `batch` (cleared first; its capacity is reused).
  void schedule(std::vector<ScheduledSeq>& batch);
  std::vector<ScheduledSeq> schedule() {
    std::vector<ScheduledSeq> batch;
    schedule(batch);
    return batch;
  }
  // After the forward pass: the scheduled tokens' K/V are in the cache.
  void advance(const std::vector<ScheduledSeq>& batch);

  bool empty() const { return waiting_.empty() && running_.empty(); }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }

 private:
  // Gets seq the blocks for n more tokens, preempting the newest running sequences as needed.
  // False when seq itself had to be preempted.
  bool reserve(Sequence* seq, int n, std::vector<ScheduledSeq>& batch, int& budget);
  void preempt(Sequence* victim, std::vector<ScheduledSeq>& batch, int& budget);
  void admit_waiting(std::vector<ScheduledSeq>& batch, int& budget);

  BlockManager& blocks_;
  int max_num_seqs_;
  int max_num_batched_tokens_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order
  int64_t num_preemptions_ = 0;
};

}  // namespace medrt::engine
