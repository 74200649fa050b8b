// The model hyper-parameters medrt reads from a Hugging Face config.json.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "medrt/arch.h"
#include "medrt/dtype.h"

namespace medrt {

// rope_scaling {"rope_type": "llama3", ...}; other types are rejected at parse time.
struct RopeScaling {
  std::string type;  // "llama3"
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string architecture;  // as written: "LlamaForCausalLM", "Qwen2ForCausalLM"
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  std::optional<RopeScaling> rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases: always for Qwen2, optional for Llama
  const ArchSpec& spec() const { return arch_spec(arch); }
  // Special token ids; -1 when config.json does not set one. Each set id is in [0, vocab_size).
  int bos_token_id = -1;
  int pad_token_id = -1;
  std::vector<int> eos_token_ids;
  DType torch_dtype = DType::F32;

  // Parses and validates config.json text; throws InvalidCheckpoint naming the field and
  // `source` (the file path) for a missing field, an unsupported architecture or value.
  static ModelConfig from_json(const std::string& json_text, const std::string& source);
  static ModelConfig from_file(const std::string& path);
};

}  // namespace medrt
