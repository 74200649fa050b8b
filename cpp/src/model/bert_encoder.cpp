// The BERT encoder forward pass (bert_encoder.h), written as the math of the paper:
//   x = LN(word[t] + position[p] + type[0])
//   per layer: x = LN(x + Wo * Attention(Wq x, Wk x, Wv x));  x = LN(x + W2 * GELU(W1 x))
//   embedding = normalize(mean over the row's tokens of x)
// All rows of a call are packed one after another ([T, H], no padding); only attention needs
// to know where a row ends.
#include "model/bert_encoder.h"

#include <cmath>
#include <filesystem>

#include "medrt/error.h"
#include "medrt/linear.h"

namespace medrt::model {
namespace fs = std::filesystem;

BertEncoder::BertEncoder(const std::string& dir, EncoderConfig config, int n_threads,
                         Backend* backend)
    : backend_(backend), config_(std::move(config)) {
  if (!backend_) {
    pool_ = std::make_unique<ThreadPool>(ThreadPool::resolve_num_threads(n_threads));
    own_backend_ = make_cpu_backend(*pool_);
    backend_ = own_backend_.get();
  }
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  if (!fs::is_regular_file(weights))
    throw InvalidCheckpoint(weights + ": missing (an encoder's weights are one model.safetensors)");
  file_ = SafetensorsFile::open(weights);
  if (file_->tensors().count("bert.embeddings.word_embeddings.weight")) prefix_ = "bert.";

  word_emb_ = table("embeddings.word_embeddings.weight", config_.vocab_size);
  pos_emb_ = table("embeddings.position_embeddings.weight", config_.max_position_embeddings);
  type_emb_ = table("embeddings.token_type_embeddings.weight", config_.type_vocab_size);
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

TensorView view_of(const std::vector<uint8_t>& bytes, DType dtype, std::vector<int64_t> shape) {
  TensorView t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = bytes.data();
  t.nbytes = bytes.size();
  return t;
}

}  // namespace

// An embedding table is a linear weight without bias ([rows, H]), read by Backend::embedding.
BertEncoder::Weight BertEncoder::table(const std::string& name, int64_t rows) const {
  return backend_->prepare_linear(
      float_linear(prefix_ + name, tensor(name, {rows, config_.hidden_size})));
}

BertEncoder::Norm BertEncoder::norm(const std::string& prefix) const {
  const int64_t H = config_.hidden_size;
  return Norm{backend_->prepare_vector(tensor(prefix + ".weight", {H}), prefix_ + prefix),
              backend_->prepare_vector(tensor(prefix + ".bias", {H}), prefix_ + prefix)};
}

BertEncoder::Weight BertEncoder::linear(const std::string& prefix, int64_t out,
                                        int64_t in) const {
  const TensorView& w = tensor(prefix + ".weight", {out, in});
  const TensorView& b = tensor(prefix + ".bias", {out});
  return backend_->prepare_linear(float_linear(prefix_ + prefix, w, &b));
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
  layer.qkv =
      backend_->prepare_linear(float_linear(prefix_ + p + "attention.self.qkv", qkv_w, &qkv_b));
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
  Backend& b = *backend_;

  // The call's buffers in backend memory (ops take nothing else): the index arrays copied in,
  // the activations, and the pooled embeddings copied back out.
  const int32_t type0 = 0;
  DeviceBuffer d_tokens(b, size_t(T) * sizeof(int32_t)), d_pos(b, size_t(T) * sizeof(int32_t));
  DeviceBuffer d_offsets(b, size_t(n_rows + 1) * sizeof(int64_t)), d_type(b, sizeof(int32_t));
  b.to_device(d_tokens.get(), tokens, d_tokens.bytes());
  b.to_device(d_pos.get(), positions.data(), d_pos.bytes());
  b.to_device(d_offsets.get(), offsets, d_offsets.bytes());
  b.to_device(d_type.get(), &type0, d_type.bytes());
  const auto floats = [&](int64_t n) { return DeviceBuffer(b, size_t(n) * sizeof(float)); };
  DeviceBuffer xb = floats(T * H), tmpb = floats(T * H), ctxb = floats(T * H);
  DeviceBuffer qkvb = floats(T * 3 * H), ffnb = floats(T * I), typeb = floats(H);
  DeviceBuffer pooled = floats(n_rows * H);
  float *x = xb.get<float>(), *tmp = tmpb.get<float>(), *ctx = ctxb.get<float>();
  float *qkv = qkvb.get<float>(), *ffn = ffnb.get<float>(), *type_row = typeb.get<float>();

  b.embedding(*word_emb_, d_tokens.get<int32_t>(), T, x);
  b.embedding(*pos_emb_, d_pos.get<int32_t>(), T, tmp);
  b.add(x, tmp, T * H);
  b.embedding(*type_emb_, d_type.get<int32_t>(), 1, type_row);
  for (int64_t t = 0; t < T; ++t) b.add(x + t * H, type_row, H);
  b.layernorm(x, T, H, *emb_norm_.w, *emb_norm_.b, eps, x);

  const int64_t* offs = d_offsets.get<int64_t>();
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (const Layer& L : layers_) {
    b.linear(*L.qkv, x, T, qkv);
    b.encoder_attention(qkv, qkv + H, qkv + 2 * H, 3 * H, n_heads, head_dim, offs, n_rows,
                        scale, ctx);
    b.linear(*L.attn_out, ctx, T, tmp);
    b.add(x, tmp, T * H);
    b.layernorm(x, T, H, *L.attn_norm.w, *L.attn_norm.b, eps, x);
    b.linear(*L.ffn_in, x, T, ffn);
    b.gelu(ffn, T * I);
    b.linear(*L.ffn_out, ffn, T, tmp);
    b.add(x, tmp, T * H);
    b.layernorm(x, T, H, *L.ffn_norm.w, *L.ffn_norm.b, eps, x);
  }

  b.mean_pool_l2(x, H, offs, n_rows, pooled.get<float>());
  b.to_host(out, pooled.get(), pooled.bytes());
}

}  // namespace medrt::model
