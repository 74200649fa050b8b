#include "engine/placement.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "engine/device_map.h"
#include "medrt/cuda.h"
#include "medrt/error.h"
#include "medrt/kv_cache.h"
#include "model/weights.h"

namespace medrt::engine {
namespace {

// Nominal read bandwidths for the device-map estimate (bytes/s): an HBM GPU, a server CPU.
constexpr double kGpuBytesPerSecond = 2e12, kCpuBytesPerSecond = 2e10;
// Device memory kept free beyond the weights and the KV pool: activations, scratch, graphs.
constexpr double kDeviceHeadroom = 0.10;

constexpr int64_t kAllOnDevice = -1, kBudgetFromFreeMemory = -2;

// "" -> kAllOnDevice; "auto" -> kBudgetFromFreeMemory; "auto:<MiB>" -> that budget in bytes.
int64_t parse_device_map(const std::string& map) {
  if (map.empty()) return kAllOnDevice;
  if (map == "auto") return kBudgetFromFreeMemory;
  if (map.rfind("auto:", 0) == 0) {
    char* end = nullptr;
    const long long mib = std::strtoll(map.c_str() + 5, &end, 10);
    if (end && *end == '\0' && end != map.c_str() + 5 && mib >= 0) return int64_t(mib) << 20;
  }
  throw InvalidRequest("device_map '" + map + "': expected \"\", \"auto\" or \"auto:<MiB>\"");
}

int64_t layer_bytes(const model::LayerWeights& l) {
  int64_t b = int64_t(l.input_norm.nbytes + l.post_attention_norm.nbytes);
  for (const LinearWeight* w : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) b += w->bytes();
  return b;
}

}  // namespace

int parse_device(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) == 0) {
    char* end = nullptr;
    const long n = std::strtol(device.c_str() + 5, &end, 10);
    if (end && *end == '\0' && end != device.c_str() + 5 && n >= 0) return int(n);
  }
  throw InvalidRequest("device '" + device + "': expected \"cpu\", \"cuda\" or \"cuda:N\"");
}

EnginePlacement place_model(const EngineConfig& cfg, ThreadPool& pool) {
  EnginePlacement out;
  out.cpu = make_cpu_backend(pool, cfg.activation_precision);
  const int index = parse_device(cfg.device);
  parse_device_map(cfg.device_map);  // refused on the CPU too
  if (index < 0) {
    out.placement = ModelPlacement{out.cpu.get(), {}};
    return out;
  }
  CudaBackendOptions options;
  options.device = index;
  out.device = make_cuda_backend(options);  // InvalidRequest saying why it cannot run here
  out.placement = ModelPlacement{out.device.get(), {}};  // every layer on the device
  return out;
}

bool needs_layer_map(const EngineConfig& cfg) {
  return parse_device(cfg.device) >= 0 && parse_device_map(cfg.device_map) != kAllOnDevice;
}

void map_layers(EnginePlacement& out, const EngineConfig& cfg, const Checkpoint& ckpt,
                int64_t num_blocks) {
  const int64_t budget = parse_device_map(cfg.device_map);  // needs_layer_map: not all-device
  const ModelConfig& m = ckpt.config();
  const int index = parse_device(cfg.device);

  const model::ModelWeights w = model::bind_weights(ckpt);
  const int64_t kv_per_layer =
      KVCache::bytes_per_block(m, cfg.block_size, cfg.kv_cache_dtype) / m.num_layers * num_blocks;
  int64_t layers_budget = budget;
  if (budget == kBudgetFromFreeMemory) {  // free device memory less the embedding and LM head
    int64_t free_bytes = 0;
    for (const CudaDeviceInfo& d : cuda_status().devices)
      if (d.index == index) free_bytes = d.free_memory;
    int64_t io_bytes = w.embed_tokens.bytes() + int64_t(w.final_norm.nbytes);
    if (!m.tie_word_embeddings) io_bytes += w.lm_head.bytes();
    layers_budget = int64_t(double(free_bytes) * (1.0 - kDeviceHeadroom)) - io_bytes;
    if (layers_budget < 0)
      throw CapacityError(out.device->name() + ": " + std::to_string(free_bytes >> 20) +
                          " MiB free cannot hold the embedding and LM head (" +
                          std::to_string(io_bytes >> 20) + " MiB) with headroom");
  }
  DeviceMapProblem p;
  p.gpu_budget_bytes = layers_budget;
  p.transfer_seconds =
      double(m.hidden_size) * 4.0 * cfg.max_num_seqs / kCpuBytesPerSecond + 20e-6;
  for (const model::LayerWeights& l : w.layers) {
    const int64_t bytes = layer_bytes(l);
    p.layers.push_back(LayerCost{bytes + kv_per_layer, double(bytes) / kGpuBytesPerSecond,
                                 double(bytes) / kCpuBytesPerSecond});
  }
  const DeviceMap plan = plan_device_map(p);
  out.placement.layers.clear();
  for (const bool on_gpu : plan.on_gpu)
    out.placement.layers.push_back(on_gpu ? out.device.get() : out.cpu.get());
}

}  // namespace medrt::engine
