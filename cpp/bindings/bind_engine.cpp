// medrt._core.Engine and its value types (BINDINGS.md "engine"). Converts types, releases the
// GIL around everything that computes or waits, and nothing else.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <limits>
#include <set>
#include <string>
#include <vector>

#include "bindings.h"
#include "medrt/engine.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"

namespace py = pybind11;

namespace medrt::bindings {
namespace {

// Sets the keyword arguments as attributes of `obj`, rejecting names that are not fields.
template <class T>
T from_kwargs(const py::kwargs& kw, const std::set<std::string>& fields, const char* type) {
  T value;
  py::object self = py::cast(&value, py::return_value_policy::reference);
  for (auto item : kw) {
    std::string key = py::str(item.first);
    if (!fields.count(key))
      throw py::type_error(std::string(type) + "() got an unexpected keyword argument '" + key + "'");
    self.attr(key.c_str()) = item.second;
  }
  return value;
}

// Python ints are unbounded: a token id that does not fit int32 is bad input, not a TypeError.
std::vector<int32_t> to_token_ids(const std::vector<int64_t>& ids, const char* field) {
  std::vector<int32_t> out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < std::numeric_limits<int32_t>::min() || ids[i] > std::numeric_limits<int32_t>::max())
      throw InvalidRequest(std::string(field) + "[" + std::to_string(i) + "] = " +
                           std::to_string(ids[i]) + " is not a valid token id");
    out[i] = int32_t(ids[i]);
  }
  return out;
}

py::dict stats_dict(const EngineStats& s) {
  py::dict d;
  d["num_blocks"] = s.num_blocks;
  d["free_blocks"] = s.free_blocks;
  d["block_size"] = s.block_size;
  d["num_running"] = s.num_running;
  d["num_waiting"] = s.num_waiting;
  d["num_preemptions"] = s.num_preemptions;
  d["prefix_cache_queries"] = s.prefix_cache_queries;
  d["prefix_cache_hits"] = s.prefix_cache_hits;
  d["steps"] = s.steps;
  d["prompt_tokens"] = s.prompt_tokens;
  d["generation_tokens"] = s.generation_tokens;
  d["graph_replays"] = s.graph_replays;
  d["device_layers"] = s.device_layers;
  return d;
}

void bind_config(py::module_& m) {
  py::class_<EngineConfig> c(m, "EngineConfig");
  c.def(py::init([](const py::kwargs& kw) {
          return from_kwargs<EngineConfig>(
              kw,
              {"model_dir", "block_size", "kv_cache_bytes", "num_blocks", "max_num_seqs",
               "max_num_batched_tokens", "max_model_len", "enable_prefix_caching", "num_threads",
               "seed", "activation_precision", "kv_cache_dtype", "device", "enforce_eager",
               "device_map"},
              "EngineConfig");
        }))
      .def_readwrite("model_dir", &EngineConfig::model_dir)
      .def_readwrite("block_size", &EngineConfig::block_size)
      .def_readwrite("kv_cache_bytes", &EngineConfig::kv_cache_bytes)
      .def_readwrite("num_blocks", &EngineConfig::num_blocks)
      .def_readwrite("max_num_seqs", &EngineConfig::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &EngineConfig::max_num_batched_tokens)
      .def_readwrite("max_model_len", &EngineConfig::max_model_len)
      .def_readwrite("enable_prefix_caching", &EngineConfig::enable_prefix_caching)
      .def_readwrite("num_threads", &EngineConfig::num_threads)
      .def_readwrite("seed", &EngineConfig::seed)
      .def_readwrite("device", &EngineConfig::device)
      .def_readwrite("enforce_eager", &EngineConfig::enforce_eager)
      .def_readwrite("device_map", &EngineConfig::device_map)
      .def_property(
          "activation_precision",
          [](const EngineConfig& c) {
            return std::string(act_precision_name(c.activation_precision));
          },
          [](EngineConfig& c, const std::string& name) {
            c.activation_precision = parse_act_precision(name);
          })
      .def_property(
          "kv_cache_dtype",
          [](const EngineConfig& c) { return std::string(kv_cache_dtype_name(c.kv_cache_dtype)); },
          [](EngineConfig& c, const std::string& name) {
            c.kv_cache_dtype = parse_kv_cache_dtype(name);
          });
}

