#include "model/rope_freqs.h"

#include <cmath>
#include <numbers>

#include "medrt/error.h"

namespace medrt::model {

namespace {

// transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in float32.
std::vector<float> default_inv_freq(float base, int dim) {
  std::vector<float> inv(size_t(dim / 2));
  for (int i = 0; i < dim / 2; ++i) {
    float exponent = float(2 * i) / float(dim);
    inv[size_t(i)] = 1.0f / std::pow(base, exponent);
  }
  return inv;
}

// transformers' _compute_llama3_parameters: wavelengths shorter than
// original_max / high_freq_factor keep their frequency, longer than original_max /
// low_freq_factor are slowed by `factor`, and the band between is interpolated. Python scalars
// meet float32 tensors there, so each operation below rounds to float32 in the same order.
void apply_llama3(std::vector<float>& inv, const RopeScaling& s) {
  const float factor = s.factor;
  const float low = s.low_freq_factor;
  const float high = s.high_freq_factor;
  const float old_context = float(s.original_max_position_embeddings);
  // Python divides in double; the comparison with a float32 tensor then rounds to float32.
  const float low_freq_wavelen = float(double(s.original_max_position_embeddings) / double(low));
  const float high_freq_wavelen =
      float(double(s.original_max_position_embeddings) / double(high));
  const float two_pi = float(2.0 * std::numbers::pi);
  for (float& f : inv) {
    float wavelen = two_pi / f;
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      float smooth = (old_context / wavelen - low) / (high - low);
      f = (1.0f - smooth) * scaled / factor + smooth * scaled;
    } else {
      f = scaled;
    }
  }
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    throw InvalidCheckpoint("config.json: head_dim must be a positive even number for rotary "
                            "embeddings, got " + std::to_string(c.head_dim));
  std::vector<float> inv = default_inv_freq(c.rope_theta, c.head_dim);
  if (c.rope_scaling) {
    if (c.rope_scaling->type != "llama3")
      throw InvalidCheckpoint("config.json: rope scaling type '" + c.rope_scaling->type +
                              "' is not supported (medrt supports llama3)");
    apply_llama3(inv, *c.rope_scaling);
  }
  return inv;
}

}  // namespace medrt::model
