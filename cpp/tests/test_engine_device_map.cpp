// device_map="auto": the dynamic program against brute force over every assignment.
#include <random>

#include "check.h"
#include "engine/device_map.h"
#include "medrt/error.h"

using namespace medrt::engine;

namespace {

// Every 2^L assignment; the best time among those whose rounded sizes fit.
double brute_force(const DeviceMapProblem& p) {
  const int L = int(p.layers.size());
  const int64_t unit = p.unit_bytes;
  double best = 1e300;
  for (uint32_t mask = 0; mask < (1u << L); ++mask) {
    int64_t units = 0;
    double t = 0.0;
    int dev = 1;
    for (int i = 0; i < L; ++i) {
      const int d = (mask >> i) & 1;
      const LayerCost& c = p.layers[size_t(i)];
      if (d) units += (c.gpu_bytes + unit - 1) / unit;
      t += (d ? c.gpu_seconds : c.cpu_seconds) + (d != dev ? p.transfer_seconds : 0.0);
      dev = d;
    }
    t += dev != 1 ? p.transfer_seconds : 0.0;
    if (units * unit <= p.gpu_budget_bytes / unit * unit) best = std::min(best, t);
  }
  return best;
}

}  // namespace

TEST(everything_fits_so_everything_goes_to_the_gpu) {
  DeviceMapProblem p;
  p.layers.assign(4, LayerCost{100 << 20, 1.0, 10.0});
  p.gpu_budget_bytes = 1ll << 30;
  p.transfer_seconds = 0.5;
  const DeviceMap m = plan_device_map(p);
  CHECK(m.on_gpu == std::vector<bool>(4, true));
  CHECK(m.transfers == 0);
  CHECK_NEAR(m.seconds, 4.0, 1e-12);
}

TEST(nothing_fits_so_the_chain_crosses_twice) {
  DeviceMapProblem p;
  p.layers.assign(3, LayerCost{100 << 20, 1.0, 10.0});
  p.gpu_budget_bytes = 50 << 20;
  p.transfer_seconds = 0.5;
  const DeviceMap m = plan_device_map(p);
  CHECK(m.on_gpu == std::vector<bool>(3, false));
  CHECK(m.transfers == 2);  // embedding -> CPU layers -> LM head
  CHECK_NEAR(m.seconds, 31.0, 1e-12);
}

TEST(gpu_layers_form_one_block_when_crossings_are_costly) {
  // Room for two of four equal layers: two adjacent GPU layers cross twice, alternating ones
  // up to four times; the program must pick an adjacent pair.
  DeviceMapProblem p;
  p.layers.assign(4, LayerCost{100 << 20, 1.0, 5.0});
  p.gpu_budget_bytes = 200 << 20;
  p.transfer_seconds = 3.0;
  const DeviceMap m = plan_device_map(p);
  int on = 0;
  for (bool b : m.on_gpu) on += b;
  CHECK(on == 2);
  CHECK(m.transfers == 2);
  CHECK(m.gpu_bytes == 200 << 20);
  CHECK_NEAR(m.seconds, 1 + 1 + 5 + 5 + 6.0, 1e-12);
}

TEST(matches_brute_force_on_random_chains) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> mib(1, 40), n_layers(1, 10);
  std::uniform_real_distribution<double> sec(0.0, 4.0);
  for (int trial = 0; trial < 300; ++trial) {
    DeviceMapProblem p;
    const int L = n_layers(rng);
    for (int i = 0; i < L; ++i)
      p.layers.push_back(LayerCost{int64_t(mib(rng)) << 20, sec(rng), sec(rng) * 3});
    p.gpu_budget_bytes = int64_t(mib(rng) * L / 2) << 20;
    p.transfer_seconds = sec(rng);
    const DeviceMap m = plan_device_map(p);
    CHECK_NEAR(m.seconds, brute_force(p), 1e-9);
    CHECK(m.gpu_bytes <= p.gpu_budget_bytes);
    // The reported objective is the plan's own.
    double t = 0.0;
    int dev = 1;
    for (int i = 0; i < L; ++i) {
      const int d = m.on_gpu[size_t(i)];
      t += (d ? p.layers[size_t(i)].gpu_seconds : p.layers[size_t(i)].cpu_seconds) +
           (d != dev ? p.transfer_seconds : 0.0);
      dev = d;
    }
    t += dev != 1 ? p.transfer_seconds : 0.0;
    CHECK_NEAR(m.seconds, t, 1e-9);
  }
}

TEST(refuses_negative_costs) {
  DeviceMapProblem p;
  p.layers.push_back(LayerCost{-1, 0, 0});
  CHECK_THROWS(medrt::InvalidRequest, plan_device_map(p), "layer 0");
}
