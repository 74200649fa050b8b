#include <array>

#include "medrt/arch.h"

namespace medrt {
namespace {

constexpr std::array<ArchSpec, 3> kArchs{{
    {Arch::Llama, "LlamaForCausalLM", "llama", ArchKind::Decoder, /*qkv_bias_always=*/false,
     /*o_bias_with_attention_bias=*/true, nullptr},
    {Arch::Qwen2, "Qwen2ForCausalLM", "qwen2", ArchKind::Decoder, /*qkv_bias_always=*/true,
     /*o_bias_with_attention_bias=*/false, "use_sliding_window"},
    // all-MiniLM-L6-v2 and its kin ("BertModel"); BertForX checkpoints are found by model_type.
    // The decoder properties do not apply (the BERT forward has its biases everywhere).
    {Arch::Bert, "BertModel", "bert", ArchKind::Encoder, /*qkv_bias_always=*/false,
     /*o_bias_with_attention_bias=*/false, nullptr},
}};

}  // namespace

const ArchSpec* find_arch(std::string_view hf_name) {
  for (const ArchSpec& a : kArchs)
    if (hf_name == a.hf_name) return &a;
  return nullptr;
}

const ArchSpec* find_arch_by_model_type(std::string_view model_type) {
  for (const ArchSpec& a : kArchs)
    if (model_type == a.model_type) return &a;
  return nullptr;
}

const ArchSpec* find_arch_of(std::string_view model_type, std::string_view hf_name) {
  if (const ArchSpec* a = find_arch_by_model_type(model_type)) return a;
  return find_arch(hf_name);
}

const ArchSpec& arch_spec(Arch arch) {
  for (const ArchSpec& a : kArchs)
    if (a.arch == arch) return a;
  return kArchs[0];
}

const char* arch_kind_name(ArchKind kind) {
  return kind == ArchKind::Encoder ? "encoder" : "decoder";
}

std::string architectures_of_kind(ArchKind kind) {
  std::string s;
  for (const ArchSpec& a : kArchs)
    if (a.kind == kind) s += (s.empty() ? "" : ", ") + std::string(a.hf_name);
  return s;
}

std::string supported_architectures() {
  return "decoders: " + architectures_of_kind(ArchKind::Decoder) +
         "; encoders: " + architectures_of_kind(ArchKind::Encoder);
}

const ArchSpec* arch_begin() { return kArchs.data(); }
const ArchSpec* arch_end() { return kArchs.data() + kArchs.size(); }

}  // namespace medrt
