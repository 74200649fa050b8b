// The architecture registry: every model family medrt runs is one entry here, found by the
// Hugging Face class name in config.json ("architectures") or its model_type. Config parsing
// and weight binding read the entry's properties instead of testing for a family by name, so a
// new family is a new entry (and, if its graph differs, its own forward).
#pragma once
#include <string>
#include <string_view>

namespace medrt {

enum class Arch { Llama, Qwen2 };

struct ArchSpec {
  Arch arch;
  const char* hf_name;     // "LlamaForCausalLM"
  const char* model_type;  // "llama"
  // q/k/v projections carry biases always (Qwen2), or when config.json says attention_bias.
  bool qkv_bias_always;
  // o_proj carries a bias when attention_bias is set (Llama, as transformers builds it).
  bool o_bias_with_attention_bias;
  // config.json keys that switch on features medrt does not run (refused when true).
  const char* unsupported_flag;  // e.g. "use_sliding_window"; nullptr when none
};

// The entry for a class name or a model_type; nullptr when medrt has none.
const ArchSpec* find_arch(std::string_view hf_name);
const ArchSpec* find_arch_by_model_type(std::string_view model_type);
const ArchSpec& arch_spec(Arch arch);
// "LlamaForCausalLM, Qwen2ForCausalLM": for error messages.
std::string supported_architectures();

}  // namespace medrt
