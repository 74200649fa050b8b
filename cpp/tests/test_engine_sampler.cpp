#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <new>
#include <random>

#include "check.h"
#include "engine/sampler.h"
#include "medrt/error.h"

using namespace medrt;
using namespace medrt::engine;

// A counting allocator for this test binary: every operator new bumps the counter.
namespace {
std::atomic<long> g_allocations{0};
}
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

Sequence make_seq(std::vector<int32_t> prompt, SamplingParams p, uint64_t seed = 7) {
  return Sequence(1, std::move(prompt), p, seed);
}

SamplingParams greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  return p;
}

// Logits whose softmax is exactly `probs`.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

// Draw counts per token over n fresh samples of the same row.
std::map<int32_t, int> histogram(const std::vector<float>& row, const SamplingParams& p, int n) {
  Sampler s(int(row.size()), {});
  Sequence seq = make_seq({0}, p, 123);
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = row;
    ++h[s.sample(l.data(), seq).token];
  }
  return h;
}

}  // namespace

TEST(greedy_takes_lowest_index_on_ties) {
  Sampler s(5, {});
  Sequence seq = make_seq({0}, greedy());
  std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  CHECK(s.sample(l.data(), seq).token == 1);
  SamplingParams tiny = greedy();
  tiny.temperature = 1e-6f;  // below the greedy threshold
  Sequence seq2 = make_seq({0}, tiny);
  std::vector<float> l2 = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  CHECK(s.sample(l2.data(), seq2).token == 1);
}

TEST(repetition_penalty_divides_positive_multiplies_negative) {
  Sampler s(5, {});
  SamplingParams p = greedy();
  p.repetition_penalty = 2.0f;
  Sequence seq = make_seq({0, 1}, p);
  seq.append_token(4);
  std::vector<float> l = {3.0f, -1.0f, 0.5f, 2.0f, -4.0f};
  CHECK(s.sample(l.data(), seq).token == 3);
  CHECK_NEAR(l[0], 1.5, 1e-6);
  CHECK_NEAR(l[1], -2.0, 1e-6);
  CHECK_NEAR(l[2], 0.5, 1e-6);  // unseen: untouched
  CHECK_NEAR(l[3], 2.0, 1e-6);
  CHECK_NEAR(l[4], -8.0, 1e-6);
}

TEST(frequency_and_presence_penalties_count_output_only) {
  Sampler s(4, {});
  SamplingParams p = greedy();
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  Sequence seq = make_seq({1}, p);  // the prompt token is not penalised
  seq.append_token(2);
  seq.append_token(2);
  seq.append_token(3);
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  s.sample(l.data(), seq);
  CHECK_NEAR(l[0], 1.0, 1e-6);
  CHECK_NEAR(l[1], 1.0, 1e-6);
  CHECK_NEAR(l[2], 1.0 - (0.5 * 2 + 0.25), 1e-6);
  CHECK_NEAR(l[3], 1.0 - (0.5 * 1 + 0.25), 1e-6);
}

TEST(min_tokens_masks_eos_and_stop_ids) {
  Sampler s(4, {3});
  SamplingParams p = greedy();
  p.min_tokens = 2;
  p.stop_token_ids = {2};
  Sequence seq = make_seq({0}, p);
  std::vector<float> l = {0.0f, 1.0f, 5.0f, 9.0f};
  CHECK(s.sample(l.data(), seq).token == 1);
  CHECK(std::isinf(l[2]) && l[2] < 0 && std::isinf(l[3]) && l[3] < 0);
  seq.append_token(1);
  seq.append_token(1);  // min_tokens reached: nothing masked any more
  std::vector<float> l2 = {0.0f, 1.0f, 5.0f, 9.0f};
  CHECK(s.sample(l2.data(), seq).token == 3);

  p.ignore_eos = true;  // EOS is then an ordinary token, stop ids are still masked
  Sequence seq2 = make_seq({0}, p);
  std::vector<float> l3 = {0.0f, 1.0f, 5.0f, 9.0f};
  CHECK(s.sample(l3.data(), seq2).token == 3);
  CHECK(std::isinf(l3[2]));
}

TEST(eos_outside_vocabulary_is_invalid_checkpoint) {
  // min_tokens masks EOS by writing logits[eos]: an id past the row must never get that far.
  CHECK_THROWS(InvalidCheckpoint, Sampler(4, {4}), "EOS token id 4 is outside the vocabulary [0, 4)");
  CHECK_THROWS(InvalidCheckpoint, Sampler(4, {1, -2}), "EOS token id -2");
}

