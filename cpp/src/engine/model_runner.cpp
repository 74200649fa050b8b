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

}  // namespace

ModelRunner::ModelRunner(const EngineConfig& config, ThreadPool& pool)
    : cfg_(config), cpu_(make_cpu_backend(pool, cfg_.activation_precision)),
      model_(Model::load(cfg_.model_dir, ModelPlacement{cpu_.get(), {}})),
      loras_(model_->config(), pool) {
  model_->set_loras(&loras_);
  const ModelConfig& m = model_->config();
  const int64_t num_blocks = resolve_num_blocks(cfg_, m);
  kv_ = std::make_unique<KVCache>(m, num_blocks, cfg_.block_size, model_->layer_backends(),
                                  cfg_.kv_cache_dtype);

  // Persistent step arrays and activations, sized for the largest step the scheduler makes.
  const int64_t max_tokens = cfg_.max_num_batched_tokens, max_seqs = cfg_.max_num_seqs;
  const int64_t max_len = cfg_.max_model_len > 0 ? cfg_.max_model_len : m.max_position_embeddings;
  const int64_t max_blocks = std::min<int64_t>((max_len + cfg_.block_size - 1) / cfg_.block_size,
                                               num_blocks);
  batch_.tokens.reserve(size_t(max_tokens));
  batch_.positions.reserve(size_t(max_tokens));
  batch_.token_seq.reserve(size_t(max_tokens));
  batch_.slot_mapping.reserve(size_t(max_tokens));
  batch_.token_lora.reserve(size_t(max_tokens));
  batch_.logit_rows.reserve(size_t(max_tokens));  // prompt logprobs may want every row
  batch_.block_tables.reserve(size_t(max_seqs * max_blocks));
  logits_.reserve(size_t(max_seqs) * size_t(m.vocab_size));
  model_->reserve(max_tokens, max_seqs);
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

float* ModelRunner::execute(const std::vector<ScheduledSeq>& sched) {
  build_batch(sched);
  const size_t need = batch_.logit_rows.size() * size_t(model_->config().vocab_size);
  if (logits_.size() < need) logits_.resize(need);
  model_->forward(batch_, *kv_, logits_.data());
  return logits_.data();
}

}  // namespace medrt::engine
