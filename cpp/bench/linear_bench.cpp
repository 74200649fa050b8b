// medrt-bench linear [--shape OUTxIN] [-t THREADS] [-r REPS] [--types f16,int8,...]
// Random weights (codes and f16 scales of the right shapes; speed does not depend on values).
#include "linear_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "kernels/weight_kernels.h"
#include "medrt/dtype.h"
#include "medrt/error.h"

namespace medrt::bench {
namespace {

struct TypeSpec {
  std::string name;
  WeightType type;
  int group_size;
  bool mins;
};

const std::vector<TypeSpec>& all_types() {
  static const std::vector<TypeSpec> t = {
      {"f16", WeightType::F16, 0, false},          {"int8", WeightType::Int8, 0, false},
      {"q8_0", WeightType::Int8, 32, false},       {"nf4_g64", WeightType::Nf4, 64, false},
      {"int4_g32", WeightType::Int4, 32, false},   {"q4_1", WeightType::Int4, 32, true},
      {"int4_g64", WeightType::Int4, 64, false},   {"int4_g128", WeightType::Int4, 128, false},
      {"int6_g64", WeightType::Int6, 64, false}};
  return t;
}

struct Owned {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> halves, scales, zm;
  std::vector<float> scales32;
  LinearWeight lw;
};

TensorView view(DType dt, std::vector<int64_t> shape, const void* data) {
  TensorView t;
  t.dtype = dt;
  t.shape = std::move(shape);
  t.data = data;
  t.nbytes = size_t(t.numel()) * dtype_size(dt);
  return t;
}

void make(const TypeSpec& s, int64_t out, int64_t in, std::mt19937& rng, Owned& o) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(0.001f, 0.02f);
  o.lw.name = s.name;
  o.lw.type = s.type;
  o.lw.out = out;
  o.lw.in = in;
  o.lw.group_size = s.group_size;
  if (s.type == WeightType::F16) {
    o.halves.resize(size_t(out * in));
    for (auto& h : o.halves) h = f32_to_f16(u(rng) - 0.01f);
    o.lw.weight = view(DType::F16, {out, in}, o.halves.data());
    return;
  }
  const bool int8 = s.type == WeightType::Int8;
  const int64_t row_bytes = int8 ? in : s.type == WeightType::Int6 ? in / 32 * 24 : in / 2;
  o.codes.resize(size_t(out * row_bytes));
  for (auto& c : o.codes) c = uint8_t(byte(rng));
  if (int8) {
    for (auto& c : o.codes) c = c == 0x80 ? 0 : c;
    o.lw.weight = view(DType::I8, {out, in}, o.codes.data());
  } else {
    o.lw.weight = view(DType::U8, {out, row_bytes}, o.codes.data());
  }
  if (s.group_size == 0) {
    o.scales32.resize(size_t(out));
    for (auto& v : o.scales32) v = u(rng);
    o.lw.scales = view(DType::F32, {out}, o.scales32.data());
    return;
  }
  const int64_t G = in / s.group_size;
  o.scales.resize(size_t(out * G));
  for (auto& v : o.scales) v = f32_to_f16(u(rng));
  o.lw.scales = view(DType::F16, {out, G}, o.scales.data());
  if (s.type == WeightType::Int4) {
    o.zm.resize(size_t(out * G));
    for (auto& v : o.zm) v = f32_to_f16(s.mins ? -u(rng) : 7.5f);
    (s.mins ? o.lw.mins : o.lw.zeros) = view(DType::F16, {out, G}, o.zm.data());
  }
}

// Seconds of one call: the fastest of `reps` timed calls (after one warm-up; on a shared
// machine the minimum is the figure least disturbed by other processes), each call on the
// next layer copy when `layers` > 1 so that M = 1 reads from memory, not from the caches.
double time_linear(const std::vector<cpu::PackedLinear>& layers, const std::vector<float>& x,
                   int64_t M, std::vector<float>& y, ThreadPool& pool, int reps) {
  std::vector<double> t;
  size_t li = 0;
  for (int r = -1; r < reps; ++r) {
    const cpu::PackedLinear& p = layers[li++ % layers.size()];
    const auto t0 = std::chrono::steady_clock::now();
    cpu::linear(p, x.data(), M, y.data(), pool);
    const auto t1 = std::chrono::steady_clock::now();
    if (r >= 0) t.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return *std::min_element(t.begin(), t.end());
}

}  // namespace

int linear_main(int argc, char** argv) {
  int64_t out = 1536, in = 576;
  int threads = 0, reps = 20;
  int64_t prefill_m = 512;
  std::vector<std::string> names;
  for (const auto& t : all_types()) names.push_back(t.name);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--shape") {
      if (std::sscanf(v.c_str(), "%ldx%ld", &out, &in) != 2 || out <= 0 || in <= 0 || in % 32) {
        std::fprintf(stderr, "medrt-bench linear: --shape OUTxIN with IN a multiple of 32\n");
        return 2;
      }
    } else if (f == "-t") {
      threads = std::atoi(v.c_str());
    } else if (f == "-r") {
      reps = std::max(1, std::atoi(v.c_str()));
    } else if (f == "-p") {
      prefill_m = std::max(2, std::atoi(v.c_str()));
    } else if (f == "--types") {
      names.clear();
      std::stringstream ss(v);
      for (std::string item; std::getline(ss, item, ',');) names.push_back(item);
    } else {
      std::fprintf(stderr, "medrt-bench linear: unknown option %s\n", f.c_str());
      return 2;
    }
  }
  ThreadPool pool(threads);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(prefill_m * in)), y(size_t(prefill_m * out));
  for (auto& v : x) v = nd(rng);
  const double bw = read_bandwidth(size_t(512) << 20, pool.size(), 3);
  std::printf("linear %ldx%ld, %d threads, ISA %s, read bandwidth %.2f GB/s\n\n", long(out),
              long(in), pool.size(), cpu::isa_name(cpu::active_isa()), bw / 1e9);
  std::printf("| type | kernel | weight MiB | M=1 us | M=1 GB/s | %% of read bw | M=%ld GFLOP/s |\n",
              long(prefill_m));
  std::printf("| ---- | ------ | ---------: | -----: | -------: | ----------: | ------------: |\n");
  for (const std::string& name : names) {
    const auto it = std::find_if(all_types().begin(), all_types().end(),
                                 [&](const TypeSpec& t) { return t.name == name; });
    if (it == all_types().end()) {
      std::fprintf(stderr, "medrt-bench linear: unknown type %s\n", name.c_str());
      return 2;
    }
    if (it->group_size && in % it->group_size) continue;  // the group must divide IN
    std::vector<Owned> owned(1);
    make(*it, out, in, rng, owned[0]);
    const double bytes = double(owned[0].lw.bytes());
    // Enough copies of the layer to exceed the last-level cache, so M = 1 streams from memory.
    // Float weights are read in place, so each copy needs its own tensors.
    const int copies = int(std::min<double>(64.0, std::max(1.0, 256e6 / bytes)));
    if (is_float_type(it->type)) {
      owned.resize(size_t(copies));
      for (int c = 1; c < copies; ++c) make(*it, out, in, rng, owned[size_t(c)]);
    }
    std::vector<cpu::PackedLinear> layers;
    for (int c = 0; c < copies; ++c)
      layers.push_back(cpu::pack_linear(owned[size_t(c) % owned.size()].lw));
    const double t1 = time_linear(layers, x, 1, y, pool, std::max(reps, copies));
    std::vector<cpu::PackedLinear> one;
    one.push_back(cpu::pack_linear(owned[0].lw));
    const double tp = time_linear(one, x, prefill_m, y, pool, std::max(3, reps / 4));
    std::printf("| %s | %s | %.2f | %.1f | %.2f | %.0f%% | %.1f |\n", name.c_str(),
                layers[0].kernels->name, bytes / (1 << 20), t1 * 1e6, bytes / t1 / 1e9,
                100.0 * bytes / t1 / bw, 2.0 * double(prefill_m) * double(out * in) / tp / 1e9);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace medrt::bench
