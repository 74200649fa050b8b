#include "model/weights.h"

#include <string>

#include "medrt/error.h"

namespace medrt::model {

namespace {

class Binder {
 public:
  explicit Binder(const Checkpoint& ckpt) : ckpt_(ckpt) {}

  TensorView get(const std::string& name, std::vector<int64_t> shape) const {
    const TensorView& t = ckpt_.get(name, shape);
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + name + "' is " +
                              dtype_name(t.dtype) + "; medrt reads F32, F16 or BF16 weights");
    return t;
  }

 private:
  const Checkpoint& ckpt_;
};

void check_config(const ModelConfig& c, const std::string& dir) {
  auto fail = [&](const std::string& what) {
    throw InvalidCheckpoint(dir + "/config.json: " + what);
  };
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 ||
      c.num_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0)
    fail("sizes (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
         "num_key_value_heads, head_dim, vocab_size) must all be positive");
  if (c.num_heads % c.num_kv_heads != 0)
    fail("num_attention_heads (" + std::to_string(c.num_heads) +
         ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
}

}  // namespace

ModelWeights bind_weights(const Checkpoint& ckpt) {
  const ModelConfig& c = ckpt.config();
  check_config(c, ckpt.dir());
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t q_dim = int64_t(c.num_heads) * c.head_dim;
  const int64_t kv_dim = int64_t(c.num_kv_heads) * c.head_dim;
  const bool qkv_bias = c.arch == Arch::Qwen2 || c.attention_bias;
  const bool o_bias = c.arch == Arch::Llama && c.attention_bias;
  Binder b(ckpt);

  ModelWeights w;
  w.embed_tokens = b.get("model.embed_tokens.weight", {V, D});
  w.layers.resize(size_t(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[size_t(i)];
    l.input_norm = b.get(p + "input_layernorm.weight", {D});
    l.q = b.get(p + "self_attn.q_proj.weight", {q_dim, D});
    l.k = b.get(p + "self_attn.k_proj.weight", {kv_dim, D});
    l.v = b.get(p + "self_attn.v_proj.weight", {kv_dim, D});
    l.o = b.get(p + "self_attn.o_proj.weight", {D, q_dim});
    if (qkv_bias) {
      l.q_bias = b.get(p + "self_attn.q_proj.bias", {q_dim});
      l.k_bias = b.get(p + "self_attn.k_proj.bias", {kv_dim});
      l.v_bias = b.get(p + "self_attn.v_proj.bias", {kv_dim});
    }
    if (o_bias) l.o_bias = b.get(p + "self_attn.o_proj.bias", {D});
    l.post_attention_norm = b.get(p + "post_attention_layernorm.weight", {D});
    l.gate = b.get(p + "mlp.gate_proj.weight", {F, D});
    l.up = b.get(p + "mlp.up_proj.weight", {F, D});
    l.down = b.get(p + "mlp.down_proj.weight", {D, F});
  }
  w.final_norm = b.get("model.norm.weight", {D});
  w.lm_head = c.tie_word_embeddings ? w.embed_tokens : b.get("lm_head.weight", {V, D});
  return w;
}

}  // namespace medrt::model
