// The workloads medrt-bench times, each through the public Engine API in synchronous mode
// (Engine::step on the calling thread), with ignore_eos so every run generates exactly the
// tokens asked for.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "medrt/engine.h"

namespace medrt::bench {

// Distinct random prompts: the bench runs with prefix caching off, and distinct prompts keep a
// repetition from reusing anything the previous one computed even if it were on.
class PromptSource {
 public:
  PromptSource(int vocab_size, uint64_t seed) : vocab_(vocab_size), rng_(seed) {}
  std::vector<int32_t> next(int n_tokens);

 private:
  int vocab_;
  std::mt19937_64 rng_;
};

// Seconds to run `n_seqs` requests of `prompt_len` prompt tokens and `gen_len` generated tokens
// each, all queued at once, from the first add_request until the last request finishes.
double run_requests(Engine& engine, PromptSource& prompts, int n_seqs, int prompt_len,
                    int gen_len);

}  // namespace medrt::bench
