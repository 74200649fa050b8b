#include "medrt/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include "medrt/error.h"
#include "model/batch_check.h"
#include "model/lora_set.h"
#include "model/rope_freqs.h"
#include "model/weights.h"

namespace medrt {

void ForwardBatch::clear() {
  tokens.clear();
  positions.clear();
  token_seq.clear();
  slot_mapping.clear();
  token_lora.clear();
  block_tables.clear();
  logit_rows.clear();
  n_seqs = max_blocks = 0;
}

namespace {

// A weight prepared on its backend, per decoder layer.
struct PreparedLayer {
  std::unique_ptr<BackendWeight> input_norm, post_attention_norm;
  std::unique_ptr<BackendWeight> q, k, v, o, gate, up, down;
};

// A backend buffer that grows (never shrinks) to the size a batch needs; counts reallocations
// in *moves (a captured graph holds the old address).
template <typename T>
T* grow(Backend& b, DeviceBuffer& buf, int64_t n, int64_t* moves = nullptr) {
  const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(T);
  if (buf.bytes() < bytes) {
    buf = DeviceBuffer(b, bytes);
    if (moves) ++*moves;
  }
  return buf.get<T>();
}

// The activations and the batch's index arrays in one backend's memory. On a host backend the
// index arrays are the ForwardBatch's own; elsewhere they are copied in once per forward.
struct Workspace {
  explicit Workspace(Backend& b) : b(b) {}
  Backend& b;
  DeviceBuffer x, h, q, k, v, attn, o, gate, up, act, x_out, q_out, logits;
  DeviceBuffer inv_freq;
  DeviceBuffer idx_tokens, idx_positions, idx_seq, idx_slots, idx_tables, idx_rows, idx_seq_out,
      idx_pos_out;
  // This forward's index arrays, in this backend's memory.
  const int32_t *tokens = nullptr, *positions = nullptr, *token_seq = nullptr,
                *slot_mapping = nullptr, *block_tables = nullptr, *logit_rows = nullptr,
                *seq_out = nullptr, *pos_out = nullptr;

  const int32_t* stage(DeviceBuffer& buf, const std::vector<int32_t>& v) {
    if (b.is_host()) return v.data();
    int32_t* p = grow<int32_t>(b, buf, int64_t(v.size()));
    b.to_device(p, v.data(), v.size() * sizeof(int32_t));
    return p;
  }
};

}  // namespace

struct Model::Impl {
  Impl(const Checkpoint& ckpt, const ModelPlacement& placement, std::unique_ptr<Backend> owned);

  void stage(const ForwardBatch& b, KVCache& kv);
  void enqueue(KVCache& kv, float* host_logits);
  void read_logits(float* logits, int64_t rows);
  void reserve(int64_t T, int64_t R, int64_t table_entries);

  Workspace& ws(Backend* b) { return *workspaces.at(b); }
  // Copies n floats of activations between workspaces of different backends.
  void transfer(Backend& from, const float* src, Backend& to, float* dst, int64_t n);
  // Attention over the paged cache for `n` query rows, then o_proj, the first residual add
  // onto x [n, hidden] with the post-attention norm, and the MLP, on the layer's backend. The
  // MLP's output is left in w.o: the caller adds it into x with the next norm (add_rmsnorm).
  void attend_and_mlp(const PreparedLayer& l, Workspace& w, const cpu::PagedKV& cache,
                      const float* q, float* x, int64_t n, const cpu::AttentionBatch& ab,
                      int64_t li, const model::LoraRows& lora_rows);
  // Adapter mode: the LoRA delta of the rows in `rows`, after the base projection p of layer li.
  void lora_delta(Backend& be, int64_t li, model::LoraProj p, const model::LoraRows& rows,
                  const float* x, float* y) const;

  const ModelConfig& cfg;
  std::unique_ptr<Backend> owned_backend;  // when loaded over a thread pool
  Backend* io;
  std::vector<Backend*> layer_backends;
  model::ModelWeights stored;  // the weights as the checkpoint stores them (views)
  std::unique_ptr<BackendWeight> embed, final_norm, lm_head_untied;
  const BackendWeight* lm_head = nullptr;
  std::vector<PreparedLayer> layers;
  std::map<Backend*, std::unique_ptr<Workspace>> workspaces;
  float scale;

