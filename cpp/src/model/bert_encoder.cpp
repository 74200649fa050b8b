// The BERT encoder forward pass (bert_encoder.h), written as the math of the paper:
//   x = LN(word[t] + position[p] + type[0])
//   per layer: x = LN(x + Wo * Attention(Wq x, Wk x, Wv x));  x = LN(x + W2 * GELU(W1 x))
//   embedding = normalize(mean over the row's tokens of x)
// All rows of a call are packed one after another ([T, H], no padding); only attention needs
// to know where a row ends.
#include "model/bert_encoder.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "medrt/error.h"
#include "medrt/linear.h"

namespace medrt::model {
namespace fs = std::filesystem;

BertEncoder::BertEncoder(const std::string& dir, EncoderConfig config,
                         const EncoderOptions& options, Backend* backend)
    : backend_(backend), config_(std::move(config)) {
  if (options.weight_dtype && *options.weight_dtype != DType::F32 &&
      *options.weight_dtype != DType::F16 && *options.weight_dtype != DType::BF16)
    throw InvalidRequest(std::string("encoder weight dtype ") +
                         dtype_name(*options.weight_dtype) + ": expected F32, F16 or BF16");
  if (!backend_) {
    pool_ = std::make_unique<ThreadPool>(ThreadPool::resolve_num_threads(options.n_threads));
    own_backend_ = make_cpu_backend(*pool_);
    backend_ = own_backend_.get();
  }
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  if (!fs::is_regular_file(weights))
    throw InvalidCheckpoint(weights + ": missing (an encoder's weights are one model.safetensors)");
  file_ = SafetensorsFile::open(weights);
  if (file_->tensors().count("bert.embeddings.word_embeddings.weight")) prefix_ = "bert.";
  // "auto": the stored type of the first projection (checked with the others below).
  const auto first = file_->tensors().find(prefix_ + "encoder.layer.0.attention.self.query.weight");
  const DType stored = first == file_->tensors().end() ? DType::F32 : first->second.dtype;
  weight_dtype_ = options.weight_dtype.value_or(stored == DType::F32 ? DType::F16 : stored);

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

// Appends t's elements as `to` (round to nearest even) to out.
void append_as(const TensorView& t, DType to, std::vector<uint8_t>& out) {
  const int64_t n = t.numel();
  if (t.dtype == to) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    out.insert(out.end(), p, p + t.nbytes);
    return;
  }
  const size_t at = out.size();
  out.resize(at + size_t(n) * dtype_size(to));
  uint8_t* dst = out.data() + at;
  for (int64_t i = 0; i < n; ++i) {
    const float v = t.f32_at(i);
    if (to == DType::F32) {
      std::memcpy(dst + 4 * i, &v, 4);
    } else {
      const uint16_t h = to == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  }
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

BertEncoder::Weight BertEncoder::linear(const std::string& prefix, int64_t out, int64_t in) {
  return prepare(prefix, tensor(prefix + ".weight", {out, in}), tensor(prefix + ".bias", {out}));
}

// A linear weight in weight_dtype_ (bias as stored). The converted bytes live in made_ unless
// the backend copied them.
BertEncoder::Weight BertEncoder::prepare(const std::string& name, const TensorView& weight,
                                         const TensorView& bias) {
  if (weight.dtype == weight_dtype_) {
    Weight w = backend_->prepare_linear(float_linear(prefix_ + name, weight, &bias));
    if (w->holds_copy) file_->release_pages(weight);
    return w;
  }
  std::vector<uint8_t> bytes;
  append_as(weight, weight_dtype_, bytes);
  file_->release_pages(weight);  // converted: the mapped pages would only add resident memory
  Weight w = backend_->prepare_linear(
      float_linear(prefix_ + name, view_of(bytes, weight_dtype_, weight.shape), &bias));
  if (!w->holds_copy) made_.push_back(std::move(bytes));  // the heap block does not move
  return w;
}

void BertEncoder::load_layer(int i, Layer& layer) {
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  const std::string p = "encoder.layer." + std::to_string(i) + ".";
  // Fused QKV: the three [H, H] weights (and biases) one after another, weights in
  // weight_dtype_, biases in the query bias's stored dtype.
  const std::string names[3] = {p + "attention.self.query", p + "attention.self.key",
                                p + "attention.self.value"};
  const DType bdt = tensor(names[0] + ".bias", {H}).dtype;
  std::vector<uint8_t> weight, bias;
  for (const std::string& n : names) {
    const TensorView& w = tensor(n + ".weight", {H, H});
    append_as(w, weight_dtype_, weight);
    file_->release_pages(w);
    append_as(tensor(n + ".bias", {H}), bdt, bias);
  }
  const TensorView qkv_b = view_of(bias, bdt, {3 * H});
  layer.qkv = prepare(p + "attention.self.qkv", view_of(weight, weight_dtype_, {3 * H, H}), qkv_b);
  made_.push_back(std::move(bias));  // the bias is read at every call on the portable backend
  if (!layer.qkv->holds_copy) made_.push_back(std::move(weight));
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
