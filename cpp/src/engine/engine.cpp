#include "medrt/engine.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engine/block_manager.h"
#include "engine/failpoint.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "medrt/error.h"

namespace medrt {

using engine::ScheduledSeq;
using engine::Sequence;

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw InvalidRequest("EngineConfig." + what);
}

int resolve_max_model_len(const EngineConfig& c, const ModelConfig& m) {
  int limit = m.max_position_embeddings;
  if (c.max_model_len == 0) return limit;
  require(c.max_model_len >= 2 && c.max_model_len <= limit,
          "max_model_len = " + std::to_string(c.max_model_len) +
              ": must be in [2, max_position_embeddings = " + std::to_string(limit) + "]");
  return c.max_model_len;
}

// Fills `o` (a fresh slot) with what every output of sequence `s` carries; finished.
RequestOutput& final_output(const Sequence& s, RequestOutput& o) {
  o.request_id = s.id;
  o.finished = true;
  o.finish_reason = s.finish_reason;
  o.stop_token_id = s.stop_token_id;
  o.num_prompt_tokens = s.num_prompt_tokens;
  o.num_cached_tokens = std::max(0, s.num_cached_tokens);
  return o;
}

}  // namespace

RequestOutput& StepOutputs::grow() {
  if (n_ == slots_.size()) slots_.emplace_back();
  return slots_[n_++];
}

RequestOutput& StepOutputs::next() {
  RequestOutput& o = grow();
  o.request_id = 0;
  o.new_token_ids.clear();
  o.logprobs.clear();
  o.prompt_logprobs.clear();
  o.prompt_logprobs_start = 0;
  o.finished = false;
  o.finish_reason = FinishReason::None;
  o.stop_token_id = -1;
  o.num_prompt_tokens = 0;
  o.num_cached_tokens = 0;
  return o;
}

void StepOutputs::append(StepOutputs& from) {
  for (size_t i = 0; i < from.n_; ++i) std::swap(grow(), from.slots_[i]);
  from.n_ = 0;
}

void StepOutputs::append_copy(StepOutputs& from) {
  for (size_t i = 0; i < from.n_; ++i) {
    RequestOutput& src = from.slots_[i];
    std::vector<TokenLogprobs> prompt_logprobs;  // taken out, so the copy below skips it
    prompt_logprobs.swap(src.prompt_logprobs);
    RequestOutput& dst = grow();
    dst = src;
    dst.prompt_logprobs.swap(prompt_logprobs);
  }
}

std::vector<RequestOutput> StepOutputs::take() {
  std::vector<RequestOutput> out;
  out.reserve(n_);
  for (size_t i = 0; i < n_; ++i) out.push_back(std::move(slots_[i]));
  n_ = 0;
  return out;
}

struct Engine::Impl {
  EngineConfig cfg;
  ThreadPool pool;
  std::unique_ptr<engine::ModelRunner> runner;
  int max_model_len = 0;
  int vocab = 0;
  std::unique_ptr<engine::BlockManager> blocks;
  std::unique_ptr<engine::Scheduler> scheduler;
  std::unique_ptr<engine::Sampler> sampler;

  // Live requests, touched only by the stepping thread; the scheduler holds pointers to them.
  std::map<uint64_t, std::unique_ptr<Sequence>> seqs;
  std::mutex step_mu;  // one step at a time

  // The inbox: add_request/abort from any thread, drained at the start of each step.
  std::mutex inbox_mu;
  std::condition_variable work_cv;
  std::vector<std::unique_ptr<Sequence>> new_seqs;
  std::vector<uint64_t> aborts;
  std::set<uint64_t> unfinished;  // added and not yet reported finished
  // Adapter mode: per adapter loaded, how many unfinished requests use it, and the salt of its
  // prefix-cache chain (new at every load, so a reloaded id never meets blocks of the old one).
  struct LoraUse {
    int users = 0;
    uint64_t salt = 0;
  };
  std::map<int32_t, LoraUse> lora_users;
  uint64_t lora_loads = 0;
  uint64_t next_id = 1;
  std::mt19937_64 seed_gen;
  bool stop_requested = false;

  // Background mode. lifecycle_mu serialises start() and stop() (and so the destructor).
  std::mutex lifecycle_mu;
  std::thread loop;
  std::mutex out_mu;
  std::condition_variable out_cv;
  StepOutputs outputs;  // published, under out_mu: taken by wait_outputs / the next step()

