#include "workloads.h"

#include <chrono>
#include <stdexcept>
#include <string>

namespace medrt::bench {

std::vector<int32_t> PromptSource::next(int n_tokens) {
  std::uniform_int_distribution<int32_t> dist(0, vocab_ - 1);
  std::vector<int32_t> out(static_cast<size_t>(n_tokens));
  for (int32_t& t : out) t = dist(rng_);
  return out;
}

double run_requests(Engine& engine, PromptSource& prompts, int n_seqs, int prompt_len,
                    int gen_len) {
  SamplingParams params;
  params.max_tokens = gen_len;
  params.temperature = 0.0f;  // greedy: sampling cost stays out of the figure
  params.ignore_eos = true;
  std::vector<std::vector<int32_t>> batch;
  for (int i = 0; i < n_seqs; ++i) batch.push_back(prompts.next(prompt_len));

  auto start = std::chrono::steady_clock::now();
  for (const auto& p : batch) engine.add_request(p, params);
  int64_t generated = 0;
  StepOutputs out;  // reused: a decode step allocates nothing
  while (engine.has_unfinished()) {
    engine.step(out);
    for (const RequestOutput& o : out) generated += int64_t(o.new_token_ids.size());
  }
  auto end = std::chrono::steady_clock::now();
  // A short run would make the figure a lie; the engine must honour ignore_eos + max_tokens.
  if (generated != int64_t(n_seqs) * gen_len)
    throw std::runtime_error("expected " + std::to_string(int64_t(n_seqs) * gen_len) +
                             " generated tokens, got " + std::to_string(generated));
  return std::chrono::duration<double>(end - start).count();
}

}  // namespace medrt::bench