void bind_sampling_params(py::module_& m) {
  py::class_<SamplingParams> c(m, "SamplingParams");
  c.def(py::init([](const py::kwargs& kw) {
          return from_kwargs<SamplingParams>(
              kw,
              {"max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p",
               "repetition_penalty", "frequency_penalty", "presence_penalty", "seed",
               "stop_token_ids", "ignore_eos", "logprobs", "prompt_logprobs",
               "prompt_logprobs_start", "lora_id"},
              "SamplingParams");
        }))
      .def_readwrite("max_tokens", &SamplingParams::max_tokens)
      .def_readwrite("min_tokens", &SamplingParams::min_tokens)
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("seed", &SamplingParams::seed)
      .def_property(
          "stop_token_ids", [](const SamplingParams& p) { return p.stop_token_ids; },
          [](SamplingParams& p, const std::vector<int64_t>& ids) {
            p.stop_token_ids = to_token_ids(ids, "stop_token_ids");
          })
      .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
      .def_readwrite("logprobs", &SamplingParams::logprobs)
      .def_readwrite("prompt_logprobs", &SamplingParams::prompt_logprobs)
      .def_readwrite("prompt_logprobs_start", &SamplingParams::prompt_logprobs_start)

      .def_readwrite("lora_id", &SamplingParams::lora_id)
      .def("validate", &SamplingParams::validate, py::arg("vocab_size"));
}

// [(chosen logprob, [(token, logprob), ...]), ...]
py::list logprob_list(const std::vector<TokenLogprobs>& entries) {
  py::list out;
  for (const TokenLogprobs& l : entries) out.append(py::make_tuple(l.chosen, py::cast(l.top)));
  return out;
}

void bind_output(py::module_& m) {
  py::class_<RequestOutput>(m, "RequestOutput")
      .def_readonly("request_id", &RequestOutput::request_id)
      .def_readonly("new_token_ids", &RequestOutput::new_token_ids)
      .def_property_readonly("logprobs", [](const RequestOutput& o) { return logprob_list(o.logprobs); })
      .def_property_readonly("prompt_logprobs",
                             [](const RequestOutput& o) { return logprob_list(o.prompt_logprobs); })
      .def_readonly("prompt_logprobs_start", &RequestOutput::prompt_logprobs_start)
      .def_readonly("finished", &RequestOutput::finished)
      .def_property_readonly("finish_reason",
                             [](const RequestOutput& o) { return finish_reason_name(o.finish_reason); })
      .def_readonly("stop_token_id", &RequestOutput::stop_token_id)
      .def_readonly("num_prompt_tokens", &RequestOutput::num_prompt_tokens)
      .def_readonly("num_cached_tokens", &RequestOutput::num_cached_tokens)
      .def("__repr__", [](const RequestOutput& o) {
        return "RequestOutput(request_id=" + std::to_string(o.request_id) + ", new_token_ids=" +
               std::string(py::str(py::cast(o.new_token_ids))) + ", finished=" +
               (o.finished ? "True" : "False") + ", finish_reason='" +
               finish_reason_name(o.finish_reason) + "')";
      });
}

// Destroying an Engine joins its loop thread, which may be in the middle of a step: the GIL
// is released meanwhile so other Python threads keep running. (Not while the interpreter
// shuts down, when a released GIL could not be taken back safely.)
struct ReleaseGilDelete {
  void operator()(Engine* e) const {
#if PY_VERSION_HEX >= 0x030D0000
    const bool finalizing = Py_IsFinalizing();
#else
    const bool finalizing = _Py_IsFinalizing();
#endif
    if (Py_IsInitialized() && !finalizing && PyGILState_Check()) {
      py::gil_scoped_release nogil;
      delete e;
    } else {
      delete e;
    }
  }
};
using EngineHolder = std::unique_ptr<Engine, ReleaseGilDelete>;

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// [(module, lora_A [r, in], lora_B [out, r]), ...] -> the engine's adapter weights (copied).
LoraAdapterWeights to_adapter(const std::vector<std::tuple<std::string, F32Array, F32Array>>& mods,
                              float scale) {
  LoraAdapterWeights w;
  w.scale = scale;
  for (const auto& [name, a, b] : mods) {
    if (a.ndim() != 2 || b.ndim() != 2 || a.shape(0) != b.shape(1))
      throw InvalidCheckpoint("LoRA module '" + name + "': lora_A and lora_B must be 2-D with " +
                              "lora_A [r, in] and lora_B [out, r]");
    LoraModuleWeights m;
    m.module = name;
    m.rank = a.shape(0), m.in = a.shape(1), m.out = b.shape(0);
    m.a.assign(a.data(), a.data() + a.size());
    m.b.assign(b.data(), b.data() + b.size());
    w.modules.push_back(std::move(m));
  }
  return w;
}

}  // namespace