  // Per-step scratch, reused so that a steady decode step allocates nothing.
  std::vector<ScheduledSeq> sched;
  struct PromptScore {
    Sequence* seq;
    int pos;      // these logits score prompt token pos + 1
    size_t row;   // in the logits buffer
  };
  std::vector<PromptScore> scores;
  std::vector<TokenLogprobs> scored;
  std::vector<Sequence*> rows;
  std::vector<size_t> row_of;
  std::vector<engine::Sample> samples;
  StepOutputs step_out;  // the stepping thread's outputs before they are published
  std::vector<std::unique_ptr<Sequence>> inbox_added;
  std::vector<uint64_t> inbox_aborted;
  std::exception_ptr loop_error;
  bool loop_running = false;

  mutable std::mutex stats_mu;
  EngineStats stats;

  explicit Impl(const EngineConfig& c)
      : cfg(c), pool(ThreadPool::resolve_num_threads(c.num_threads)), seed_gen(c.seed) {
    require(c.block_size > 0, "block_size = " + std::to_string(c.block_size) + ": must be > 0");
    require(c.max_num_seqs > 0, "max_num_seqs = " + std::to_string(c.max_num_seqs) + ": must be > 0");
    require(c.max_num_batched_tokens > 0, "max_num_batched_tokens = " +
                                              std::to_string(c.max_num_batched_tokens) + ": must be > 0");
    require(c.num_blocks >= 0, "num_blocks = " + std::to_string(c.num_blocks) + ": must be >= 0");
    runner = std::make_unique<engine::ModelRunner>(c, pool);
    const ModelConfig& m = runner->model_config();
    vocab = m.vocab_size;
    max_model_len = resolve_max_model_len(c, m);
    const int64_t num_blocks = runner->num_blocks();
    blocks = std::make_unique<engine::BlockManager>(num_blocks, c.block_size, c.enable_prefix_caching);
    scheduler = std::make_unique<engine::Scheduler>(*blocks, c.max_num_seqs, c.max_num_batched_tokens);
    sampler = std::make_unique<engine::Sampler>(vocab, m.eos_token_ids, pool.size());
    stats.num_blocks = stats.free_blocks = num_blocks;
    stats.block_size = c.block_size;
    stats.device_layers = runner->device_layers();
  }

  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const {
    if (prompt.empty()) throw InvalidRequest("prompt is empty: a request needs at least one token");
    for (size_t i = 0; i < prompt.size(); ++i)
      if (prompt[i] < 0 || prompt[i] >= vocab)
        throw InvalidRequest("prompt[" + std::to_string(i) + "] = " + std::to_string(prompt[i]) +
                             " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    if (int64_t(prompt.size()) >= max_model_len)
      throw InvalidRequest("prompt has " + std::to_string(prompt.size()) +
                           " tokens; max_model_len = " + std::to_string(max_model_len) +
                           " leaves room for at most " + std::to_string(max_model_len - 1) +
                           " prompt tokens");
    params.validate(vocab);
    // Every token but the last generated one needs a KV slot.
    int64_t total = std::min<int64_t>(int64_t(prompt.size()) + params.max_tokens, max_model_len);
    int64_t need = blocks->blocks_for(total - 1);
    if (need > blocks->num_blocks())
      throw CapacityError("request needs " + std::to_string(need) + " KV blocks (prompt " +
                          std::to_string(prompt.size()) + " + max_tokens " +
                          std::to_string(params.max_tokens) + " tokens, block_size " +
                          std::to_string(cfg.block_size) + ") but the whole pool has " +
                          std::to_string(blocks->num_blocks()));
  }

  uint64_t add(const std::vector<int32_t>& prompt, const SamplingParams& params) {
    validate(prompt, params);
    uint64_t id;
    {
      std::lock_guard lk(inbox_mu);
      uint64_t salt = 0;
      if (params.lora_id != 0) {
        auto it = lora_users.find(params.lora_id);
        if (it == lora_users.end())
          throw InvalidRequest("SamplingParams.lora_id = " + std::to_string(params.lora_id) +
                               ": no LoRA adapter with this id is loaded");
        ++it->second.users;
        salt = it->second.salt;
      }
      id = next_id++;
      uint64_t seed = params.seed >= 0 ? uint64_t(params.seed) : seed_gen();
      new_seqs.push_back(std::make_unique<Sequence>(id, prompt, params, seed));
      new_seqs.back()->prefix_salt = salt;
      unfinished.insert(id);
    }
    work_cv.notify_one();
    return id;
  }

  void abort(uint64_t id) {
    {
      std::lock_guard lk(inbox_mu);
      if (!unfinished.count(id)) return;
      aborts.push_back(id);
    }
    work_cv.notify_one();
  }

  // Moves a finished sequence out: its blocks go back to the pool, its id stops being live.
  void retire(Sequence& s) {
    scheduler->remove(&s);
    {
      std::lock_guard lk(inbox_mu);
      unfinished.erase(s.id);
      if (s.params.lora_id != 0) --lora_users[s.params.lora_id].users;
    }
    seqs.erase(s.id);
  }

  void drain_inbox(StepOutputs& out) {
    {
      std::lock_guard lk(inbox_mu);
      if (new_seqs.empty() && aborts.empty()) return;
      inbox_added.swap(new_seqs);
      inbox_aborted.swap(aborts);
    }
    for (auto& s : inbox_added) {
      scheduler->add(s.get());
      seqs.emplace(s->id, std::move(s));
    }
    inbox_added.clear();
    for (uint64_t id : inbox_aborted) {
      auto it = seqs.find(id);
      if (it == seqs.end()) continue;  // finished before the abort arrived
      it->second->finish_reason = FinishReason::Abort;
      final_output(*it->second, out.next());
      retire(*it->second);
    }
    inbox_aborted.clear();
  }

  // Scores prompt tokens (exact log-softmax over the vocabulary, one row per task) and appends
  // them to their sequences in position order.
  void score_prompts(const float* logits) {
    if (scores.empty()) return;
    scored.resize(scores.size());
    pool.parallel_for(int64_t(scores.size()), [&](int thread, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const PromptScore& sc = scores[size_t(i)];
        scored[size_t(i)] = sampler->logprobs(logits + sc.row * size_t(vocab),
                                              sc.seq->tokens[size_t(sc.pos + 1)],
                                              sc.seq->params.prompt_logprobs, thread);
      }
    });
    for (size_t i = 0; i < scores.size(); ++i) scores[i].seq->prompt_logprobs.push_back(std::move(scored[i]));
  }

