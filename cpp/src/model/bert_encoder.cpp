// The BERT encoder forward pass (bert_encoder.h), written as the math of the paper:
//   x = LN(word[t] + position[p] + type[0])
//   per layer: x = LN(x + Wo * Attention(Wq x, Wk x, Wv x));  x = LN(x + W2 * GELU(W1 x))
//   embedding = normalize(mean over the row's tokens of x)
// All rows of a call are packed one after another ([T, H], no padding); only attention needs
// to know where a row ends.
#include "model/bert_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/read_file.h"
#include "kernels/encoder_kernels.h"
#include "medrt/error.h"
#include "medrt/kernels.h"
#include "medrt/linear.h"

namespace medrt {

std::unique_ptr<Encoder> Encoder::open(const std::string& dir, int n_threads) {
  return std::make_unique<model::BertEncoder>(dir, n_threads);
}

std::vector<float> Encoder::embed(const std::vector<std::vector<int32_t>>& rows) {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};
  for (const auto& r : rows) {
    tokens.insert(tokens.end(), r.begin(), r.end());
    offsets.push_back(int64_t(tokens.size()));
  }
  std::vector<float> out(rows.size() * size_t(dim()));
  embed(tokens.data(), offsets.data(), int64_t(rows.size()), out.data());
  return out;
}

namespace model {
namespace fs = std::filesystem;

BertEncoder::BertEncoder(const std::string& dir, int n_threads) : pool_(n_threads) {
  if (!fs::is_directory(dir))
    throw InvalidCheckpoint(dir + ": not a directory (expected a BERT model directory)");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  config_ = EncoderConfig::from_json(io::read_text_file(config_path), config_path);
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  if (!fs::is_regular_file(weights))
    throw InvalidCheckpoint(weights + ": missing (an encoder's weights are one model.safetensors)");
  file_ = SafetensorsFile::open(weights);
  if (file_->tensors().count("bert.embeddings.word_embeddings.weight")) prefix_ = "bert.";

  const int64_t H = config_.hidden_size;
  word_emb_ = tensor("embeddings.word_embeddings.weight", {config_.vocab_size, H});
  pos_emb_ = tensor("embeddings.position_embeddings.weight", {config_.max_position_embeddings, H});
  type_emb_ = tensor("embeddings.token_type_embeddings.weight", {config_.type_vocab_size, H});
  emb_norm_ = norm("embeddings.LayerNorm");
  layers_.resize(size_t(config_.num_layers));
  for (int i = 0; i < config_.num_layers; ++i) load_layer(i, layers_[size_t(i)]);
}

const TensorView& BertEncoder::tensor(const std::string& name,
                                      const std::vector<int64_t>& shape) const {
  const auto it = file_->tensors().find(prefix_ + name);
  if (it == file_->tensors().end())
    throw InvalidCheckpoint(file_->path() + ": tensor '" + prefix_ + name + "' is missing");
  if (it->second.shape != shape) {
    TensorView want;
    want.shape = shape;
    throw InvalidCheckpoint(file_->path() + ": tensor '" + prefix_ + name + "' has shape " +
                            it->second.shape_str() + ", expected " + want.shape_str());
  }
  const DType d = it->second.dtype;
  if (d != DType::F32 && d != DType::F16 && d != DType::BF16)
    throw InvalidCheckpoint(file_->path() + ": tensor '" + prefix_ + name + "' is " +
                            dtype_name(d) + "; expected F32, F16 or BF16");
  return it->second;
}

namespace {

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> v(size_t(t.numel()));
  const auto* h = static_cast<const uint16_t*>(t.data);
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.dtype == DType::F32)
      v[i] = static_cast<const float*>(t.data)[i];
    else
      v[i] = t.dtype == DType::F16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
  }
  return v;
}

TensorView view_of(const std::vector<uint8_t>& bytes, DType dtype, std::vector<int64_t> shape) {
  TensorView t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = bytes.data();
  t.nbytes = bytes.size();
  return t;
}

}  // namespace

BertEncoder::Norm BertEncoder::norm(const std::string& prefix) const {
  const int64_t H = config_.hidden_size;
  return Norm{to_f32(tensor(prefix + ".weight", {H})), to_f32(tensor(prefix + ".bias", {H}))};
}

cpu::PackedLinear BertEncoder::linear(const std::string& prefix, int64_t out, int64_t in) const {
  const TensorView& w = tensor(prefix + ".weight", {out, in});
  const TensorView& b = tensor(prefix + ".bias", {out});
  return cpu::pack_linear(float_linear(prefix_ + prefix, w, &b));
}

