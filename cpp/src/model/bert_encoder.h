// BERT (post-LayerNorm, absolute positions, token types, GELU) as a medrt::Encoder.
//
// The linears go through the weight seam (LinearWeight -> cpu::pack_linear -> cpu::linear);
// LayerNorm, GELU and bidirectional attention are the CPU kernels of
// kernels/encoder_kernels.h, called directly because the Backend interface (backend.h) has no
// encoder ops yet. Q, K and V of a layer are fused into one [3H, H] linear at load (a copy of
// their bytes), so a layer makes one pass over its input for all three.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kernels/weight_kernels.h"
#include "medrt/checkpoint.h"
#include "medrt/encoder.h"
#include "medrt/thread_pool.h"

namespace medrt::model {

class BertEncoder final : public Encoder {
 public:
  BertEncoder(const std::string& dir, int n_threads);

  const EncoderConfig& config() const override { return config_; }
  void embed(const int32_t* tokens, const int64_t* offsets, int64_t n_rows,
             float* out) override;

 private:
  struct Norm {
    std::vector<float> w, b;
  };
  struct Layer {
    std::vector<uint8_t> qkv_weight, qkv_bias;  // the fused copies the packed QKV points into
    cpu::PackedLinear qkv, attn_out, ffn_in, ffn_out;
    Norm attn_norm, ffn_norm;
  };

  const TensorView& tensor(const std::string& name, const std::vector<int64_t>& shape) const;
  Norm norm(const std::string& prefix) const;
  cpu::PackedLinear linear(const std::string& prefix, int64_t out, int64_t in) const;
  void load_layer(int i, Layer& layer);

  EncoderConfig config_;
  std::unique_ptr<SafetensorsFile> file_;
  std::string prefix_;  // "" or "bert." (BertForX checkpoints nest the encoder)
  TensorView word_emb_, pos_emb_, type_emb_;
  Norm emb_norm_;
  std::vector<Layer> layers_;
  ThreadPool pool_;
};

}  // namespace medrt::model