  static void take_prompt_logprobs(Sequence& s, RequestOutput& o) {
    if (s.params.prompt_logprobs < 0 || s.prompt_logprobs_sent) return;
    o.prompt_logprobs = std::move(s.prompt_logprobs);
    o.prompt_logprobs_start = s.params.prompt_logprobs_start;
    s.prompt_logprobs_sent = true;
  }

  // Decides whether the token just appended ends the sequence, and why.
  void finish_check(Sequence& s, int32_t t) {
    const SamplingParams& p = s.params;
    bool is_stop = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) != p.stop_token_ids.end();
    const auto& eos = runner->model_config().eos_token_ids;
    bool is_eos = !p.ignore_eos && std::find(eos.begin(), eos.end(), t) != eos.end();
    if (is_stop || is_eos) {
      s.finish_reason = FinishReason::Stop;
      s.stop_token_id = t;
    } else if (s.num_output_tokens() >= p.max_tokens || s.num_tokens() >= max_model_len) {
      s.finish_reason = FinishReason::Length;
    }
  }

  // One scheduling step; appends its outputs to `out`.
  void step(StepOutputs& out) {
    drain_inbox(out);
    scheduler->schedule(sched);
    int64_t prefill = 0, sampled = 0;
    if (!sched.empty()) {
      float* logits = runner->execute(sched);
      for (const ScheduledSeq& s : sched)
        if (!(s.num_tokens == 1 && s.seq->num_output_tokens() > 0 && s.sample)) prefill += s.num_tokens;
      // Logit rows come per scheduled sequence in batch order: its prompt-scoring rows, then
      // its sampling row (ModelRunner::build_batch's order).
      scores.clear();
      rows.clear();
      row_of.clear();
      size_t next_row = 0;
      for (const ScheduledSeq& s : sched) {
        auto [from, to] = s.seq->prompt_logprob_rows(s.seq->num_computed_tokens, s.num_tokens);
        for (int pos = from; pos < to; ++pos) scores.push_back({s.seq, pos, next_row++});
        if (s.sample) {
          rows.push_back(s.seq);
          row_of.push_back(next_row++);
        }
      }
      score_prompts(logits);
      scheduler->advance(sched);
      // Rows share nothing (each reads its own logits and Sequence), so any split is exact.
      samples.resize(rows.size());
      pool.parallel_for(int64_t(rows.size()), [&](int thread, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          samples[size_t(i)] = sampler->sample(logits + row_of[size_t(i)] * size_t(vocab),
                                               *rows[size_t(i)], thread);
      });
      for (size_t i = 0; i < rows.size(); ++i) {
        Sequence& seq = *rows[i];
        engine::Sample& r = samples[i];
        seq.append_token(r.token);
        ++sampled;
        finish_check(seq, r.token);
        bool done = seq.finish_reason != FinishReason::None;
        RequestOutput& o = final_output(seq, out.next());
        o.finished = done;
        o.new_token_ids.push_back(r.token);
        if (seq.params.logprobs >= 0) o.logprobs.push_back(std::move(r.logprobs));
        take_prompt_logprobs(seq, o);
        if (done) retire(seq);
      }
    }
    std::lock_guard lk(stats_mu);
    stats.free_blocks = blocks->num_free();
    stats.num_running = scheduler->num_running();
    stats.num_waiting = scheduler->num_waiting();
    stats.num_preemptions = scheduler->num_preemptions();
    stats.prefix_cache_queries = blocks->prefix_queries();
    stats.prefix_cache_hits = blocks->prefix_hits();
    stats.steps += 1;
    stats.graph_replays = runner->graph_replays();
    stats.prompt_tokens += prefill;
    stats.generation_tokens += sampled;
  }

  // After a failed step: every live request ends with FinishReason::Error (a step that failed
  // part way may have left its KV blocks half written, so none of them can go on) and no
  // client waits forever. The caller rethrows the error.
  void fail_all(StepOutputs& out) {
    drain_inbox(out);
    while (!seqs.empty()) {
      Sequence& s = *seqs.begin()->second;
      s.finish_reason = FinishReason::Error;
      final_output(s, out.next());
      retire(s);
    }
  }

  // One step, under step_mu. On failure the requests end (fail_all) with their outputs in
  // `out`, and the error is returned instead of thrown, so both modes report it their way.
  std::exception_ptr guarded_step(StepOutputs& out) {
    std::lock_guard lk(step_mu);
    out.clear();
    try {
      if (engine::failpoint::take_step_failure())
        throw Error("step failed (injected by the test failpoint)");
      step(out);
      return nullptr;
    } catch (...) {
      std::exception_ptr error = std::current_exception();
      out.clear();
      try {
        fail_all(out);
      } catch (...) {
        // Retiring only frees memory; if even that fails, the first error is still the one
        // the client must see.
      }
      return error;
    }
  }

  void run_loop() {
    for (;;) {
      {
        std::unique_lock lk(inbox_mu);
        work_cv.wait(lk, [&] {
          return stop_requested || !new_seqs.empty() || !aborts.empty() || !scheduler->empty();
        });
        if (stop_requested) return;
      }
      std::exception_ptr error = guarded_step(step_out);
      std::lock_guard lk(out_mu);
      // Moved, not copied: once published, the error belongs to the thread that rethrows it,
      // and this thread never touches the exception object again.
      const bool failed = error != nullptr;
      if (failed) loop_error = std::move(error);
      if (step_out.empty() && !failed) continue;
      // Copied: the loop keeps its own slots, so how many steps' outputs wait for the
      // consumer never costs the next step an allocation.
      outputs.append_copy(step_out);
      out_cv.notify_all();
    }
  }
};

