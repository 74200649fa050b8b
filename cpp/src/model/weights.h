// The decoder's weights as the checkpoint stores them: every projection, the embedding table
// and the LM head are LinearWeights of their stored type (views into the safetensors mapping,
// so binding copies nothing); norm weights are float vectors. A backend prepares them at load
// (Backend::prepare_linear / prepare_vector).
#pragma once
#include <vector>

#include "medrt/checkpoint.h"
#include "medrt/linear.h"
#include "medrt/tensor.h"

namespace medrt::model {

struct LayerWeights {
  TensorView input_norm, post_attention_norm;
  // Biases ride in the LinearWeight: q/k/v for Qwen2 or attention_bias; o only for Llama with
  // attention_bias (as transformers builds them).
  LinearWeight q, k, v, o;
  LinearWeight gate, up, down;
};

struct ModelWeights {
  LinearWeight embed_tokens;  // [vocab, hidden]: rows are looked up, never multiplied
  std::vector<LayerWeights> layers;
  TensorView final_norm;
  LinearWeight lm_head;  // the embedding itself when tie_word_embeddings
};

// Looks up every module the architecture needs with the shape its config implies. Throws
// InvalidCheckpoint naming the module when one is missing, shaped otherwise, or stored in a
// type medrt cannot read. Tensors the architecture does not use are ignored in plain Hugging
// Face directories (as transformers ignores them); a medrt-quant directory must account for
// every tensor (LinearLoader).
ModelWeights bind_weights(const Checkpoint& ckpt);

}  // namespace medrt::model
