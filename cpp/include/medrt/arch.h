// The architecture registry: every model family medrt runs is one entry here, found by the
// Hugging Face class name in config.json ("architectures") or its model_type. Config parsing
// and weight binding read the entry's properties instead of testing for a family by name, so a
// new family is a new entry (and, if its graph differs, its own forward).
//
// Decoders (text generation: ModelConfig, medrt.LLM) and encoders (embeddings: EncoderConfig,
// medrt.Embedder / LLM.embed) share the registry so that each loader can tell a model of the
// other kind by its entry and say where it belongs, instead of calling it unknown.
#pragma once
#include <string>
#include <string_view>

namespace medrt {

enum class Arch { Llama, Qwen2, Bert };

enum class ArchKind { Decoder, Encoder };

struct ArchSpec {
  Arch arch;
  const char* hf_name;     // "LlamaForCausalLM"
  const char* model_type;  // "llama"
  ArchKind kind;
  // The rest are decoder properties (an encoder's graph is fixed by its forward).
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
// A config.json's entry: by its model_type, else by architectures[0]; nullptr when neither is
// known. model_type first because it names the family: "BertForMaskedLM" is not an entry but
// its "model_type": "bert" is.
const ArchSpec* find_arch_of(std::string_view model_type, std::string_view hf_name);
const char* arch_kind_name(ArchKind kind);  // "decoder", "encoder"
// The class names of one kind, "LlamaForCausalLM, Qwen2ForCausalLM".
std::string architectures_of_kind(ArchKind kind);
// "decoders: LlamaForCausalLM, Qwen2ForCausalLM; encoders: BertModel": for error messages.
std::string supported_architectures();
// Every entry, in registry order (the Python binding lists them).
const ArchSpec* arch_begin();
const ArchSpec* arch_end();

}  // namespace medrt