Engine::Engine(const EngineConfig& config) : impl_(std::make_unique<Impl>(config)) {}

Engine::~Engine() { stop(); }

const ModelConfig& Engine::model_config() const { return impl_->runner->model_config(); }
const EngineConfig& Engine::config() const { return impl_->cfg; }
int Engine::max_model_len() const { return impl_->max_model_len; }

uint64_t Engine::add_request(const std::vector<int32_t>& prompt, const SamplingParams& params) {
  return impl_->add(prompt, params);
}

void Engine::abort(uint64_t request_id) { impl_->abort(request_id); }

bool Engine::has_unfinished() const {
  std::lock_guard lk(impl_->inbox_mu);
  return !impl_->unfinished.empty();
}

void Engine::step(StepOutputs& out) {
  {
    std::lock_guard lk(impl_->out_mu);
    if (impl_->loop_running) throw Error("Engine::step() cannot run while the background loop runs (start())");
    // Outputs of requests a failed step ended come first.
    out.clear();
    out.append(impl_->outputs);
  }
  StepOutputs& now = impl_->step_out;
  if (std::exception_ptr error = impl_->guarded_step(now)) {
    std::lock_guard lk(impl_->out_mu);
    impl_->outputs.append(out);  // handed back, in order, by the next call
    impl_->outputs.append(now);
    std::rethrow_exception(error);
  }
  out.append(now);
}