TEST(top_k_one_is_argmax) {
  SamplingParams p;
  p.top_k = 1;
  auto h = histogram({0.1f, 0.3f, 0.2f, 0.3f}, p, 200);
  CHECK(h.size() == 1 && h[1] == 200);  // ties: lower id ranks first
}

TEST(top_p_keeps_smallest_set_reaching_p) {
  std::vector<float> row = logits_of({0.15, 0.5, 0.05, 0.3});
  SamplingParams p;
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3: keeps tokens 1 and 3
  auto h = histogram(row, p, 4000);
  CHECK(h.size() == 2 && h.count(1) && h.count(3));
  CHECK_NEAR(h[1] / 4000.0, 0.5 / 0.8, 0.03);
  p.top_p = 0.45f;  // token 1 alone reaches it
  h = histogram(row, p, 200);
  CHECK(h.size() == 1 && h[1] == 200);
  p.top_p = 0.85f;  // needs the third token too
  h = histogram(row, p, 4000);
  CHECK(h.size() == 3 && !h.count(2));
}

TEST(min_p_drops_tokens_below_fraction_of_top) {
  std::vector<float> row = logits_of({0.15, 0.5, 0.05, 0.3});
  SamplingParams p;
  p.min_p = 0.5f;  // floor 0.25: tokens 1 and 3 survive
  auto h = histogram(row, p, 4000);
  CHECK(h.size() == 2 && h.count(1) && h.count(3));
}

TEST(top_k_then_top_p_renormalises) {
  std::vector<float> row = logits_of({0.4, 0.3, 0.2, 0.1});
  SamplingParams p;
  p.top_k = 2;    // {0: 4/7, 1: 3/7}
  p.top_p = 0.5f; // 4/7 already reaches 0.5
  auto h = histogram(row, p, 200);
  CHECK(h.size() == 1 && h[0] == 200);
}

TEST(sampling_matches_distribution_and_temperature) {
  std::vector<float> row = logits_of({0.5, 0.3, 0.2});
  SamplingParams p;
  auto h = histogram(row, p, 20000);
  CHECK_NEAR(h[0] / 20000.0, 0.5, 0.02);
  CHECK_NEAR(h[1] / 20000.0, 0.3, 0.02);
  CHECK_NEAR(h[2] / 20000.0, 0.2, 0.02);
  p.temperature = 0.5f;  // probabilities squared, renormalised: 25/38, 9/38, 4/38
  h = histogram(row, p, 20000);
  CHECK_NEAR(h[0] / 20000.0, 25.0 / 38, 0.02);
  CHECK_NEAR(h[2] / 20000.0, 4.0 / 38, 0.02);
}

TEST(same_seed_same_draws) {
  std::vector<float> row = logits_of({0.25, 0.25, 0.25, 0.25});
  Sampler s(4, {});
  SamplingParams p;
  Sequence a = make_seq({0}, p, 42), b = make_seq({0}, p, 42), c = make_seq({0}, p, 43);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    std::vector<float> la = row, lb = row, lc = row;
    ta.push_back(s.sample(la.data(), a).token);
    tb.push_back(s.sample(lb.data(), b).token);
    tc.push_back(s.sample(lc.data(), c).token);
  }
  CHECK(ta == tb);
  CHECK(ta != tc);
}

TEST(logprobs_are_raw_log_softmax) {
  Sampler s(4, {});
  SamplingParams p = greedy();
  p.logprobs = 2;
  p.repetition_penalty = 3.0f;  // changes the choice but not the reported distribution
  Sequence seq = make_seq({2}, p);
  std::vector<float> l = {1.0f, 2.0f, 3.0f, 0.0f};
  double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + std::exp(0.0));
  Sample r = s.sample(l.data(), seq);
  CHECK(r.token == 1);  // 3 / 3 = 1 < 2
  CHECK_NEAR(r.logprobs.chosen, 2.0 - lse, 1e-5);
  CHECK(r.logprobs.top.size() == 2);
  CHECK(r.logprobs.top[0].first == 2 && r.logprobs.top[1].first == 1);
  CHECK_NEAR(r.logprobs.top[0].second, 3.0 - lse, 1e-5);
  p.logprobs = -1;
  Sequence quiet = make_seq({2}, p);
  std::vector<float> l2 = {1.0f, 2.0f, 3.0f, 0.0f};
  CHECK(s.sample(l2.data(), quiet).logprobs.top.empty());
}

