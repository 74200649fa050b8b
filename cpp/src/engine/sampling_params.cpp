#include <cmath>
#include <sstream>

#include "medrt/error.h"
#include "medrt/sampling.h"

namespace medrt {
namespace {

template <class T>
[[noreturn]] void bad(const char* field, T value, const char* rule) {
  std::ostringstream os;
  os << "SamplingParams." << field << " = " << value << ": " << rule;
  throw InvalidRequest(os.str());
}

// Written as "not inside" so that NaN fails every range.
void check_range(const char* field, float v, float lo, float hi, const char* rule) {
  if (!(v >= lo && v <= hi)) bad(field, v, rule);
}

}  // namespace

void SamplingParams::validate(int vocab_size) const {
  if (max_tokens < 1) bad("max_tokens", max_tokens, "must be at least 1");
  if (min_tokens < 0 || min_tokens > max_tokens)
    bad("min_tokens", min_tokens, "must be in [0, max_tokens]");
  if (!(temperature >= 0.0f) || std::isinf(temperature))
    bad("temperature", temperature, "must be a finite number >= 0");
  if (top_k < -1) bad("top_k", top_k, "must be -1 or 0 (off) or a positive count");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p", top_p, "must be in (0, 1]");
  check_range("min_p", min_p, 0.0f, 1.0f, "must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || std::isinf(repetition_penalty))
    bad("repetition_penalty", repetition_penalty, "must be a finite number > 0");
  check_range("frequency_penalty", frequency_penalty, -2.0f, 2.0f, "must be in [-2, 2]");
  check_range("presence_penalty", presence_penalty, -2.0f, 2.0f, "must be in [-2, 2]");
  if (logprobs > 20) bad("logprobs", logprobs, "must be at most 20");
  if (prompt_logprobs > 20) bad("prompt_logprobs", prompt_logprobs, "must be at most 20");
  if (prompt_logprobs_start < 1)
    bad("prompt_logprobs_start", prompt_logprobs_start, "must be at least 1 (token 0 has no prefix)");
  for (int32_t t : stop_token_ids)
    if (t < 0 || t >= vocab_size)
      bad("stop_token_ids", t, ("is outside the vocabulary [0, " + std::to_string(vocab_size) + ")").c_str());
}

}  // namespace medrt
