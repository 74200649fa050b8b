// Per-request sampling parameters (vLLM names) and the sampler that applies them.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace medrt {

struct SamplingParams {
  int max_tokens = 16;
  int min_tokens = 0;              // EOS/stop tokens are masked until this many are generated
  float temperature = 1.0f;        // 0: greedy
  int top_k = 0;                   // <= 0: off
  float top_p = 1.0f;              // in (0, 1]
  float min_p = 0.0f;              // in [0, 1]
  float repetition_penalty = 1.0f; // > 0; 1: off (prompt and output tokens, HF/vLLM rule)
  float frequency_penalty = 0.0f;  // in [-2, 2], output tokens
  float presence_penalty = 0.0f;   // in [-2, 2], output tokens
  int64_t seed = -1;               // < 0: drawn from the engine's generator
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = -1;               // < 0: none; 0: the chosen token's; n (<= 20): and the top n.
                                   // Raw model logprobs (before penalties/temperature/top-*).
  int prompt_logprobs = -1;        // < 0: none; n (<= 20): every prompt token's logprob given
                                   // its prefix (exact log-softmax of the raw logits), and the
                                   // top n alternatives; returned once (RequestOutput).
  int prompt_logprobs_start = 1;   // first prompt position scored (>= 1; 0 has no prefix). The
                                   // prefix cache may serve the tokens before start - 1, so a
                                   // scorer that shares a long context pays for it once.
  int32_t lora_id = 0;             // adapter mode: the LoRA adapter the request runs with
                                   // (Engine::add_lora); 0: the base model
  // temperature < 1e-5 is greedy; top_k -1 or 0 is off; max_tokens >= 1, min_tokens <= max_tokens.

  // Throws InvalidRequest naming the first bad field and its value.
  void validate(int vocab_size) const;
};

struct TokenLogprobs {
  float chosen = 0.0f;                             // log-probability of the sampled (or prompt) token
  std::vector<std::pair<int32_t, float>> top;      // top-n (token, logprob), best first
};

}  // namespace medrt
