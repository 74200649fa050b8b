#include "engine/sequence.h"

#include <algorithm>

namespace medrt::engine {

Sequence::Sequence(uint64_t id_, std::vector<int32_t> prompt, const SamplingParams& params_,
                   uint64_t rng_seed)
    : id(id_), params(params_), tokens(std::move(prompt)), num_prompt_tokens(int(tokens.size())),
      rng(rng_seed) {
  // Room for the whole completion up front (up to a bound, max_tokens may be huge): appending
  // a token then never reallocates in steady state.
  tokens.reserve(tokens.size() + size_t(std::clamp(params.max_tokens, 0, 16384)));
  if (params.repetition_penalty != 1.0f) {
    seen_tokens = tokens;
    std::sort(seen_tokens.begin(), seen_tokens.end());
    seen_tokens.erase(std::unique(seen_tokens.begin(), seen_tokens.end()), seen_tokens.end());
  }
}

void Sequence::append_token(int32_t token) {
  tokens.push_back(token);
  // Penalty state is kept only for the penalties this request uses.
  if (params.frequency_penalty != 0.0f || params.presence_penalty != 0.0f) ++output_counts[token];
  if (params.repetition_penalty != 1.0f) {
    auto it = std::lower_bound(seen_tokens.begin(), seen_tokens.end(), token);
    if (it == seen_tokens.end() || *it != token) seen_tokens.insert(it, token);
  }
}

std::pair<int, int> Sequence::prompt_logprob_rows(int from, int n) const {
  if (params.prompt_logprobs < 0 || prompt_logprobs_sent) return {from, from};
  int first = std::max(from, params.prompt_logprobs_start - 1 + int(prompt_logprobs.size()));
  int last = std::min(from + n, num_prompt_tokens - 1);
  return first < last ? std::pair{first, last} : std::pair{from, from};
}

int Sequence::prefix_cache_limit() const {
  int limit = num_tokens() - 1;
  int scored = params.prompt_logprobs_start - 1 + int(prompt_logprobs.size());
  if (params.prompt_logprobs >= 0 && !prompt_logprobs_sent && scored < num_prompt_tokens - 1) limit = std::min(limit, scored);
  return limit;
}

}  // namespace medrt::engine
