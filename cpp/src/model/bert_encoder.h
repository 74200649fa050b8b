// BERT (post-LayerNorm, absolute positions, token types, GELU) as a medrt::Encoder.
//
// Written over the Backend interface (backend.h), as the decoder is: the weights go through
// the weight seam (LinearWeight -> Backend::prepare_linear / prepare_vector) and every op is a
// Backend op, the encoder ones (layernorm, gelu, encoder_attention, mean_pool_l2) included.
// By default it runs on a CpuBackend over its own thread pool. Q, K and V of a layer are fused
// into one [3H, H] linear at load (a copy of their bytes), so a layer makes one pass over its
// input for all three. Linear weights are converted at load to EncoderOptions::weight_dtype
// (F16 for an F32 checkpoint by default: at a sentence's 10-30 tokens the forward reads every
// weight a few times from cache, and half the bytes keep more of them there).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "medrt/backend.h"
#include "medrt/checkpoint.h"
#include "medrt/encoder.h"
#include "medrt/thread_pool.h"

namespace medrt::model {

class BertEncoder final : public Encoder {
 public:
  // `config` is dir's config.json, parsed (Encoder::open). Runs on `backend` when given (it
  // must outlive the encoder; options.n_threads is then unused), else on a CpuBackend of
  // options.n_threads.
  BertEncoder(const std::string& dir, EncoderConfig config, const EncoderOptions& options,
              Backend* backend = nullptr);

  const EncoderConfig& config() const override { return config_; }
  DType weight_dtype() const override { return weight_dtype_; }
  void embed(const int32_t* tokens, const int64_t* offsets, int64_t n_rows,
             float* out) override;

 private:
  using Weight = std::unique_ptr<BackendWeight>;
  struct Norm {
    Weight w, b;
  };
  struct Layer {
    Weight qkv, attn_out, ffn_in, ffn_out;
    Norm attn_norm, ffn_norm;
  };

  const TensorView& tensor(const std::string& name, const std::vector<int64_t>& shape) const;
  Weight table(const std::string& name, int64_t rows) const;
  Norm norm(const std::string& prefix) const;
  Weight linear(const std::string& prefix, int64_t out, int64_t in);
  Weight prepare(const std::string& name, const TensorView& weight, const TensorView& bias);
  void load_layer(int i, Layer& layer);

  // Declared first so that they outlive the weights prepared on them.
  std::unique_ptr<ThreadPool> pool_;     // only for the default CpuBackend
  std::unique_ptr<Backend> own_backend_;  // the default CpuBackend
  Backend* backend_;
  EncoderConfig config_;
  DType weight_dtype_ = DType::F32;
  std::unique_ptr<SafetensorsFile> file_;  // weights the backend did not copy point into it
  // Bytes made at load (fused QKV, converted weights) that a backend reading weights in place
  // (the portable CPU kernels) keeps pointing into; freed when the backend copied them.
  std::vector<std::vector<uint8_t>> made_;
  std::string prefix_;  // "" or "bert." (BertForX checkpoints nest the encoder)
  Weight word_emb_, pos_emb_, type_emb_;
  Norm emb_norm_;
  std::vector<Layer> layers_;
};

}  // namespace medrt::model
