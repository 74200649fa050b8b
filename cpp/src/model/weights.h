// The decoder's weights, bound in place from a checkpoint: every TensorView points into the
// safetensors mapping, so loading copies nothing.
#pragma once
#include <vector>

#include "medrt/checkpoint.h"
#include "medrt/tensor.h"

namespace medrt::model {

struct LayerWeights {
  TensorView input_norm, post_attention_norm;
  TensorView q, k, v, o;
  // Biases: q/k/v for Qwen2 or attention_bias; o only for Llama with attention_bias (as
  // transformers builds them). Unused ones stay empty (data == nullptr).
  TensorView q_bias, k_bias, v_bias, o_bias;
  TensorView gate, up, down;
};

struct ModelWeights {
  TensorView embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  TensorView final_norm;
  TensorView lm_head;  // the embedding itself when tie_word_embeddings
};

// Looks up every tensor the architecture needs with the shape its config implies. Throws
// InvalidCheckpoint naming the tensor when one is missing, shaped otherwise, or stored in a type
// the kernels cannot read. Tensors the architecture does not use are ignored, as transformers
// ignores them.
ModelWeights bind_weights(const Checkpoint& ckpt);

// Pointer to the bias, or nullptr when the layer has none (the form cpu::linear takes).
inline const TensorView* bias_or_null(const TensorView& b) { return b.data ? &b : nullptr; }

}  // namespace medrt::model
