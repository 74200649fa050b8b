#include "model/weights.h"

#include <string>

#include "medrt/error.h"
#include "model/linear_loader.h"

namespace medrt::model {

namespace {

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
  const bool qkv_bias = c.attention_bias;
  const bool o_bias = c.spec().o_bias_with_attention_bias && c.attention_bias;
  LinearLoader load(ckpt);

  ModelWeights w;
  w.embed_tokens = load.linear("model.embed_tokens", V, D, false);
  w.layers.resize(size_t(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[size_t(i)];
    l.input_norm = load.vector(p + "input_layernorm", D);
    l.q = load.linear(p + "self_attn.q_proj", q_dim, D, qkv_bias);
    l.k = load.linear(p + "self_attn.k_proj", kv_dim, D, qkv_bias);
    l.v = load.linear(p + "self_attn.v_proj", kv_dim, D, qkv_bias);
    l.o = load.linear(p + "self_attn.o_proj", D, q_dim, o_bias);
    l.post_attention_norm = load.vector(p + "post_attention_layernorm", D);
    l.gate = load.linear(p + "mlp.gate_proj", F, D, false);
    l.up = load.linear(p + "mlp.up_proj", F, D, false);
    l.down = load.linear(p + "mlp.down_proj", D, F, false);
  }
  w.final_norm = load.vector("model.norm", D);
  w.lm_head = c.tie_word_embeddings ? w.embed_tokens : load.linear("lm_head", V, D, false);
  return w;
}

}  // namespace medrt::model
