#include "engine/model_runner.h"

#include <algorithm>
#include <string>

#include "medrt/error.h"

namespace medrt::engine {
namespace {

int64_t resolve_num_blocks(const EngineConfig& c, const ModelConfig& m) {
  if (c.num_blocks > 0) return c.num_blocks;
  int64_t per_block = KVCache::bytes_per_block(m, c.block_size, c.kv_cache_dtype);
  int64_t n = c.kv_cache_bytes / per_block;
  if (n < 1)
    throw CapacityError("EngineConfig.kv_cache_bytes = " + std::to_string(c.kv_cache_bytes) +
                        " holds no KV block (one block of " + std::to_string(c.block_size) +
                        " tokens takes " + std::to_string(per_block) + " bytes)");
  return n;
}

// The backends and layer placement; the checkpoint is opened here only when a device map needs
// its weight sizes (Model::load opens it again).
EnginePlacement place(const EngineConfig& c, ThreadPool& pool) {
  EnginePlacement p = place_model(c, pool);
  if (needs_layer_map(c)) {
    const std::unique_ptr<Checkpoint> ckpt = Checkpoint::open(c.model_dir);
    map_layers(p, c, *ckpt, resolve_num_blocks(c, ckpt->config()));
  }
  return p;
}

}  // namespace

ModelRunner::ModelRunner(const EngineConfig& config, ThreadPool& pool)
    : cfg_(config), placement_(place(cfg_, pool)),
      model_(Model::load(cfg_.model_dir, placement_.placement)),
      loras_(model_->config(), pool) {
  model_->set_loras(&loras_);
  const ModelConfig& m = model_->config();
  const int64_t num_blocks = resolve_num_blocks(cfg_, m);
  kv_ = std::make_unique<KVCache>(m, num_blocks, cfg_.block_size, model_->layer_backends(),
                                  cfg_.kv_cache_dtype);

  // Persistent step arrays and activations, sized for the largest step the scheduler makes.
  const int64_t max_tokens = cfg_.max_num_batched_tokens, max_seqs = cfg_.max_num_seqs;
  const int64_t max_len = cfg_.max_model_len > 0 ? cfg_.max_model_len : m.max_position_embeddings;
  max_blocks_ = std::min<int64_t>((max_len + cfg_.block_size - 1) / cfg_.block_size, num_blocks);
  batch_.tokens.reserve(size_t(max_tokens));
  batch_.positions.reserve(size_t(max_tokens));
  batch_.token_seq.reserve(size_t(max_tokens));
  batch_.slot_mapping.reserve(size_t(max_tokens));
  batch_.token_lora.reserve(size_t(max_tokens));
  batch_.logit_rows.reserve(size_t(max_tokens));  // prompt logprobs may want every row
  batch_.block_tables.reserve(size_t(max_seqs * max_blocks_));
  logits_.reserve(size_t(max_seqs) * size_t(m.vocab_size));
  model_->reserve(max_tokens, max_seqs, max_seqs * max_blocks_);

  // Graphs replay only steps whose every op is on the device (a CPU layer's copies sync).
  bool all_device = placement_.device != nullptr;
  for (Backend* b : model_->layer_backends()) all_device = all_device && !b->is_host();
  if (all_device) {
    graphs_ = std::make_unique<DecodeGraphs>(model_->io_backend(), cfg_.max_num_seqs,
                                             cfg_.enforce_eager);
    step_hooks_.stage = [this](int rows) { stage_padded(rows, batch_.n_seqs); };
    step_hooks_.enqueue = [this](int) { model_->enqueue(*kv_, nullptr); };
    warm_up_graphs();
  }
}

void ModelRunner::warm_up_graphs() {
  if (!graphs_->enabled()) return;
  // Warm-up steps are all pad rows. One eager pass per bucket first: kernels load lazily on
  // their first launch, which a capture cannot do, and it sizes every buffer before any
  // address is captured.
  const DecodeGraphs::Hooks pads{[this](int rows) { stage_padded(rows, 0); }, step_hooks_.enqueue};
  for (int rows : graphs_->buckets().warmup_sizes()) {
    pads.stage(rows);
    pads.enqueue(rows);
  }
  model_->io_backend().synchronize();
  graphs_->warm_up(pads);
  graph_moves_ = model_->buffer_moves();
}

void ModelRunner::stage_padded(int rows, int64_t real) {
  ForwardBatch& g = graph_batch_;
  g.clear();
  g.n_seqs = rows;
  g.max_blocks = max_blocks_;
  g.block_tables.assign(size_t(rows * max_blocks_), 0);
  for (int64_t i = 0; i < rows; ++i) {
    const bool pad = i >= real;
    g.tokens.push_back(pad ? 0 : batch_.tokens[size_t(i)]);
    g.positions.push_back(pad ? 0 : batch_.positions[size_t(i)]);
    g.token_seq.push_back(int32_t(i));
    g.slot_mapping.push_back(pad ? -1 : batch_.slot_mapping[size_t(i)]);
    g.logit_rows.push_back(int32_t(i));
    if (pad) continue;
    std::fill_n(g.block_tables.begin() + ptrdiff_t(i * max_blocks_), max_blocks_, -1);
    std::copy_n(batch_.block_tables.begin() + ptrdiff_t(i * batch_.max_blocks), batch_.max_blocks,
                g.block_tables.begin() + ptrdiff_t(i * max_blocks_));
  }
  model_->stage(g, *kv_);
}

void ModelRunner::build_batch(const std::vector<ScheduledSeq>& sched) {
  ForwardBatch& fb = batch_;
  fb.clear();
  const int bs = cfg_.block_size;
  fb.n_seqs = int64_t(sched.size());
  for (const ScheduledSeq& s : sched)
    fb.max_blocks = std::max(fb.max_blocks, int64_t(s.seq->block_table.size()));
  fb.block_tables.assign(size_t(fb.n_seqs * fb.max_blocks), -1);
  for (size_t i = 0; i < sched.size(); ++i) {
    const Sequence& seq = *sched[i].seq;
    std::copy(seq.block_table.begin(), seq.block_table.end(),
              fb.block_tables.begin() + ptrdiff_t(i * size_t(fb.max_blocks)));
    const auto [score_from, score_to] = seq.prompt_logprob_rows(seq.num_computed_tokens, sched[i].num_tokens);
    for (int j = 0; j < sched[i].num_tokens; ++j) {
      const int pos = seq.num_computed_tokens + j;
      fb.tokens.push_back(seq.tokens[size_t(pos)]);
      fb.positions.push_back(pos);
      fb.token_seq.push_back(int32_t(i));
      fb.slot_mapping.push_back(seq.block_table[size_t(pos / bs)] * bs + pos % bs);
      if (pos >= score_from && pos < score_to) fb.logit_rows.push_back(int32_t(fb.tokens.size()) - 1);
      if (!loras_.empty()) fb.token_lora.push_back(seq.params.lora_id);
    }
    if (sched[i].sample) fb.logit_rows.push_back(int32_t(fb.tokens.size()) - 1);
  }
}

int64_t ModelRunner::device_layers() const {
  const std::vector<Backend*>& layers = model_->layer_backends();
  return std::count_if(layers.begin(), layers.end(), [](Backend* b) { return !b->is_host(); });
}

float* ModelRunner::execute(const std::vector<ScheduledSeq>& sched) {
  build_batch(sched);
  const int64_t R = int64_t(batch_.logit_rows.size());
  const size_t need = size_t(R) * size_t(model_->config().vocab_size);
  if (logits_.size() < need) logits_.resize(need);
  // A decode-only step (one token and one logit row per sequence, in order) may replay a graph
  // of the smallest captured bucket that holds it; everything else runs eagerly.
  bool decode_only = int64_t(batch_.tokens.size()) == batch_.n_seqs && R == batch_.n_seqs &&
                     batch_.max_blocks <= max_blocks_ && batch_.token_lora.empty();
  for (int64_t r = 0; decode_only && r < R; ++r) decode_only = batch_.logit_rows[size_t(r)] == r;
  if (graphs_ && graphs_->enabled() && decode_only && R > 0) {
    if (model_->buffer_moves() != graph_moves_) {  // a larger step moved a captured buffer
      graphs_ = std::make_unique<DecodeGraphs>(model_->io_backend(), cfg_.max_num_seqs, false);
      warm_up_graphs();
    }
    const int bucket = graphs_->run(int(R), step_hooks_);
    if (bucket > 0) {
      model_->read_logits(logits_.data(), R);
      return logits_.data();
    }
  }
  model_->forward(batch_, *kv_, logits_.data());
  return logits_.data();
}

}  // namespace medrt::engine
