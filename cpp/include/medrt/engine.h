// The engine: continuous batching over a paged KV cache. Requests are token ids plus sampling
// parameters; outputs are token ids, logprobs and finish reasons. The engine loop runs on its
// own thread (start()); add_request/abort are safe to call from any thread while it runs.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "medrt/config.h"
#include "medrt/dtype.h"
#include "medrt/linear.h"
#include "medrt/lora.h"
#include "medrt/sampling.h"

namespace medrt {

struct EngineConfig {
  std::string model_dir;
  int block_size = 16;
  int64_t kv_cache_bytes = 512ll << 20;  // KV pool budget; the block count follows from it
  int64_t num_blocks = 0;                // > 0 overrides kv_cache_bytes (tests use tiny pools)
  int max_num_seqs = 64;                 // sequences in one step
  int max_num_batched_tokens = 2048;     // token budget of one step (prefill chunks + decodes)
  int max_model_len = 0;                 // 0: the model's max_position_embeddings
  bool enable_prefix_caching = true;
  int num_threads = 0;  // 0: physical cores within the usable CPUs; more than usable: InvalidRequest
  uint64_t seed = 0;                     // seeds requests that carry no seed of their own
  // How the CPU kernels of quantized weights read activations (linear.h): Int8x2 for scoring
  // and for matching a float reference token for token, at more integer work per token.
  ActPrecision activation_precision = ActPrecision::Int8;
  // Element type of the KV cache (F32 or F16): F16 halves the bytes each decode step reads from
  // the cache and doubles the tokens kv_cache_bytes holds, at one f16 rounding of each K and V.
  DType kv_cache_dtype = DType::F32;
  // Where the model runs (docs/cuda.md): "cpu", or "cuda" / "cuda:N" (the CUDA backend on device
  // N; InvalidRequest saying why when it cannot run here). On CUDA, decode-only steps replay
  // CUDA graphs captured per batch-size bucket unless enforce_eager; device_map "auto" places
  // the decoder layers that do not fit in device memory on the CPU ("" keeps them all on the
  // device).
  std::string device = "cpu";
  bool enforce_eager = false;
  std::string device_map;
};

// Error: a step failed (out of memory, a kernel error) and ended every request it held.
enum class FinishReason { None, Stop, Length, Abort, Error };
const char* finish_reason_name(FinishReason r);  // "", "stop", "length", "abort", "error"

// What one step produced for one request.
struct RequestOutput {
  uint64_t request_id = 0;
  std::vector<int32_t> new_token_ids;
  std::vector<TokenLogprobs> logprobs;  // one per new token when requested
  // With SamplingParams.prompt_logprobs, on the request's first output (or its final one when
  // it ends before sampling): entry i scores prompt token prompt_logprobs_start + i.
  std::vector<TokenLogprobs> prompt_logprobs;
  int prompt_logprobs_start = 0;
  bool finished = false;
  FinishReason finish_reason = FinishReason::None;
  int32_t stop_token_id = -1;           // the stop/EOS token that ended it, if any
  int num_prompt_tokens = 0;
  int num_cached_tokens = 0;            // prompt tokens served from the prefix cache
};

// The outputs of a step, in slots that are reused. A caller that keeps one StepOutputs and
// hands it to every step() / wait_outputs() gets its outputs without the engine touching the
// heap in steady state: each slot keeps the capacity of its vectors. Iterate it like a
// vector; it holds the outputs of the last call that filled it.
class StepOutputs {
 public:
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  RequestOutput& operator[](size_t i) { return slots_[i]; }
  const RequestOutput& operator[](size_t i) const { return slots_[i]; }
  RequestOutput* begin() { return slots_.data(); }
  RequestOutput* end() { return slots_.data() + n_; }
  const RequestOutput* begin() const { return slots_.data(); }
  const RequestOutput* end() const { return slots_.data() + n_; }