TEST(scores_are_exact_log_softmax_over_a_large_vocabulary) {
  // A vocabulary the size of SmolLM2's with a wide logit range: the score of every token
  // equals log_softmax computed in long double, to f32 rounding, and the top n come best
  // first with ties by lower id.
  const int vocab = 49152;
  std::vector<float> l(static_cast<size_t>(vocab));
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (float& x : l) x = normal(rng);
  l[77] = l[78] = 30.0f;
  long double sum = 0.0L, m = 30.0L;
  for (float x : l) sum += std::exp((long double)x - m);
  long double lse = m + std::log(sum);
  Sampler s(vocab, {});
  const std::vector<float> before = l;
  for (int32_t t : {0, 77, 78, 1000, vocab - 1}) {
    TokenLogprobs r = s.logprobs(l.data(), t, 3);
    double want = double((long double)l[size_t(t)] - lse);
    CHECK_NEAR(r.chosen, want, 1e-6 * std::max(1.0, std::fabs(want)));
    CHECK(r.top.size() == 3);
    CHECK(r.top[0].first == 77 && r.top[1].first == 78);
    CHECK(r.top[2].second <= r.top[1].second);
  }
  CHECK(s.logprobs(l.data(), 5, 0).top.empty());
  CHECK(l == before);
}

TEST(validate_names_the_field) {
  auto bad = [](auto mutate, const char* field) {
    SamplingParams p;
    mutate(p);
    CHECK_THROWS(InvalidRequest, p.validate(100), field);
  };
  bad([](SamplingParams& p) { p.max_tokens = -1; }, "max_tokens");
  bad([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  bad([](SamplingParams& p) { p.min_tokens = 20; }, "min_tokens");
  bad([](SamplingParams& p) { p.temperature = -0.5f; }, "temperature");
  bad([](SamplingParams& p) { p.temperature = std::nanf(""); }, "temperature");
  bad([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = std::nanf(""); }, "top_p");
  bad([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  bad([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  bad([](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
  bad([](SamplingParams& p) { p.frequency_penalty = 2.5f; }, "frequency_penalty");
  bad([](SamplingParams& p) { p.presence_penalty = std::nanf(""); }, "presence_penalty");
  bad([](SamplingParams& p) { p.logprobs = 21; }, "logprobs");
  bad([](SamplingParams& p) { p.prompt_logprobs = 21; }, "prompt_logprobs");
  bad([](SamplingParams& p) { p.prompt_logprobs_start = 0; }, "prompt_logprobs_start");
  bad([](SamplingParams& p) { p.stop_token_ids = {5, 100}; }, "stop_token_ids");
  SamplingParams ok;
  ok.top_k = -1;
  ok.temperature = 0.0f;
  ok.logprobs = 20;
  ok.validate(100);
}

TEST(top_p_over_a_wide_nucleus) {
  // 1000 equal logits: the nucleus of 0.5 is the 500 lowest ids (ties rank by id), more than
  // the first ranking pass looks at.
  std::vector<float> row(1000, 0.0f);
  SamplingParams p;
  p.top_p = 0.5f;
  auto h = histogram(row, p, 3000);
  CHECK(h.rbegin()->first < 500);
  CHECK(h.size() > 400);
}

TEST(steady_state_sampling_allocates_nothing) {
  // A decode step's sampler work per row: penalties, the draw and append_token. After a
  // warm-up (the per-thread buffers reach vocabulary size) it must not touch the heap, for
  // every sampling mode a request can pick.
  const int vocab = 5000;
  std::vector<float> row(vocab);
  std::mt19937 gen(1);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (float& x : row) x = nd(gen);
  Sampler s(vocab, {7});
  std::vector<SamplingParams> modes(6);
  modes[0].temperature = 0.0f;                            // greedy
  modes[1].temperature = 0.8f;                            // plain temperature
  modes[2].top_k = 40;                                    // top-k
  modes[3].top_p = 0.9f;                                  // nucleus
  modes[4].top_k = 50, modes[4].top_p = 0.95f, modes[4].min_p = 0.01f;
  modes[5].min_tokens = 3, modes[5].stop_token_ids = {9};  // EOS/stop masking
  for (SamplingParams& p : modes) {
    p.max_tokens = 400;
    Sequence seq = make_seq({1, 2, 3}, p, 5);
    std::vector<float> l(vocab);
    auto one = [&] {
      std::copy(row.begin(), row.end(), l.begin());
      seq.append_token(s.sample(l.data(), seq).token);
    };
    for (int i = 0; i < 5; ++i) one();  // warm-up
    const long before = g_allocations.load();
    for (int i = 0; i < 200; ++i) one();
    const long allocations = g_allocations.load() - before;
    if (allocations != 0) std::fprintf(stderr, "mode %zu: %ld allocations\n", &p - modes.data(), allocations);
    CHECK(allocations == 0);
  }
}
