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
  int expert = 0;         // LoRA-MoE: which expert of the module (0 for a plain adapter)
};

// LoRA-MoE (SparseDoctor, training/medrt_train/moe): per layer a router over the layer's input
// hidden state h of each token: q = normalize(proj h), p = softmax(cos(q, key_e) / temperature),
// the top_k experts weighted by their renormalised p; y += sum_e g_e * scale * (x A_e^T) B_e^T.
struct LoraRouterWeights {
  int64_t n_experts = 0, top_k = 0, dim = 0;
  float temperature = 1.0f;
  std::vector<std::vector<float>> proj;  // per layer [dim, hidden]
  std::vector<std::vector<float>> keys;  // per layer [n_experts, dim]
};

struct LoraAdapterWeights {
  float scale = 1.0f;     // lora_alpha / r, or lora_alpha / sqrt(r) with RSLoRA
  std::vector<LoraModuleWeights> modules;
  LoraRouterWeights router;  // n_experts 0: a plain adapter
};

}  // namespace medrt