  // Host-side scratch: the sequence and position of each logit row, the batch check's state,
  // and a staging area for hidden states that cross between backends.
  std::vector<int32_t> seq_out, pos_out;
  std::vector<int64_t> check_scratch;
  std::vector<float> staging;

  // Adapter mode: the loaded adapters, and this forward's adapted rows of T and of R.
  model::LoraSet* loras = nullptr;
  model::LoraRows lora_all, lora_out;

  // The staged batch's sizes (what enqueue() runs over), and how often a buffer has moved.
  int64_t staged_T = 0, staged_R = 0, staged_max_blocks = 0;
  int64_t buffer_moves = 0;
};

Model::Impl::Impl(const Checkpoint& ckpt, const ModelPlacement& placement,
                  std::unique_ptr<Backend> owned)
    : cfg(ckpt.config()), owned_backend(std::move(owned)), io(placement.io),
      layer_backends(placement.layers), stored(model::bind_weights(ckpt)),
      scale(float(1.0 / std::sqrt(double(cfg.head_dim)))) {
  if (!io) throw InvalidRequest("ModelPlacement.io: no backend given");
  if (layer_backends.empty()) layer_backends.assign(size_t(cfg.num_layers), io);
  if (int64_t(layer_backends.size()) != cfg.num_layers)
    throw InvalidRequest("ModelPlacement.layers: " + std::to_string(layer_backends.size()) +
                         " backends for " + std::to_string(cfg.num_layers) + " layers");
  for (Backend* b : layer_backends)
    if (!b) throw InvalidRequest("ModelPlacement.layers: a layer has no backend");

  // A backend that keeps its own copy of a weight (repacked, uploaded) never reads the mapping
  // again: dropping its pages keeps resident memory at one copy of the model, not two.
  auto prepare = [&ckpt](Backend& b, const LinearWeight& w) {
    std::unique_ptr<BackendWeight> out = b.prepare_linear(w);
    if (out->holds_copy)
      for (const TensorView* t : {&w.weight, &w.scales, &w.zeros, &w.mins, &w.bias})
        ckpt.release_pages(*t);
    return out;
  };
  embed = prepare(*io, stored.embed_tokens);
  final_norm = io->prepare_vector(stored.final_norm, "model.norm");
  if (cfg.tie_word_embeddings) {
    lm_head = embed.get();
  } else {
    lm_head_untied = prepare(*io, stored.lm_head);
    lm_head = lm_head_untied.get();
  }
  layers.resize(stored.layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    Backend& b = *layer_backends[i];
    const model::LayerWeights& s = stored.layers[i];
    PreparedLayer& l = layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    l.input_norm = b.prepare_vector(s.input_norm, p + "input_layernorm");
    l.post_attention_norm = b.prepare_vector(s.post_attention_norm, p + "post_attention_layernorm");
    l.q = prepare(b, s.q);
    l.k = prepare(b, s.k);
    l.v = prepare(b, s.v);
    l.o = prepare(b, s.o);
    l.gate = prepare(b, s.gate);
    l.up = prepare(b, s.up);
    l.down = prepare(b, s.down);
  }

  const std::vector<float> inv_freq = model::rope_inv_freq(cfg);
  auto add_workspace = [&](Backend* b) {
    if (workspaces.count(b)) return;
    auto w = std::make_unique<Workspace>(*b);
    w->inv_freq = DeviceBuffer(*b, inv_freq.size() * sizeof(float));
    b->to_device(w->inv_freq.get(), inv_freq.data(), inv_freq.size() * sizeof(float));
    workspaces.emplace(b, std::move(w));
  };
  add_workspace(io);
  for (Backend* b : layer_backends) add_workspace(b);
}

void Model::Impl::reserve(int64_t T, int64_t R, int64_t table_entries) {
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size, hd = cfg.head_dim;
  const int64_t H = cfg.num_heads, KVH = cfg.num_kv_heads;
  const int64_t rows = std::max(T, R);
  for (auto& [backend, wp] : workspaces) {
    Workspace& w = *wp;
    Backend& b = *backend;
    grow<float>(b, w.x, T * D, &buffer_moves);
    grow<float>(b, w.h, rows * D, &buffer_moves);
    grow<float>(b, w.q, T * H * hd, &buffer_moves);
    grow<float>(b, w.k, T * KVH * hd, &buffer_moves);
    grow<float>(b, w.v, T * KVH * hd, &buffer_moves);
    grow<float>(b, w.attn, rows * H * hd, &buffer_moves);
    grow<float>(b, w.o, rows * D, &buffer_moves);
    grow<float>(b, w.gate, rows * F, &buffer_moves);
    grow<float>(b, w.up, rows * F, &buffer_moves);
    grow<float>(b, w.act, rows * F, &buffer_moves);
    grow<float>(b, w.x_out, R * D, &buffer_moves);
    grow<float>(b, w.q_out, R * H * hd, &buffer_moves);
    if (!b.is_host() && &b == io) grow<float>(b, w.logits, R * cfg.vocab_size, &buffer_moves);
    if (b.is_host()) continue;  // a host backend reads the ForwardBatch's own arrays
    for (DeviceBuffer* idx : {&w.idx_tokens, &w.idx_positions, &w.idx_seq, &w.idx_slots})
      grow<int32_t>(b, *idx, T, &buffer_moves);
    for (DeviceBuffer* idx : {&w.idx_rows, &w.idx_seq_out, &w.idx_pos_out})
      grow<int32_t>(b, *idx, R, &buffer_moves);
    grow<int32_t>(b, w.idx_tables, table_entries, &buffer_moves);
  }
  seq_out.reserve(size_t(R));
  pos_out.reserve(size_t(R));
}

void Model::Impl::transfer(Backend& from, const float* src, Backend& to, float* dst, int64_t n) {
  const size_t bytes = size_t(n) * sizeof(float);
  if (from.is_host()) return to.to_device(dst, src, bytes);
  if (to.is_host()) return from.to_host(dst, src, bytes);
  staging.resize(size_t(n));
  from.to_host(staging.data(), src, bytes);
  to.to_device(dst, staging.data(), bytes);
}

void Model::Impl::lora_delta(Backend& be, int64_t li, model::LoraProj p,
                             const model::LoraRows& rows, const float* x, float* y) const {
  if (rows.empty()) return;
  if (!be.is_host())
    throw InvalidRequest("LoRA adapter mode runs on host backends; layer " + std::to_string(li) +
                         " is on " + be.name());
  loras->apply(li, p, rows, x, y);
}

void Model::Impl::attend_and_mlp(const PreparedLayer& l, Workspace& w, const cpu::PagedKV& cache,
                                 const float* qs, float* xs, int64_t n,
                                 const cpu::AttentionBatch& ab, int64_t li,
                                 const model::LoraRows& lr) {
  using model::LoraProj;
  Backend& b = w.b;
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size;
  float *attn = w.attn.get<float>(), *o = w.o.get<float>(), *h = w.h.get<float>();
  float *gate = w.gate.get<float>(), *up = w.up.get<float>(), *act = w.act.get<float>();
  b.paged_attention(qs, cfg.num_heads, cache, ab, scale, attn);
  b.linear(*l.o, attn, n, o);
  lora_delta(b, li, LoraProj::O, lr, attn, o);
  b.add_rmsnorm(xs, o, n, D, *l.post_attention_norm, cfg.rms_norm_eps, h);
  // Two weights of one input rather than one fused [2F, D] weight: gate and up sit apart in the
  // mapping and fusing them would mean copying the weights; linear_shared lets the backend
  // convert h once and run both in one pass.
  const BackendWeight* gate_up[2] = {l.gate.get(), l.up.get()};
  float* gate_up_out[2] = {gate, up};
  b.linear_shared(gate_up, gate_up_out, 2, h, n);
  lora_delta(b, li, LoraProj::Gate, lr, h, gate);
  lora_delta(b, li, LoraProj::Up, lr, h, up);
  b.silu_mul(gate, up, n, F, act);
  b.linear(*l.down, act, n, o);
  lora_delta(b, li, LoraProj::Down, lr, act, o);
  // The residual add of o into xs is left to the caller, which fuses it with the next norm.
}

void Model::Impl::stage(const ForwardBatch& b, KVCache& kv) {
  model::check_batch(b, kv, cfg, check_scratch);
  const int64_t T = int64_t(b.tokens.size()), R = int64_t(b.logit_rows.size());
  staged_T = T, staged_R = R, staged_max_blocks = b.max_blocks;
  if (T == 0) return;
  reserve(T, R, int64_t(b.block_tables.size()));
  seq_out.resize(size_t(R));
  pos_out.resize(size_t(R));
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = b.logit_rows[size_t(r)];
    seq_out[size_t(r)] = b.token_seq[size_t(t)];
    pos_out[size_t(r)] = b.positions[size_t(t)];
  }
  if (!b.token_lora.empty() && int64_t(b.token_lora.size()) != T)
    throw InvalidRequest("ForwardBatch.token_lora has " + std::to_string(b.token_lora.size()) +
                         " entries for " + std::to_string(T) + " tokens");
  if (loras) {
    loras->group(b.token_lora, nullptr, T, lora_all);
    loras->group(b.token_lora, b.logit_rows.data(), R, lora_out);
  } else if (std::any_of(b.token_lora.begin(), b.token_lora.end(), [](int32_t id) { return id; })) {
    throw InvalidRequest("ForwardBatch.token_lora names LoRA adapters but none are loaded");
  }
  for (auto& [backend, wp] : workspaces) {
    Workspace& w = *wp;
    w.tokens = w.stage(w.idx_tokens, b.tokens);
    w.positions = w.stage(w.idx_positions, b.positions);
    w.token_seq = w.stage(w.idx_seq, b.token_seq);
    w.slot_mapping = w.stage(w.idx_slots, b.slot_mapping);
    w.block_tables = w.stage(w.idx_tables, b.block_tables);
    w.logit_rows = w.stage(w.idx_rows, b.logit_rows);
    w.seq_out = w.stage(w.idx_seq_out, seq_out);
    w.pos_out = w.stage(w.idx_pos_out, pos_out);
  }
}

