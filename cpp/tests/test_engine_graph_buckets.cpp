// The shape-aware graph cache's bookkeeping: warm-up buckets, padding to the next bucket, and
// promotion of a batch size seen often.
#include "check.h"
#include "engine/graph_buckets.h"
#include "medrt/error.h"

using medrt::engine::GraphBuckets;

TEST(warmup_buckets_are_powers_of_two_to_eight_then_every_eight) {
  CHECK(GraphBuckets(64).warmup_sizes() ==
        (std::vector<int>{1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64}));
  CHECK(GraphBuckets(20).warmup_sizes() == (std::vector<int>{1, 2, 4, 8, 16, 20}));
  CHECK(GraphBuckets(3).warmup_sizes() == (std::vector<int>{1, 2, 3}));
  CHECK(GraphBuckets(1).warmup_sizes() == (std::vector<int>{1}));
  CHECK_THROWS(medrt::InvalidRequest, GraphBuckets(0), "max_num_seqs");
}

TEST(a_step_pads_to_the_smallest_captured_bucket) {
  GraphBuckets b(64);
  CHECK(b.bucket_for(5) == 0);  // nothing captured yet: eager
  for (int n : b.warmup_sizes()) b.mark_captured(n);
  CHECK(b.bucket_for(1) == 1);
  CHECK(b.bucket_for(3) == 4);
  CHECK(b.bucket_for(9) == 16);
  CHECK(b.bucket_for(64) == 64);
  CHECK(b.bucket_for(65) == 0);
}

TEST(a_size_seen_often_is_captured_once) {
  GraphBuckets b(64, /*promote_after=*/3, /*max_graphs=*/20);
  for (int n : b.warmup_sizes()) b.mark_captured(n);
  CHECK(!b.note(13));
  CHECK(!b.note(13));
  CHECK(b.note(13));  // third time: capture 13 exactly
  b.mark_captured(13);
  CHECK(!b.note(13));
  CHECK(b.bucket_for(13) == 13);
  CHECK(b.bucket_for(12) == 13);
  CHECK(b.times_seen(13) == 4);
  CHECK(!b.note(0) && !b.note(65));  // outside 1..max_num_seqs: never
}

TEST(promotion_stops_at_the_graph_budget) {
  GraphBuckets b(64, 1, /*max_graphs=*/12);
  for (int n : b.warmup_sizes()) b.mark_captured(n);  // 11 graphs
  CHECK(b.note(5));
  b.mark_captured(5);
  CHECK(!b.note(6));  // 12 graphs: budget spent
}

