#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "medrt/error.h"

namespace medrt::engine {
namespace {

constexpr float kGreedyBelow = 1e-5f;  // vLLM's threshold: lower temperatures overflow 1/T
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Higher logit first; equal logits by lower token id, so orderings never depend on the sort.
struct ByLogit {
  const float* l;
  bool operator()(int32_t a, int32_t b) const { return l[a] > l[b] || (l[a] == l[b] && a < b); }
};

int32_t argmax(const float* l, int n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i)
    if (l[i] > l[best]) best = i;
  return best;
}

// Uniform in [0, 1) from the top 53 bits: the same on every standard library.
double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1.0p-53; }

}  // namespace

Sampler::Sampler(int vocab_size, std::vector<int> eos_token_ids, int threads)
    : vocab_(vocab_size), eos_(std::move(eos_token_ids)), scratch_(size_t(std::max(threads, 1))) {
  // Masking writes logits[id]: an id outside the row would write past it.
  for (int id : eos_)
    if (id < 0 || id >= vocab_)
      throw InvalidCheckpoint("EOS token id " + std::to_string(id) +
                              " is outside the vocabulary [0, " + std::to_string(vocab_) + ")");
  // Sized now: a thread's first sampled token may come at any step (chunks go to whichever
  // thread claims them first).
  for (Scratch& sc : scratch_) {
    sc.cand.reserve(size_t(vocab_));
    sc.ids.reserve(size_t(vocab_));
    sc.raw.reserve(size_t(vocab_));
  }
}

Sampler::Scratch& Sampler::scratch(int thread) const {
  if (thread < 0 || size_t(thread) >= scratch_.size())
    throw Error("Sampler: thread index " + std::to_string(thread) + " but buffers for " +
                std::to_string(scratch_.size()) + " threads");
  return scratch_[size_t(thread)];
}

void Sampler::apply_penalties(float* l, const Sequence& seq) const {
  const SamplingParams& p = seq.params;
  if (p.repetition_penalty != 1.0f)
    for (int32_t t : seq.seen_tokens) l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f)
    for (const auto& [t, count] : seq.output_counts)
      l[t] -= p.frequency_penalty * float(count) + p.presence_penalty;
  if (seq.num_output_tokens() < p.min_tokens) {
    for (int32_t t : p.stop_token_ids) l[t] = kNegInf;
    if (!p.ignore_eos)
      for (int t : eos_) l[t] = kNegInf;
  }
}

// `out` = the `n` best tokens by logit, best first (out keeps its vocabulary-sized capacity).
void Sampler::rank_into(const float* l, size_t n, std::vector<int32_t>& out) const {
  out.resize(static_cast<size_t>(vocab_));
  std::iota(out.begin(), out.end(), 0);
  std::partial_sort(out.begin(), out.begin() + ptrdiff_t(n), out.end(), ByLogit{l});
  out.resize(n);
}

int32_t Sampler::draw(const float* l, float temperature, const SamplingParams& p,
                      std::mt19937_64& rng, Scratch& sc) const {
  const int32_t best = argmax(l, vocab_);
  if (!(l[best] > kNegInf)) return best;  // everything masked: nothing to draw from
  const double inv_t = 1.0 / double(temperature), top = double(l[best]);
  // Unnormalised probabilities in double; the best token weighs exactly 1.
  auto weight = [&](int32_t t) { return std::exp((double(l[t]) - top) * inv_t); };

  // Candidates, best first where a rule needs the ranking, else in id order.
  std::vector<int32_t>& cand = sc.cand;
  double total = 0.0;
  const bool top_k = p.top_k > 0 && p.top_k < vocab_;
  if (top_k) {
    rank_into(l, size_t(p.top_k), cand);
    for (int32_t t : cand) total += weight(t);
  } else {
    for (int32_t t = 0; t < vocab_; ++t) total += weight(t);
    if (p.top_p >= 1.0f) {
      cand.resize(static_cast<size_t>(vocab_));
      std::iota(cand.begin(), cand.end(), 0);
    }
  }
  if (p.top_p < 1.0f) {
    const double target = double(p.top_p) * total;
    // Rank a few hundred tokens first: the nucleus is usually small, a full sort is not.
    // After top-k the candidates are ranked already: one pass over them.
    for (size_t n = std::min<size_t>(256, size_t(vocab_));; n = std::min(4 * n, size_t(vocab_))) {
      if (!top_k) rank_into(l, n, cand);
      double cum = 0.0;
      size_t keep = 0;
      while (keep < cand.size() && cum < target) cum += weight(cand[keep++]);
      if (cum >= target || cand.size() == size_t(vocab_) || top_k) {
        cand.resize(keep);
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    const double floor = double(p.min_p);  // min_p times the best token's weight (1)
    std::erase_if(cand, [&](int32_t t) { return weight(t) < floor; });
  }

  double kept = 0.0;
  for (int32_t t : cand) kept += weight(t);
  const double u = uniform01(rng) * kept;
  double cum = 0.0;
  int32_t last = best;
  for (int32_t t : cand) {
    double w = weight(t);
    cum += w;
    if (u < cum) return t;
    if (w > 0.0) last = t;
  }
  return last;  // rounding left u at the very top
}

TokenLogprobs Sampler::logprobs(const float* l, int32_t token, int n, int thread) const {
  const double m = double(l[argmax(l, vocab_)]);
  double sum = 0.0;
  for (int i = 0; i < vocab_; ++i) sum += std::exp(double(l[i]) - m);
  const double lse = m + std::log(sum);
  TokenLogprobs out;
  out.chosen = float(double(l[token]) - lse);
  if (n <= 0) return out;
  std::vector<int32_t>& idx = scratch(thread).ids;
  const size_t k = std::min(size_t(n), size_t(vocab_));
  rank_into(l, k, idx);
  out.top.reserve(k);  // the output itself: one allocation per token that asks for logprobs
  for (size_t i = 0; i < k; ++i) out.top.emplace_back(idx[i], float(double(l[idx[i]]) - lse));
  return out;
}

Sample Sampler::sample(float* logits, Sequence& seq, int thread) const {
  const SamplingParams& p = seq.params;
  Scratch& sc = scratch(thread);
  std::vector<float>& raw = sc.raw;
  if (p.logprobs >= 0) raw.assign(logits, logits + vocab_);
  apply_penalties(logits, seq);
  Sample s;
  s.token = p.temperature < kGreedyBelow ? argmax(logits, vocab_)
                                         : draw(logits, p.temperature, p, seq.rng, sc);
  if (p.logprobs >= 0) s.logprobs = logprobs(raw.data(), s.token, p.logprobs, thread);
  return s;
}

}  // namespace medrt::engine
