#include <array>

#include "medrt/arch.h"

namespace medrt {
namespace {

constexpr std::array<ArchSpec, 2> kArchs{{
    {Arch::Llama, "LlamaForCausalLM", "llama", /*qkv_bias_always=*/false,
     /*o_bias_with_attention_bias=*/true, nullptr},
    {Arch::Qwen2, "Qwen2ForCausalLM", "qwen2", /*qkv_bias_always=*/true,
     /*o_bias_with_attention_bias=*/false, "use_sliding_window"},
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

const ArchSpec& arch_spec(Arch arch) {
  for (const ArchSpec& a : kArchs)
    if (a.arch == arch) return a;
  return kArchs[0];
}

std::string supported_architectures() {
  std::string s;
  for (const ArchSpec& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.hf_name);
  return s;
}

}  // namespace medrt
