#include "engine/device_map.h"

#include <algorithm>
#include <limits>
#include <string>

#include "medrt/error.h"

namespace medrt::engine {

DeviceMap plan_device_map(const DeviceMapProblem& p) {
  if (p.gpu_budget_bytes < 0 || p.transfer_seconds < 0 || p.unit_bytes <= 0)
    throw InvalidRequest("device map: budget, transfer time and unit must be >= 0");
  const int64_t L = int64_t(p.layers.size());
  for (int64_t i = 0; i < L; ++i) {
    const LayerCost& c = p.layers[size_t(i)];
    if (c.gpu_bytes < 0 || c.gpu_seconds < 0 || c.cpu_seconds < 0)
      throw InvalidRequest("device map: layer " + std::to_string(i) + " has a negative cost");
  }
  const int64_t unit = std::max<int64_t>(p.unit_bytes, (p.gpu_budget_bytes >> 16) + 1);
  const int64_t U = p.gpu_budget_bytes / unit;
  auto units = [&](int64_t bytes) { return (bytes + unit - 1) / unit; };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t W = size_t(U + 1);
  // cost[u * 2 + d]: best time of the layers so far using u units, the last one on d (1: GPU).
  // Before layer 0 the hidden state is on the GPU (the embedding), with 0 units used.
  std::vector<double> cost(W * 2, kInf), next(W * 2);
  cost[1] = 0.0;
  std::vector<uint8_t> from(size_t(L) * W * 2);  // device of the previous layer on the best path
  for (int64_t i = 0; i < L; ++i) {
    const LayerCost& c = p.layers[size_t(i)];
    const int64_t need = units(c.gpu_bytes);
    std::fill(next.begin(), next.end(), kInf);
    for (int64_t u = 0; u <= U; ++u) {
      for (int prev = 0; prev < 2; ++prev) {
        const double base = cost[size_t(u) * 2 + prev];
        if (base == kInf) continue;
        // layer i on the CPU
        const double tc = base + c.cpu_seconds + (prev == 1 ? p.transfer_seconds : 0.0);
        if (tc < next[size_t(u) * 2]) {
          next[size_t(u) * 2] = tc;
          from[(size_t(i) * W + size_t(u)) * 2] = uint8_t(prev);
        }
        // layer i on the GPU
        if (u + need <= U) {
          const size_t v = size_t(u + need);
          const double tg = base + c.gpu_seconds + (prev == 0 ? p.transfer_seconds : 0.0);
          if (tg < next[v * 2 + 1]) {
            next[v * 2 + 1] = tg;
            from[(size_t(i) * W + v) * 2 + 1] = uint8_t(prev);
          }
        }
      }
    }
    cost.swap(next);
  }
  // The LM head is on the GPU: a last layer on the CPU crosses once more.
  double best = kInf;
  int64_t best_u = 0;
  int best_d = 1;
  for (int64_t u = 0; u <= U; ++u)
    for (int d = 0; d < 2; ++d) {
      const double t = cost[size_t(u) * 2 + d] + (d == 0 ? p.transfer_seconds : 0.0);
      if (t < best) best = t, best_u = u, best_d = d;
    }
  DeviceMap m;
  m.on_gpu.assign(size_t(L), false);
  m.seconds = best;
  int64_t u = best_u;
  int d = best_d;
  for (int64_t i = L - 1; i >= 0; --i) {
    const int prev = from[(size_t(i) * W + size_t(u)) * 2 + d];
    m.on_gpu[size_t(i)] = d == 1;
    if (d == 1) {
      u -= units(p.layers[size_t(i)].gpu_bytes);
      m.gpu_bytes += p.layers[size_t(i)].gpu_bytes;
    }
    d = prev;
  }
  int dev = 1;
  for (int64_t i = 0; i < L; ++i) {
    m.transfers += int(m.on_gpu[size_t(i)]) != dev;
    dev = int(m.on_gpu[size_t(i)]);
  }
  m.transfers += dev != 1;
  return m;
}

}  // namespace medrt::engine
