#include "medrt/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "medrt/kernels.h"
#include "model/batch_check.h"
#include "model/rope_freqs.h"
#include "model/weights.h"

namespace medrt {

namespace {

// Grows a scratch buffer to at least n elements; never shrinks, so steady-state steps reuse
// the same memory and allocate nothing.
template <typename T>
T* at_least(std::vector<T>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

}  // namespace

struct Model::Impl {
  Impl(const Checkpoint& ckpt, ThreadPool& pool)
      : cfg(ckpt.config()), pool(pool), w(model::bind_weights(ckpt)),
        inv_freq(model::rope_inv_freq(cfg)),
        scale(float(1.0 / std::sqrt(double(cfg.head_dim)))) {}

  void forward(const ForwardBatch& b, KVCache& kv, float* logits);

  // Attention over the paged cache for `n` query rows, then o_proj, the MLP and both residual
  // adds onto x [n, hidden].
  void attend_and_mlp(const model::LayerWeights& l, const cpu::PagedKV& cache, const float* q,
                      float* x, int64_t n, const cpu::AttentionBatch& ab);

  const ModelConfig& cfg;
  ThreadPool& pool;
  model::ModelWeights w;
  std::vector<float> inv_freq;
  float scale;

  // Activations, f32, [rows, width] each; see forward() for which holds what.
  std::vector<float> x, h, q, k, v, attn, o, gate, up, act;
  // The rows whose logits are wanted, gathered for the last layer: residual, queries, and
  // their sequence / position.
  std::vector<float> x_out, q_out;
  std::vector<int32_t> seq_out, pos_out;
  std::vector<int64_t> check_scratch;
};

void Model::Impl::attend_and_mlp(const model::LayerWeights& l, const cpu::PagedKV& cache,
                                 const float* qs, float* xs, int64_t n,
                                 const cpu::AttentionBatch& ab) {
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size;
  const int64_t q_dim = int64_t(cfg.num_heads) * cfg.head_dim;
  cpu::paged_attention(qs, cfg.num_heads, cache, ab, scale, attn.data(), pool);
  cpu::linear(attn.data(), n, q_dim, l.o, model::bias_or_null(l.o_bias), o.data(), pool);
  cpu::add_inplace(xs, o.data(), n * D);

  cpu::rmsnorm(xs, n, D, l.post_attention_norm, cfg.rms_norm_eps, h.data());
  // Two calls rather than one fused [2F, D] weight: gate and up sit apart in the mapping and
  // fusing them would mean copying the weights.
  cpu::linear(h.data(), n, D, l.gate, nullptr, gate.data(), pool);
  cpu::linear(h.data(), n, D, l.up, nullptr, up.data(), pool);
  cpu::silu_mul(gate.data(), up.data(), n, F, F, act.data());
  cpu::linear(act.data(), n, F, l.down, nullptr, o.data(), pool);
  cpu::add_inplace(xs, o.data(), n * D);
}

void Model::Impl::forward(const ForwardBatch& b, KVCache& kv, float* logits) {
  model::check_batch(b, kv, cfg, check_scratch);
  const int64_t T = int64_t(b.tokens.size()), R = int64_t(b.logit_rows.size());
  if (T == 0) return;
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, hd = cfg.head_dim;
  const int64_t H = cfg.num_heads, KVH = cfg.num_kv_heads;
  const int64_t rows = std::max(T, R);
  at_least(x, T * D);
  at_least(h, rows * D);
  at_least(q, T * H * hd);
  at_least(k, T * KVH * hd);
  at_least(v, T * KVH * hd);
  at_least(attn, rows * H * hd);
  at_least(o, rows * D);
  at_least(gate, rows * F);
  at_least(up, rows * F);
  at_least(act, rows * F);
  at_least(x_out, R * D);
  at_least(q_out, R * H * hd);
  at_least(seq_out, R);
  at_least(pos_out, R);

  cpu::embedding(b.tokens.data(), T, w.embed_tokens, x.data());
  const cpu::AttentionBatch all_rows{T, b.token_seq.data(), b.positions.data(),
                                     b.block_tables.data(), b.max_blocks};
  const int64_t n_layers = int64_t(w.layers.size());
  for (int64_t li = 0; li < n_layers; ++li) {
    const model::LayerWeights& l = w.layers[size_t(li)];
    const cpu::PagedKV cache = kv.layer(li);
    cpu::rmsnorm(x.data(), T, D, l.input_norm, cfg.rms_norm_eps, h.data());
    cpu::linear(h.data(), T, D, l.q, model::bias_or_null(l.q_bias), q.data(), pool);
    cpu::linear(h.data(), T, D, l.k, model::bias_or_null(l.k_bias), k.data(), pool);
    cpu::linear(h.data(), T, D, l.v, model::bias_or_null(l.v_bias), v.data(), pool);
    cpu::rope(q.data(), T, H, hd, b.positions.data(), inv_freq.data());
    cpu::rope(k.data(), T, KVH, hd, b.positions.data(), inv_freq.data());
    cpu::kv_write(k.data(), v.data(), T, b.slot_mapping.data(), cache);
    if (li + 1 < n_layers) {
      attend_and_mlp(l, cache, q.data(), x.data(), T, all_rows);
      continue;
    }
    // Past the last K/V write only the rows whose logits are wanted still matter; every op is
    // row-wise (kernels.h), so computing just those rows changes none of their values.
    if (R == 0) return;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = b.logit_rows[size_t(r)];
      std::memcpy(&x_out[size_t(r * D)], &x[size_t(t * D)], size_t(D) * sizeof(float));
      std::memcpy(&q_out[size_t(r * H * hd)], &q[size_t(t * H * hd)],
                  size_t(H * hd) * sizeof(float));
      seq_out[size_t(r)] = b.token_seq[size_t(t)];
      pos_out[size_t(r)] = b.positions[size_t(t)];
    }
    const cpu::AttentionBatch out_rows{R, seq_out.data(), pos_out.data(), b.block_tables.data(),
                                       b.max_blocks};
    attend_and_mlp(l, cache, q_out.data(), x_out.data(), R, out_rows);
  }
  cpu::rmsnorm(x_out.data(), R, D, w.final_norm, cfg.rms_norm_eps, x_out.data());
  cpu::linear(x_out.data(), R, D, w.lm_head, nullptr, logits, pool);
}

std::unique_ptr<Model> Model::load(const std::string& dir, ThreadPool& pool) {
  std::unique_ptr<Model> m(new Model());
  m->ckpt_ = Checkpoint::open(dir);
  m->impl_ = std::make_unique<Impl>(*m->ckpt_, pool);
  return m;
}

void Model::forward(const ForwardBatch& batch, KVCache& kv, float* logits) {
  impl_->forward(batch, kv, logits);
}

Model::~Model() = default;

}  // namespace medrt
