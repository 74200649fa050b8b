// LoRA adapters in adapter mode: a low-rank delta beside a base linear, y += scale * (x A^T) B^T,
// applied per row with the adapter the row's request names (docs/adapters.md). The base
// weights and kernels are untouched; a delta is a second path after each base projection.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace medrt {

// One adapted projection, as peft stores it (f32).
struct LoraModuleWeights {
  std::string module;     // base module name, "model.layers.3.self_attn.q_proj"
  int64_t rank = 0, in = 0, out = 0;
  std::vector<float> a;   // lora_A [rank, in]
  std::vector<float> b;   // lora_B [out, rank]
};

struct LoraAdapterWeights {
  float scale = 1.0f;     // lora_alpha / r, or lora_alpha / sqrt(r) with RSLoRA
  std::vector<LoraModuleWeights> modules;
};

}  // namespace medrt
