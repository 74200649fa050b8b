// config.json text to ModelConfig: a config or an InvalidCheckpoint, nothing else.
#include <cstdint>
#include <string>

#include "medrt/config.h"
#include "medrt/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    medrt::ModelConfig c = medrt::ModelConfig::from_json(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
    // What the engine relies on after a successful parse.
    if (c.vocab_size <= 0 || c.num_layers <= 0 || c.head_dim <= 0 ||
        c.num_heads % c.num_kv_heads != 0)
      __builtin_trap();
    for (int id : c.eos_token_ids)
      if (id < 0 || id >= c.vocab_size) __builtin_trap();
  } catch (const medrt::InvalidCheckpoint&) {
  }
  return 0;
}
