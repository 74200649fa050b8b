// Rotary inverse frequencies of a model, computed the way transformers computes them so that
// positions rotate by bitwise the same angles as in the reference.
#pragma once
#include <vector>

#include "medrt/config.h"

namespace medrt::model {

// inv_freq[i] for i < head_dim / 2, in float32 like transformers (default RoPE, or llama3
// scaling when config.rope_scaling is set).
std::vector<float> rope_inv_freq(const ModelConfig& config);

}  // namespace medrt::model
