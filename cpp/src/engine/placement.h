// Where the engine's model runs (EngineConfig.device and device_map): the backends the runner
// owns and the ModelPlacement over them.
//
// device "cpu": every layer on the CPU backend. "cuda" / "cuda:N": the embedding, the LM head
// and the decoder layers on the CUDA backend of device N. device_map "auto" (or "auto:<MiB>",
// an explicit budget for the decoder layers) keeps on the device the layers that fit and puts
// the rest on the CPU, by the exact program of device_map.h. Its per-layer times are estimates
// from each layer's bytes (decode is a read of every weight once per step) at nominal
// bandwidths, not measurements; where every layer fits, the plan is all-device whatever they are.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "medrt/backend.h"
#include "medrt/checkpoint.h"
#include "medrt/engine.h"
#include "medrt/model.h"
#include "medrt/thread_pool.h"

namespace medrt::engine {

struct EnginePlacement {
  std::unique_ptr<Backend> cpu;     // always made (host layers; LoRA adapter mode)
  std::unique_ptr<Backend> device;  // the CUDA backend, when EngineConfig.device names one
  ModelPlacement placement;
};

// Parses "cpu", "cuda", "cuda:N": -1 for the CPU, else the device index. InvalidRequest names
// anything else.
int parse_device(const std::string& device);

// The backends for `cfg` with every layer on the device it names (the CPU, or the CUDA
// device). InvalidRequest when the device cannot run here (the reason from cuda_status()) or
// device_map is not "", "auto" or "auto:<MiB>".
EnginePlacement place_model(const EngineConfig& cfg, ThreadPool& pool);

// Whether cfg's device_map moves layers (a CUDA device with a map). Only then is map_layers
// called: it reads the checkpoint's weight sizes and decides each layer's backend for a KV
// pool of `num_blocks`.
// CapacityError when the device cannot hold the embedding and LM head.
bool needs_layer_map(const EngineConfig& cfg);
void map_layers(EnginePlacement& placement, const EngineConfig& cfg, const Checkpoint& ckpt,
                int64_t num_blocks);

}  // namespace medrt::engine