  void clear() { n_ = 0; }
  // A slot for one more output, with every field reset (vectors empty, capacity kept).
  RequestOutput& next();
  // Moves the outputs of `from` to the end of this list (slot contents are swapped, so
  // neither side allocates once both have enough slots) and clears `from`.
  void append(StepOutputs& from);
  // Copies the outputs of `from` to the end of this list into slots that keep their
  // capacity; `from` keeps its slots too. Allocates only for slots this list never had.
  // Prompt log-probabilities (large, once per request) are moved rather than copied.
  void append_copy(StepOutputs& from);
  void swap(StepOutputs& other) noexcept {
    slots_.swap(other.slots_);
    std::swap(n_, other.n_);
  }
  // The outputs as a plain vector (allocates); clears this list.
  std::vector<RequestOutput> take();

 private:
  RequestOutput& grow();  // the next slot as it is, adding one when all are in use
  std::vector<RequestOutput> slots_;
  size_t n_ = 0;
};

struct EngineStats {
  int64_t num_blocks = 0;
  int64_t free_blocks = 0;
  int64_t block_size = 0;
  int64_t num_running = 0;
  int64_t num_waiting = 0;
  int64_t num_preemptions = 0;
  int64_t prefix_cache_queries = 0;     // full prompt blocks looked up
  int64_t prefix_cache_hits = 0;        // of those, found in the cache
  int64_t steps = 0;
  int64_t prompt_tokens = 0;            // prefill tokens computed (recomputes included)
  int64_t generation_tokens = 0;
  int64_t graph_replays = 0;            // decode steps replayed from a CUDA graph
  int64_t device_layers = 0;            // decoder layers on the CUDA device (device_map)
};

class Engine {
 public:
  explicit Engine(const EngineConfig& config);  // loads the model; throws InvalidCheckpoint
  ~Engine();                                    // stops the loop thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& model_config() const;
  const EngineConfig& config() const;
  int max_model_len() const;

  // Validates (empty prompt, token ids outside the vocabulary, a prompt of max_model_len tokens
  // or more, bad sampling parameters -> InvalidRequest; a request that could never fit in the
  // whole KV pool, i.e. min(prompt + max_tokens, max_model_len) - 1 tokens -> CapacityError)
  // and queues the request. Returns its id. prompt + max_tokens beyond max_model_len is
  // accepted (as vLLM does): generation stops at max_model_len tokens with "length".
  // A request ends with "stop" on one of its stop_token_ids or, unless ignore_eos, on one of
  // the model's EOS ids; that token is the last of new_token_ids and also stop_token_id.
  uint64_t add_request(const std::vector<int32_t>& prompt, const SamplingParams& params);
  // Aborts a queued or running request: its blocks are freed and one final output with
  // FinishReason::Abort is produced. Unknown or finished ids are ignored.
  void abort(uint64_t request_id);
  bool has_unfinished() const;

  // Synchronous mode: runs one scheduling step on the calling thread and returns its outputs.
  // Must not be mixed with start(). If the step fails, every live request ends with
  // FinishReason::Error (those outputs come with the next step() call) and the error is
  // rethrown here, so no request is left unfinished. The StepOutputs form reuses `out`
  // (its previous contents are replaced) and allocates nothing in a steady decode step.
  void step(StepOutputs& out);
  std::vector<RequestOutput> step();

  // Background mode: the loop thread steps while there is work and sleeps otherwise.
  // start(), stop() and the destructor may be called from any threads, concurrently.
  void start();
  void stop();
  // Blocks until outputs are available or the timeout passes; returns what is queued. Returns
  // at once when the loop is not running; rethrows (once) an error that failed the loop, whose
  // requests then end with FinishReason::Error (returned by the next call).
  // The StepOutputs form replaces the contents of `out` and allocates nothing in steady state.
  void wait_outputs(StepOutputs& out, std::chrono::milliseconds timeout);
  std::vector<RequestOutput> wait_outputs(std::chrono::milliseconds timeout);

  EngineStats stats() const;

  // Adapter mode (docs/adapters.md). Loads LoRA adapter `id` (> 0) between two steps; requests
  // name it by SamplingParams::lora_id. Throws InvalidRequest for an id already loaded and
  // InvalidCheckpoint naming a module that is not a projection of the model or does not fit it.
  void add_lora(int32_t id, const LoraAdapterWeights& weights);
  // Unloads adapter `id`; false (and nothing changes) while queued or running requests use it,
  // or when it is not loaded.
  bool remove_lora(int32_t id);
  std::vector<int32_t> loras() const;  // ids loaded, ascending

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace medrt