void Model::Impl::read_logits(float* logits, int64_t rows) {
  if (io->is_host() || rows <= 0) return;
  if (rows > staged_R)
    throw InvalidRequest("read_logits: " + std::to_string(rows) + " rows asked, the step has " +
                         std::to_string(staged_R));
  io->to_host(logits, ws(io).logits.get<float>(), size_t(rows * cfg.vocab_size) * sizeof(float));
}

void Model::Impl::enqueue(KVCache& kv, float* host_logits) {
  const int64_t T = staged_T, R = staged_R;
  if (T == 0) return;
  const int64_t D = cfg.hidden_size, hd = cfg.head_dim, H = cfg.num_heads;
  const int64_t max_blocks = staged_max_blocks;

  Workspace* cur = &ws(io);
  io->embedding(*embed, cur->tokens, T, cur->x.get<float>());
  // The last MLP output not yet added into the residual stream `cur->x` (or x_out after the
  // last layer): it is added by the next norm (add_rmsnorm), or before the stream crosses to
  // another backend.
  const float* pending = nullptr;
  const int64_t n_layers = int64_t(layers.size());
  for (int64_t li = 0; li < n_layers; ++li) {
    Workspace& w = ws(layer_backends[size_t(li)]);
    if (&w != cur) {  // the layer runs elsewhere: its input crosses once
      if (pending) cur->b.add(cur->x.get<float>(), pending, T * D);
      pending = nullptr;
      transfer(cur->b, cur->x.get<float>(), w.b, w.x.get<float>(), T * D);
      cur = &w;
    }
    Backend& be = w.b;
    const PreparedLayer& l = layers[size_t(li)];
    const cpu::PagedKV cache = kv.layer(li);
    float *x = w.x.get<float>(), *h = w.h.get<float>(), *q = w.q.get<float>();
    float *k = w.k.get<float>(), *v = w.v.get<float>();
    if (loras && !lora_all.empty() && be.is_host()) {  // LoRA-MoE routes on the residual stream
      if (pending) be.add(x, pending, T * D);
      pending = nullptr;
      loras->route(li, lora_all, x);
    }
    if (pending)
      be.add_rmsnorm(x, pending, T, D, *l.input_norm, cfg.rms_norm_eps, h);
    else
      be.rmsnorm(x, T, D, *l.input_norm, cfg.rms_norm_eps, h);
    pending = nullptr;
    // One input: the backend may convert h once and run the three in one pass.
    const BackendWeight* qkv[3] = {l.q.get(), l.k.get(), l.v.get()};
    float* qkv_out[3] = {q, k, v};
    be.linear_shared(qkv, qkv_out, 3, h, T);
    lora_delta(be, li, model::LoraProj::Q, lora_all, h, q);
    lora_delta(be, li, model::LoraProj::K, lora_all, h, k);
    lora_delta(be, li, model::LoraProj::V, lora_all, h, v);
    be.rope_kv_write(q, k, v, T, H, w.positions, w.inv_freq.get<float>(), w.slot_mapping, cache);
    if (li + 1 < n_layers) {
      const cpu::AttentionBatch all_rows{T, w.token_seq, w.positions, w.block_tables,
                                         max_blocks};
      attend_and_mlp(l, w, cache, q, x, T, all_rows, li, lora_all);
      pending = w.o.get<float>();
      continue;
    }
    // Past the last K/V write only the rows whose logits are wanted still matter; every op is
    // row-wise (kernels.h), so computing just those rows changes none of their values.
    if (R == 0) return;
    be.gather_rows(x, D, w.logit_rows, R, w.x_out.get<float>());
    be.gather_rows(q, H * hd, w.logit_rows, R, w.q_out.get<float>());
    const cpu::AttentionBatch out_rows{R, w.seq_out, w.pos_out, w.block_tables, max_blocks};
    attend_and_mlp(l, w, cache, w.q_out.get<float>(), w.x_out.get<float>(), R, out_rows, li,
                   lora_out);
    pending = w.o.get<float>();
  }
  Workspace& o = ws(io);
  if (cur != &o) {
    if (pending) cur->b.add(cur->x_out.get<float>(), pending, R * D);
    pending = nullptr;
    transfer(cur->b, cur->x_out.get<float>(), o.b, o.x_out.get<float>(), R * D);
  }
  float* x_out = o.x_out.get<float>();
  if (pending)
    io->add_rmsnorm(x_out, pending, R, D, *final_norm, cfg.rms_norm_eps, x_out);
  else
    io->rmsnorm(x_out, R, D, *final_norm, cfg.rms_norm_eps, x_out);
  io->linear(*lm_head, x_out, R, io->is_host() ? host_logits : o.logits.get<float>());
}

