// medrt._core.Model: the decoder alone, without the engine, so that tests can compare its
// logits and greedy tokens with transformers.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bindings.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"
#include "medrt/model.h"

namespace py = pybind11;

namespace medrt::bindings {

py::dict model_config_dict(const ModelConfig& c) {
  py::dict d;
  d["architecture"] = c.architecture;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  if (c.rope_scaling) {
    py::dict s;
    s["rope_type"] = c.rope_scaling->type;
    s["factor"] = c.rope_scaling->factor;
    s["low_freq_factor"] = c.rope_scaling->low_freq_factor;
    s["high_freq_factor"] = c.rope_scaling->high_freq_factor;
    s["original_max_position_embeddings"] = c.rope_scaling->original_max_position_embeddings;
    d["rope_scaling"] = s;
  } else {
    d["rope_scaling"] = py::none();
  }
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["attention_bias"] = c.attention_bias;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_ids"] = c.eos_token_ids;
  d["torch_dtype"] = dtype_name(c.torch_dtype);
  return d;
}

namespace {

constexpr int64_t kPrefillBlockSize = 16;

// One sequence's batch over positions [start, start + tokens.size()), blocks taken from
// `table`, logits wanted for `logit_rows`.
ForwardBatch one_sequence(const std::vector<int32_t>& tokens, int32_t start,
                          const std::vector<int32_t>& table, int64_t block_size,
                          std::vector<int32_t> logit_rows) {
  ForwardBatch b;
  b.tokens = tokens;
  b.n_seqs = 1;
  b.max_blocks = int64_t(table.size());
  b.block_tables = table;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t pos = start + int32_t(i);
    b.positions.push_back(pos);
    b.token_seq.push_back(0);
    b.slot_mapping.push_back(int32_t(table[size_t(pos / block_size)] * block_size +
                                     pos % block_size));
  }
  b.logit_rows = std::move(logit_rows);
  return b;
}

int64_t blocks_for(int64_t positions, int64_t block_size) {
  return (positions + block_size - 1) / block_size;
}

int32_t argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return int32_t(best);
}

class PyModel {
 public:
  PyModel(const std::string& dir, int num_threads, const std::string& activation_precision,
          const std::string& kv_cache_dtype)
      : kv_dtype_(parse_kv_cache_dtype(kv_cache_dtype)),
        pool_(std::make_unique<ThreadPool>(ThreadPool::resolve_num_threads(num_threads))),
        model_(Model::load(dir, *pool_, parse_act_precision(activation_precision))) {}

  const ModelConfig& config() const { return model_->config(); }

  py::array_t<float> prefill_logits(const std::vector<int32_t>& tokens) {
    check_prompt(tokens);
    const int64_t T = int64_t(tokens.size()), V = config().vocab_size;
    py::array_t<float> out({T, V});
    float* dst = out.mutable_data();
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t nb = blocks_for(T, kPrefillBlockSize);
    std::vector<int32_t> table(static_cast<size_t>(nb)), rows(static_cast<size_t>(T));
    for (int64_t i = 0; i < nb; ++i) table[size_t(i)] = int32_t(i);
    for (int64_t t = 0; t < T; ++t) rows[size_t(t)] = int32_t(t);
    KVCache kv(config(), nb, kPrefillBlockSize, kv_dtype_);
    model_->forward(one_sequence(tokens, 0, table, kPrefillBlockSize, rows), kv, dst);
    return out;
  }

  // Block ids run backwards through the cache, so contiguous positions never sit in
  // contiguous blocks: a decoder that ignored the block table would read the wrong keys.
  std::vector<int32_t> greedy(const std::vector<int32_t>& tokens, int64_t n, int64_t block_size) {
    check_prompt(tokens);
    if (n < 0) throw InvalidRequest("greedy: n must be >= 0, got " + std::to_string(n));
    if (block_size <= 0)
      throw InvalidRequest("greedy: block_size must be > 0, got " + std::to_string(block_size));
    std::vector<int32_t> out;
    if (n == 0) return out;
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t T = int64_t(tokens.size()), V = config().vocab_size;
    // The last generated token is never fed back, so the cache holds T + n - 1 positions.
    const int64_t nb = blocks_for(T + n - 1, block_size);
    std::vector<int32_t> table(static_cast<size_t>(nb));
    for (int64_t i = 0; i < nb; ++i) table[size_t(i)] = int32_t(nb - 1 - i);
    KVCache kv(config(), nb, block_size, kv_dtype_);
    std::vector<float> logits(static_cast<size_t>(V));
    model_->forward(one_sequence(tokens, 0, table, block_size, {int32_t(T - 1)}), kv,
                    logits.data());
    out.push_back(argmax(logits.data(), V));
    for (int64_t i = 1; i < n; ++i) {
      const int32_t pos = int32_t(T + i - 1);
      model_->forward(one_sequence({out.back()}, pos, table, block_size, {0}), kv, logits.data());
      out.push_back(argmax(logits.data(), V));
    }
    return out;
  }

 private:
  static void check_prompt(const std::vector<int32_t>& tokens) {
    if (tokens.empty()) throw InvalidRequest("the prompt is empty: give at least one token");
  }

  DType kv_dtype_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Model> model_;
  std::mutex mu_;  // forward() reuses the model's scratch, so calls take turns
};

}  // namespace

void bind_model(py::module_& m) {
  py::class_<PyModel>(m, "Model",
                      "The decoder alone (no engine): logits and greedy tokens for parity tests.")
      .def(py::init<const std::string&, int, const std::string&, const std::string&>(),
           py::arg("model_dir"), py::arg("num_threads") = 0,
           py::arg("activation_precision") = "int8", py::arg("kv_cache_dtype") = "f32",
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("config",
                             [](const PyModel& self) { return model_config_dict(self.config()); })
      .def("prefill_logits", &PyModel::prefill_logits, py::arg("tokens"),
           "Logits [len(tokens), vocab] of the whole prompt in one forward (fresh KV cache).")
      .def("greedy", &PyModel::greedy, py::arg("tokens"), py::arg("n"),
           py::arg("block_size") = 16,
           "Prefill, then n greedy tokens decoded one at a time through the paged cache.");
}

}  // namespace medrt::bindings
