// device_map="auto": which decoder layers run on the GPU when not all of them fit.
//
// The embedding and the LM head stay on the GPU (as in Zhang and Qin); every other layer goes
// to the GPU or the CPU. Minimise the step time  sum_i t_dev(i)(i) + transfer x (number of
// device changes along the chain embedding -> layer 0 -> ... -> layer L-1 -> LM head) subject
// to  sum of GPU layer bytes <= budget. The paper solves this with an integer linear program;
// for a chain of layers an exact dynamic program suffices: the state after layer i is (GPU
// memory used, device of layer i), so the optimum is found in O(L x U) for U budget units
// (a 0/1 knapsack with a cost for every device change). Layer sizes are rounded up to whole
// units, so a plan never exceeds the budget; it is optimal among plans whose rounded sizes fit.
#pragma once
#include <cstdint>
#include <vector>

namespace medrt::engine {

struct LayerCost {
  int64_t gpu_bytes = 0;     // weights + this layer's KV pool on the GPU
  double gpu_seconds = 0.0;  // measured time of one step of the layer on each device
  double cpu_seconds = 0.0;
};

struct DeviceMapProblem {
  std::vector<LayerCost> layers;
  int64_t gpu_budget_bytes = 0;   // for the decoder layers (embedding, LM head, buffers taken)
  double transfer_seconds = 0.0;  // one crossing of the hidden state between devices
  int64_t unit_bytes = 1 << 20;   // memory granularity (raised so the budget is <= 2^16 units)
};

struct DeviceMap {
  std::vector<bool> on_gpu;  // per layer
  double seconds = 0.0;      // the objective of the plan
  int64_t gpu_bytes = 0;     // exact bytes of the GPU layers
  int transfers = 0;         // device changes along the chain
};

// Throws InvalidRequest for a negative budget or cost.
DeviceMap plan_device_map(const DeviceMapProblem& p);

}  // namespace medrt::engine