void BertEncoder::load_layer(int i, Layer& layer) {
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  const std::string p = "encoder.layer." + std::to_string(i) + ".";
  // Fused QKV: the three [H, H] weights (and biases) one after another, in their stored dtype.
  const std::string names[3] = {p + "attention.self.query", p + "attention.self.key",
                                p + "attention.self.value"};
  const DType wdt = tensor(names[0] + ".weight", {H, H}).dtype;
  const DType bdt = tensor(names[0] + ".bias", {H}).dtype;
  for (const std::string& n : names) {
    const TensorView& w = tensor(n + ".weight", {H, H});
    const TensorView& b = tensor(n + ".bias", {H});
    if (w.dtype != wdt || b.dtype != bdt)
      throw InvalidCheckpoint(file_->path() + ": '" + prefix_ + n +
                              "' differs in dtype from the layer's query projection");
    layer.qkv_weight.insert(layer.qkv_weight.end(), static_cast<const uint8_t*>(w.data),
                            static_cast<const uint8_t*>(w.data) + w.nbytes);
    layer.qkv_bias.insert(layer.qkv_bias.end(), static_cast<const uint8_t*>(b.data),
                          static_cast<const uint8_t*>(b.data) + b.nbytes);
  }
  const TensorView qkv_w = view_of(layer.qkv_weight, wdt, {3 * H, H});
  const TensorView qkv_b = view_of(layer.qkv_bias, bdt, {3 * H});
  layer.qkv = cpu::pack_linear(float_linear(prefix_ + p + "attention.self.qkv", qkv_w, &qkv_b));
  layer.attn_out = linear(p + "attention.output.dense", H, H);
  layer.attn_norm = norm(p + "attention.output.LayerNorm");
  layer.ffn_in = linear(p + "intermediate.dense", I, H);
  layer.ffn_out = linear(p + "output.dense", H, I);
  layer.ffn_norm = norm(p + "output.LayerNorm");
}

void BertEncoder::embed(const int32_t* tokens, const int64_t* offsets, int64_t n_rows,
                        float* out) {
  if (n_rows <= 0) return;
  if (offsets[0] != 0) throw InvalidRequest("embed: offsets[0] must be 0");
  std::vector<int32_t> positions;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t len = offsets[r + 1] - offsets[r];
    if (len <= 0) throw InvalidRequest("embed: row " + std::to_string(r) + " has no tokens");
    if (len > config_.max_position_embeddings)
      throw InvalidRequest("embed: row " + std::to_string(r) + " has " + std::to_string(len) +
                           " tokens; the encoder takes at most " +
                           std::to_string(config_.max_position_embeddings));
    for (int64_t i = 0; i < len; ++i) positions.push_back(int32_t(i));
  }
  const int64_t T = offsets[n_rows];
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  const int64_t n_heads = config_.num_heads, head_dim = H / n_heads;
  const float eps = config_.layer_norm_eps;

  std::vector<float> x(size_t(T * H)), tmp(size_t(T * H)), ctx(size_t(T * H));
  std::vector<float> qkv(size_t(T * 3 * H)), ffn(size_t(T * I));
  cpu::embedding(tokens, T, word_emb_, x.data());
  cpu::embedding(positions.data(), T, pos_emb_, tmp.data());
  cpu::add_inplace(x.data(), tmp.data(), T * H);
  const int32_t type0 = 0;
  std::vector<float> type_row(static_cast<size_t>(H));
  cpu::embedding(&type0, 1, type_emb_, type_row.data());
  for (int64_t t = 0; t < T; ++t) cpu::add_inplace(x.data() + t * H, type_row.data(), H);
  cpu::layernorm(x.data(), T, H, emb_norm_.w.data(), emb_norm_.b.data(), eps, x.data());

  const cpu::PackedRows rows{n_rows, offsets};
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (const Layer& L : layers_) {
    cpu::linear(L.qkv, x.data(), T, qkv.data(), pool_);
    cpu::encoder_attention(qkv.data(), qkv.data() + H, qkv.data() + 2 * H, 3 * H, n_heads,
                           head_dim, rows, scale, ctx.data(), pool_);
    cpu::linear(L.attn_out, ctx.data(), T, tmp.data(), pool_);
    cpu::add_inplace(x.data(), tmp.data(), T * H);
    cpu::layernorm(x.data(), T, H, L.attn_norm.w.data(), L.attn_norm.b.data(), eps, x.data());
    cpu::linear(L.ffn_in, x.data(), T, ffn.data(), pool_);
    cpu::gelu_erf(ffn.data(), T * I);
    cpu::linear(L.ffn_out, ffn.data(), T, tmp.data(), pool_);
    cpu::add_inplace(x.data(), tmp.data(), T * H);
    cpu::layernorm(x.data(), T, H, L.ffn_norm.w.data(), L.ffn_norm.b.data(), eps, x.data());
  }

  // Mean over each row's tokens (in token order), then divide by the L2 norm.
  for (int64_t r = 0; r < n_rows; ++r) {
    float* o = out + r * H;
    std::fill(o, o + H, 0.0f);
    for (int64_t t = offsets[r]; t < offsets[r + 1]; ++t)
      for (int64_t d = 0; d < H; ++d) o[d] += x[size_t(t * H + d)];
    const float inv_n = 1.0f / float(offsets[r + 1] - offsets[r]);
    double sq = 0.0;
    for (int64_t d = 0; d < H; ++d) {
      o[d] *= inv_n;
      sq += double(o[d]) * o[d];
    }
    const float inv_norm = 1.0f / std::fmax(float(std::sqrt(sq)), 1e-12f);
    for (int64_t d = 0; d < H; ++d) o[d] *= inv_norm;
  }
}

}  // namespace model
}  // namespace medrt
