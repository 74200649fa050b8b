// One request as the engine sees it: its tokens, where their K/V live, how far the model has
// computed them, and the sampling state it carries across steps (and across preemptions).
#pragma once
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "medrt/engine.h"
#include "medrt/sampling.h"

namespace medrt::engine {

enum class SeqStatus { Waiting, Running, Finished };

class Sequence {
 public:
  // `rng_seed` is params.seed when the request has one, else a draw from the engine's generator.
  Sequence(uint64_t id, std::vector<int32_t> prompt, const SamplingParams& params,
           uint64_t rng_seed);

  uint64_t id;
  SamplingParams params;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int num_prompt_tokens;
  SeqStatus status = SeqStatus::Waiting;

  // KV bookkeeping, owned by the BlockManager and cleared on preemption.
  std::vector<int32_t> block_table;
  std::vector<uint64_t> block_hashes;  // chained hash of each full, computed block
  int num_computed_tokens = 0;         // tokens whose K/V are in the cache
  int num_cached_tokens = -1;          // prompt tokens found in the prefix cache at first admission
  uint64_t prefix_salt = 0;            // seeds the hash chain: 0 for the base model, one value
                                       // per loaded LoRA adapter (its blocks hold its own K/V)

  // Sampling state. The generator advances only when this sequence samples, so its draws do
  // not depend on what else runs in the batch.
  std::mt19937_64 rng;
  std::vector<int32_t> seen_tokens;        // sorted prompt and output tokens (repetition penalty)
  std::map<int32_t, int> output_counts;    // output token -> occurrences (frequency/presence)

  FinishReason finish_reason = FinishReason::None;
  int32_t stop_token_id = -1;

  // Prompt logprobs (params.prompt_logprobs >= 0): [i] scores prompt token
  // params.prompt_logprobs_start + i. Filled in order, chunk by chunk; kept across preemptions,
  // so a recompute only fills what is missing. Handed out once (prompt_logprobs_sent).
  std::vector<TokenLogprobs> prompt_logprobs;
  bool prompt_logprobs_sent = false;

  int num_tokens() const { return int(tokens.size()); }
  int num_output_tokens() const { return int(tokens.size()) - num_prompt_tokens; }
  int num_uncomputed_tokens() const { return num_tokens() - num_computed_tokens; }
  void append_token(int32_t token);

  // Positions [first, last) of a chunk of n tokens starting at position `from` whose logits
  // score a prompt token (position p scores token p + 1) not scored yet; first == last if none.
  std::pair<int, int> prompt_logprob_rows(int from, int n) const;
  // Prompt tokens the prefix cache may serve: all but the last (its logits are sampled), and
  // none from the first position whose logits still have to score a prompt token.
  int prefix_cache_limit() const;
};

}  // namespace medrt::engine
