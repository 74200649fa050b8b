// Turns one row of logits into one token under a sequence's SamplingParams. Rows are sampled
// independently: everything a row reads is its own logits and its own Sequence (penalty
// counts, generator), so a token never depends on the rest of the batch.
//
// Order: repetition penalty (prompt and output tokens: positive logits divided, negative
// multiplied), frequency and presence penalties (output tokens), EOS/stop masking until
// min_tokens, then either greedy (temperature < 1e-5: argmax, lowest id on ties) or
// temperature, top-k, top-p (the smallest highest-probability set whose mass reaches p),
// min-p (drop tokens below min_p * the top probability), and one draw from the sequence's
// generator. Candidates are ordered by logit, ties by lower id, so the draw is reproducible.
//
// Logprobs are the model's raw distribution: log_softmax of the logits before penalties,
// temperature and truncation (vLLM's default), for the chosen token and the top n. The
// normaliser is summed in double over the whole vocabulary, so a score is exact to f32
// rounding (prompt logprobs are what evaluation sums over answers).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/sequence.h"

namespace medrt::engine {

struct Sample {
  int32_t token = -1;
  TokenLogprobs logprobs;  // filled when seq.params.logprobs >= 0
};

class Sampler {
 public:
  // Throws InvalidCheckpoint for an EOS id outside [0, vocab_size).
  // `threads`: how many threads sample at once (the engine's ThreadPool size). Each passes its
  // index (parallel_for's thread index) and works in its own vocabulary-sized buffers, all
  // sized here, so that sampling never allocates (except the TokenLogprobs it returns).
  Sampler(int vocab_size, std::vector<int> eos_token_ids, int threads = 1);

  // `logits` ([vocab]) is modified in place; seq.rng advances by one draw unless greedy.
  Sample sample(float* logits, Sequence& seq, int thread = 0) const;
  // log_softmax(logits)[token] and the top n (token, logprob), best first; logits untouched.
  TokenLogprobs logprobs(const float* logits, int32_t token, int n, int thread = 0) const;

 private:
  struct Scratch {
    std::vector<int32_t> cand;  // candidate ids
    std::vector<int32_t> ids;   // ranking for logprobs
    std::vector<float> raw;     // logits before penalties, for logprobs
  };
  Scratch& scratch(int thread) const;

  void apply_penalties(float* logits, const Sequence& seq) const;
  int32_t draw(const float* logits, float temperature, const SamplingParams& p,
               std::mt19937_64& rng, Scratch& sc) const;
  void rank_into(const float* logits, size_t n, std::vector<int32_t>& out) const;

  int vocab_;
  std::vector<int> eos_;
  mutable std::vector<Scratch> scratch_;  // one per thread; each thread touches only its own
};

}  // namespace medrt::engine