std::unique_ptr<Model> Model::load(const std::string& dir, ThreadPool& pool, ActPrecision act) {
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool, act);
  ModelPlacement placement{cpu.get(), {}};
  std::unique_ptr<Model> m(new Model());
  m->ckpt_ = Checkpoint::open(dir);
  m->impl_ = std::make_unique<Impl>(*m->ckpt_, placement, std::move(cpu));
  return m;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const ModelPlacement& placement) {
  std::unique_ptr<Model> m(new Model());
  m->ckpt_ = Checkpoint::open(dir);
  m->impl_ = std::make_unique<Impl>(*m->ckpt_, placement, nullptr);
  return m;
}

Backend& Model::io_backend() const { return *impl_->io; }
const std::vector<Backend*>& Model::layer_backends() const { return impl_->layer_backends; }

std::vector<WeightSummary> Model::weight_summary() const {
  std::map<std::string, WeightSummary> by_type;
  auto count = [&](const LinearWeight& w) {
    WeightSummary& s = by_type[weight_type_name(w.type)];
    s.type = weight_type_name(w.type);
    s.modules += 1;
    s.bytes += w.bytes();
  };
  const model::ModelWeights& w = impl_->stored;
  count(w.embed_tokens);
  for (const model::LayerWeights& l : w.layers)
    for (const LinearWeight* p : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) count(*p);
  if (!config().tie_word_embeddings) count(w.lm_head);
  std::vector<WeightSummary> out;
  for (auto& [name, s] : by_type) out.push_back(s);
  return out;
}

void Model::reserve(int64_t max_tokens, int64_t max_logit_rows, int64_t max_table_entries) {
  impl_->reserve(max_tokens, max_logit_rows, max_table_entries);
}

void Model::set_loras(model::LoraSet* loras) { impl_->loras = loras; }

void Model::forward(const ForwardBatch& batch, KVCache& kv, float* logits) {
  impl_->stage(batch, kv);
  impl_->enqueue(kv, logits);
  impl_->read_logits(logits, int64_t(batch.logit_rows.size()));
}

void Model::stage(const ForwardBatch& batch, KVCache& kv) { impl_->stage(batch, kv); }
void Model::enqueue(KVCache& kv, float* host_logits) { impl_->enqueue(kv, host_logits); }
void Model::read_logits(float* logits, int64_t rows) { impl_->read_logits(logits, rows); }
int64_t Model::buffer_moves() const { return impl_->buffer_moves; }

Model::~Model() = default;

}  // namespace medrt