void bind_engine(py::module_& m) {
  bind_config(m);
  bind_sampling_params(m);
  bind_output(m);
  py::class_<Engine, EngineHolder>(m, "Engine")
      .def(py::init([](const EngineConfig& c) {
             py::gil_scoped_release nogil;
             return EngineHolder(new Engine(c));
           }),
           py::arg("config"))
      .def(
          "add_request",
          [](Engine& e, const std::vector<int64_t>& prompt, const SamplingParams& params) {
            return e.add_request(to_token_ids(prompt, "prompt"), params);
          },
          py::arg("prompt"), py::arg("params"))
      .def("abort", &Engine::abort, py::arg("request_id"))
      .def("has_unfinished", &Engine::has_unfinished)
      .def("step", static_cast<std::vector<RequestOutput> (Engine::*)()>(&Engine::step),
           py::call_guard<py::gil_scoped_release>())
      .def("start", &Engine::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Engine::stop, py::call_guard<py::gil_scoped_release>())
      .def(
          "wait_outputs",
          [](Engine& e, int64_t timeout_ms) {
            py::gil_scoped_release nogil;
            return e.wait_outputs(std::chrono::milliseconds(timeout_ms));
          },
          py::arg("timeout_ms"))
      .def("stats", [](const Engine& e) { return stats_dict(e.stats()); })
      .def(
          "add_lora",
          [](Engine& e, int32_t id,
             const std::vector<std::tuple<std::string, F32Array, F32Array>>& modules,
             float scale) {
            LoraAdapterWeights w = to_adapter(modules, scale);
            py::gil_scoped_release nogil;
            e.add_lora(id, w);
          },
          py::arg("id"), py::arg("modules"), py::arg("scale"),
          "Loads a LoRA adapter: modules [(name, lora_A [r, in], lora_B [out, r])], scale.")
      .def(
          "add_lora_moe",
          [](Engine& e, int32_t id,
             const std::vector<std::tuple<std::string, int, F32Array, F32Array>>& modules,
             float scale, int64_t top_k, float temperature, const std::vector<F32Array>& proj,
             const std::vector<F32Array>& keys) {
            std::vector<std::tuple<std::string, F32Array, F32Array>> plain;
            for (const auto& [name, expert, a, b] : modules) plain.emplace_back(name, a, b);
            LoraAdapterWeights w = to_adapter(plain, scale);
            for (size_t i = 0; i < modules.size(); ++i) w.modules[i].expert = std::get<1>(modules[i]);
            LoraRouterWeights& r = w.router;
            r.top_k = top_k, r.temperature = temperature;
            for (const F32Array& k : keys) {
              if (k.ndim() != 2) throw InvalidCheckpoint("LoRA-MoE router keys must be 2-D");
              r.n_experts = k.shape(0), r.dim = k.shape(1);
              r.keys.emplace_back(k.data(), k.data() + k.size());
            }
            for (const F32Array& p : proj) r.proj.emplace_back(p.data(), p.data() + p.size());
            py::gil_scoped_release nogil;
            e.add_lora(id, w);
          },
          py::arg("id"), py::arg("modules"), py::arg("scale"), py::arg("top_k"),
          py::arg("temperature"), py::arg("proj"), py::arg("keys"),
          "Loads a LoRA-MoE adapter: modules [(name, expert, lora_A, lora_B)], the router per "
          "layer (proj [dim, hidden], keys [experts, dim]).")
      .def("remove_lora", &Engine::remove_lora, py::arg("id"),
           py::call_guard<py::gil_scoped_release>())
      .def("loras", &Engine::loras)
      .def_property_readonly("model_config",
                             [](const Engine& e) { return model_config_dict(e.model_config()); })
      .def_property_readonly("max_model_len", &Engine::max_model_len);
}

}  // namespace medrt::bindings