std::vector<RequestOutput> Engine::step() {
  StepOutputs out;
  step(out);
  return out.take();
}

void Engine::start() {
  std::lock_guard life(impl_->lifecycle_mu);
  std::lock_guard lk(impl_->out_mu);
  if (impl_->loop_running) return;
  impl_->loop = std::thread([this] { impl_->run_loop(); });
  impl_->loop_running = true;
}

// Callers from several threads take turns on lifecycle_mu: the first joins the loop, the
// others find it stopped. Only the loop thread itself may not stop it (it cannot join itself).
void Engine::stop() {
  std::lock_guard life(impl_->lifecycle_mu);
  {
    std::lock_guard lk(impl_->out_mu);
    if (!impl_->loop_running) return;
  }
  if (impl_->loop.get_id() == std::this_thread::get_id())
    throw Error("Engine::stop() called from the engine's own loop thread");
  {
    std::lock_guard lk(impl_->inbox_mu);
    impl_->stop_requested = true;
  }
  impl_->work_cv.notify_all();
  impl_->loop.join();
  {
    std::lock_guard lk(impl_->inbox_mu);
    impl_->stop_requested = false;
  }
  std::lock_guard lk(impl_->out_mu);
  impl_->loop_running = false;
  impl_->out_cv.notify_all();
}

void Engine::wait_outputs(StepOutputs& out, std::chrono::milliseconds timeout) {
  std::unique_lock lk(impl_->out_mu);
  impl_->out_cv.wait_for(lk, timeout, [&] {
    return !impl_->outputs.empty() || impl_->loop_error || !impl_->loop_running;
  });
  if (impl_->loop_error) std::rethrow_exception(std::exchange(impl_->loop_error, nullptr));
  // The caller's previous slots go back to the engine for the next outputs.
  out.clear();
  out.swap(impl_->outputs);
}

std::vector<RequestOutput> Engine::wait_outputs(std::chrono::milliseconds timeout) {
  StepOutputs out;
  wait_outputs(out, timeout);
  return out.take();
}

void Engine::add_lora(int32_t id, const LoraAdapterWeights& weights) {
  std::lock_guard step(impl_->step_mu);  // between steps: the model reads the set while it runs
  for (Backend* b : impl_->runner->model().layer_backends())
    if (!b->is_host())
      throw InvalidRequest("LoRA adapter mode runs on host (CPU) backends; this engine runs "
                           "layers on " + b->name());
  impl_->runner->loras().add(id, weights);
  std::lock_guard lk(impl_->inbox_mu);
  impl_->lora_users.emplace(id, Impl::LoraUse{0, ++impl_->lora_loads});
}

bool Engine::remove_lora(int32_t id) {
  std::lock_guard step(impl_->step_mu);
  std::lock_guard lk(impl_->inbox_mu);
  auto it = impl_->lora_users.find(id);
  if (it == impl_->lora_users.end() || it->second.users > 0) return false;
  impl_->lora_users.erase(it);
  return impl_->runner->loras().remove(id);
}

std::vector<int32_t> Engine::loras() const {
  std::lock_guard lk(impl_->inbox_mu);
  std::vector<int32_t> ids;
  for (const auto& [id, users] : impl_->lora_users) ids.push_back(id);
  return ids;
}

EngineStats Engine::stats() const {
  EngineStats s;
  {
    std::lock_guard lk(impl_->stats_mu);
    s = impl_->stats;
  }
  std::lock_guard lk(impl_->inbox_mu);
  s.num_waiting += int64_t(impl_->new_seqs.size());
  return s;
}

}  // namespace medrt
