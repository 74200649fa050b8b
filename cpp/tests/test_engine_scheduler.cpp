#include <memory>
#include <numeric>

#include "check.h"
#include "engine/scheduler.h"

using namespace medrt;
using namespace medrt::engine;

namespace {

std::unique_ptr<Sequence> make_seq(uint64_t id, int prompt_len, int32_t first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(prompt_len));
  std::iota(t.begin(), t.end(), first);
  return std::make_unique<Sequence>(id, std::move(t), SamplingParams{}, id);
}

// What the engine does after the forward pass: tokens computed, one token appended per sample.
void finish_step(Scheduler& s, const std::vector<ScheduledSeq>& batch) {
  s.advance(batch);
  for (const ScheduledSeq& e : batch)
    if (e.sample) e.seq->append_token(1000 + e.seq->num_output_tokens());
}

int total_tokens(const std::vector<ScheduledSeq>& batch) {
  int n = 0;
  for (const ScheduledSeq& e : batch) n += e.num_tokens;
  return n;
}

}  // namespace

TEST(long_prompt_is_prefilled_in_chunks) {
  BlockManager bm(16, 4, true);
  Scheduler s(bm, 4, 4);
  auto a = make_seq(1, 10);
  s.add(a.get());
  auto b1 = s.schedule();
  CHECK(b1.size() == 1 && b1[0].num_tokens == 4 && !b1[0].sample);
  finish_step(s, b1);
  auto b2 = s.schedule();
  CHECK(b2.size() == 1 && b2[0].num_tokens == 4 && !b2[0].sample);
  finish_step(s, b2);
  auto b3 = s.schedule();
  CHECK(b3.size() == 1 && b3[0].num_tokens == 2 && b3[0].sample);
  finish_step(s, b3);
  CHECK(a->num_output_tokens() == 1);
  auto b4 = s.schedule();  // decode: the sampled token
  CHECK(b4.size() == 1 && b4[0].num_tokens == 1 && b4[0].sample);
  CHECK(a->block_table.size() == 3);  // 11 tokens in blocks of 4
}

TEST(decodes_come_first_and_budget_holds) {
  BlockManager bm(32, 4, true);
  Scheduler s(bm, 8, 6);
  auto a = make_seq(1, 3), b = make_seq(2, 3, 50), c = make_seq(3, 20, 100);
  s.add(a.get());
  s.add(b.get());
  finish_step(s, s.schedule());  // a and b prefilled in one step
  CHECK(a->num_output_tokens() == 1 && b->num_output_tokens() == 1);
  s.add(c.get());
  auto batch = s.schedule();
  CHECK(batch.size() == 3);
  CHECK(batch[0].seq == a.get() && batch[0].num_tokens == 1);
  CHECK(batch[1].seq == b.get() && batch[1].num_tokens == 1);
  CHECK(batch[2].seq == c.get() && batch[2].num_tokens == 4 && !batch[2].sample);
  CHECK(total_tokens(batch) == 6);
}

TEST(max_num_seqs_limits_running) {
  BlockManager bm(64, 4, true);
  Scheduler s(bm, 2, 100);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (int i = 0; i < 4; ++i) {
    seqs.push_back(make_seq(uint64_t(i + 1), 5, 10 * i));
    s.add(seqs.back().get());
  }
  auto batch = s.schedule();
  CHECK(batch.size() == 2);
  CHECK(s.num_running() == 2 && s.num_waiting() == 2);
  finish_step(s, batch);
  s.remove(seqs[0].get());  // finished: its place goes to the next waiting sequence
  batch = s.schedule();
  CHECK(batch.size() == 2 && batch[1].seq == seqs[2].get());
}

TEST(waiting_sequence_needs_room_for_its_prompt) {
  BlockManager bm(4, 4, true);
  Scheduler s(bm, 8, 100);
  auto a = make_seq(1, 9), b = make_seq(2, 9, 100);
  s.add(a.get());
  s.add(b.get());
  auto batch = s.schedule();  // a takes 3 blocks; b's 3 do not fit in the 1 left
  CHECK(batch.size() == 1 && batch[0].seq == a.get());
  CHECK(s.num_waiting() == 1);
}

TEST(newest_running_sequence_is_preempted_by_recompute) {
  BlockManager bm(4, 4, false);
  Scheduler s(bm, 8, 100);
  auto a = make_seq(1, 4), b = make_seq(2, 4, 100);
  s.add(a.get());
  s.add(b.get());
  finish_step(s, s.schedule());  // two prompts of one block each, one output token each
  for (int step = 0; step < 4; ++step) finish_step(s, s.schedule());
  // Both now hold 2 blocks with 8 tokens computed + 1 pending: both need a third block.
  CHECK(bm.num_free() == 0);
  CHECK(a->num_tokens() == 9 && b->num_tokens() == 9);
  auto batch = s.schedule();
  CHECK(s.num_preemptions() == 1);
  CHECK(batch.size() == 1 && batch[0].seq == a.get());
  CHECK(b->status == SeqStatus::Waiting && b->block_table.empty() && b->num_computed_tokens == 0);
  CHECK(b->num_tokens() == 9);  // keeps its generated tokens
  CHECK(s.num_waiting() == 1);
  finish_step(s, batch);
  s.remove(a.get());
  CHECK(bm.num_free() == 4);
  batch = s.schedule();  // readmitted: prompt + output prefilled again, then sampled
  CHECK(batch.size() == 1 && batch[0].seq == b.get() && batch[0].num_tokens == 9 && batch[0].sample);
}

TEST(self_preemption_when_newest) {
  BlockManager bm(3, 4, false);
  Scheduler s(bm, 8, 100);
  auto a = make_seq(1, 5), b = make_seq(2, 3, 100);
  s.add(a.get());
  s.add(b.get());
  finish_step(s, s.schedule());  // a: 2 blocks with room, b: 1 block
  finish_step(s, s.schedule());
  CHECK(bm.num_free() == 0 && a->num_tokens() == 7 && b->num_tokens() == 5);
  auto batch = s.schedule();  // b (newest) needs a block for position 4: it steps back itself
  CHECK(s.num_preemptions() == 1);
  CHECK(batch.size() == 1 && batch[0].seq == a.get());
  CHECK(b->status == SeqStatus::Waiting && bm.num_free() == 1);
}

TEST(remove_frees_every_block) {
  BlockManager bm(8, 4, true);
  Scheduler s(bm, 8, 4);
  auto a = make_seq(1, 14), b = make_seq(2, 3, 100);
  s.add(a.get());
  s.add(b.get());
  finish_step(s, s.schedule());  // a mid-prefill, b waiting
  CHECK(a->num_computed_tokens == 4);
  s.remove(a.get());
  s.remove(b.get());
  CHECK(s.empty());
  CHECK(bm.num_free() == 8);
}
