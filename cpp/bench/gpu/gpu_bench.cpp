// medrt-gpu-bench: decode speed of the CUDA backend on DeepSeek-R1-Distill-Qwen-7B shapes
// (Qwen2-7B: 28 layers, hidden 3584, MLP 18944, 28 query / 4 kv heads of 128, vocab 152064)
// with random weights, against the HBM read roofline (bytes of weights read per step over the
// device's bandwidth), eager and replayed as a CUDA graph.
//
//   medrt-gpu-bench [--type bf16|int4] [--batch N]... [--context 128] [--steps 50]
//                   [--bandwidth-gbs 4800] [--layers 28] [--skip op[,op...]]
//
// The step is the decoder's op sequence (model.cpp) written over the Backend directly, q/k/v
// and gate/up through linear_shared as there, so it measures the backend (kernels, graphs), not
// the scheduler. Weights of every layer are distinct device copies of one random host buffer,
// so every step reads all of them from HBM.
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "medrt/backend.h"
#include "medrt/cuda.h"
#include "medrt/dtype.h"
#include "medrt/error.h"

using namespace medrt;

namespace {

struct Shapes {
  int64_t layers = 28, D = 3584, F = 18944, H = 28, KVH = 4, hd = 128, V = 152064;
};

// One host buffer of random bytes large enough for the largest tensor; every weight views it.
struct HostPool {
  std::vector<uint8_t> bytes;
  std::vector<uint16_t> scales, zeros;  // f16 group parameters
  explicit HostPool(size_t n, size_t groups) : bytes(n), scales(groups), zeros(groups) {
    std::mt19937_64 rng(1);
    for (size_t i = 0; i + 8 <= n; i += 8) {
      uint64_t r = rng();
      std::memcpy(&bytes[i], &r, 8);
    }
    // bf16 weights: keep exponents small (|w| < 0.1) so the activations stay finite.
    for (size_t i = 1; i < n; i += 2) bytes[i] = uint8_t(0x3c | (bytes[i] & 0x80));
    std::uniform_real_distribution<float> s(0.001f, 0.01f), z(6.0f, 9.0f);
    for (auto& x : scales) x = f32_to_f16(s(rng));
    for (auto& x : zeros) x = f32_to_f16(z(rng));
  }
};

LinearWeight make(HostPool& pool, const std::string& name, int64_t out, int64_t in, bool int4) {
  LinearWeight w;
  w.name = name;
  w.out = out, w.in = in;
  w.weight.data = pool.bytes.data();
  if (!int4) {
    w.type = WeightType::BF16;
    w.weight.dtype = DType::BF16;
    w.weight.shape = {out, in};
    w.weight.nbytes = size_t(out * in * 2);
    return w;
  }
  w.type = WeightType::Int4;
  w.group_size = 64;
  const int64_t ng = out * (in / 64);
  w.weight.dtype = DType::U8;
  w.weight.shape = {out, in / 2};
  w.weight.nbytes = size_t(out * in / 2);
  for (TensorView* t : {&w.scales, &w.zeros}) {
    t->dtype = DType::F16;
    t->shape = {out, in / 64};
    t->nbytes = size_t(ng * 2);
  }
  w.scales.data = pool.scales.data();
  w.zeros.data = pool.zeros.data();
  return w;
}

const std::set<std::string> kOps = {"linear",        "embedding", "rmsnorm", "add_rmsnorm",
                                    "rope_kv_write", "attention", "silu_mul"};

struct Layer {
  std::unique_ptr<BackendWeight> n1, n2, q, k, v, o, gate, up, down;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string type = "bf16";
  std::set<std::string> skip;
  std::vector<int64_t> batches;
  int64_t context = 128, steps = 50;
  double bandwidth = 4800e9;
  Shapes s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--type") type = v;
    else if (a == "--batch") batches.push_back(std::stoll(v));
    else if (a == "--context") context = std::stoll(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--bandwidth-gbs") bandwidth = std::stod(v) * 1e9;
    else if (a == "--layers") s.layers = std::stoll(v);
    else if (a == "--skip") {
      for (size_t b = 0, e; b <= v.size(); b = e + 1) {
        e = std::min(v.find(',', b), v.size());
        skip.insert(v.substr(b, e - b));
      }
    }
    else { std::fprintf(stderr, "unknown option %s\n", a.c_str()); return 2; }
  }
  for (const std::string& op : skip)
    if (!kOps.count(op)) {
      std::fprintf(stderr, "--skip takes ops among linear, embedding, rmsnorm, rope_kv_write, "
                           "attention, add_rmsnorm, silu_mul; got '%s'\n", op.c_str());
      return 2;
    }
  if (batches.empty()) batches = {1, 16, 64};
  if (type != "bf16" && type != "int4") { std::fprintf(stderr, "--type bf16|int4\n"); return 2; }
  const bool int4 = type == "int4";
  const CudaStatus st = cuda_status();
  if (!st.available) {
    std::printf("SKIP: no usable CUDA device (%s)\n", st.reason.c_str());
    return 0;
  }
  try {
    auto be = make_cuda_backend();
    std::printf("device %s, weights %s, %lld layers, context %lld, bandwidth %.0f GB/s\n",
                be->name().c_str(), type.c_str(), (long long)s.layers, (long long)context,
                bandwidth / 1e9);
    HostPool pool(size_t(s.V * s.D * 2), size_t(s.V * s.D / 64));
    const double t0 = now();
    std::vector<float> ones(size_t(std::max(s.D, s.F)), 1.0f);
    TensorView nv;
    nv.dtype = DType::F32, nv.shape = {s.D}, nv.data = ones.data(), nv.nbytes = size_t(s.D * 4);
    // Embedding and LM head stay bf16 (as quantized checkpoints keep them).
    auto embed = be->prepare_linear(make(pool, "embed", s.V, s.D, false));
    auto lm_head = be->prepare_linear(make(pool, "lm_head", s.V, s.D, false));
    auto final_norm = be->prepare_vector(nv, "norm");
    std::vector<Layer> layers(size_t(s.layers));
    int64_t weight_bytes = lm_head->bytes;
    for (int64_t l = 0; l < s.layers; ++l) {
      Layer& L = layers[size_t(l)];
      const std::string p = "layer" + std::to_string(l) + ".";
      L.n1 = be->prepare_vector(nv, p + "n1");
      L.n2 = be->prepare_vector(nv, p + "n2");
      L.q = be->prepare_linear(make(pool, p + "q", s.H * s.hd, s.D, int4));
      L.k = be->prepare_linear(make(pool, p + "k", s.KVH * s.hd, s.D, int4));
      L.v = be->prepare_linear(make(pool, p + "v", s.KVH * s.hd, s.D, int4));
      L.o = be->prepare_linear(make(pool, p + "o", s.D, s.H * s.hd, int4));
      L.gate = be->prepare_linear(make(pool, p + "gate", s.F, s.D, int4));
      L.up = be->prepare_linear(make(pool, p + "up", s.F, s.D, int4));
      L.down = be->prepare_linear(make(pool, p + "down", s.D, s.F, int4));
      for (auto* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) weight_bytes += (*w)->bytes;
    }
    std::printf("weights read per step: %.2f GB (uploaded in %.1f s); roofline %.1f steps/s\n",
                double(weight_bytes) / 1e9, now() - t0, bandwidth / double(weight_bytes));

    for (int64_t B : batches) {
      const int64_t bs = 16, blocks_per_seq = (context + bs) / bs, nb = B * blocks_per_seq;
      std::vector<DeviceBuffer> kv;
      std::vector<cpu::PagedKV> caches;
      for (int64_t l = 0; l < s.layers; ++l) {
        const size_t n = size_t(nb * s.KVH * bs * s.hd);
        kv.emplace_back(*be, n * 4);
        kv.emplace_back(*be, n * 4);
        caches.push_back(cpu::PagedKV{kv[kv.size() - 2].get<float>(), kv.back().get<float>(), nb,
                                      bs, s.KVH, s.hd});
      }
      const size_t nB = static_cast<size_t>(B);
      std::vector<int32_t> tokens(nB), pos(nB, static_cast<int32_t>(context)), seq(nB), slots(nB),
          tables(nB * static_cast<size_t>(blocks_per_seq));
      for (int64_t b = 0; b < B; ++b) {
        tokens[size_t(b)] = int32_t((b * 7919) % s.V);
        seq[size_t(b)] = int32_t(b);
        for (int64_t j = 0; j < blocks_per_seq; ++j)
          tables[size_t(b * blocks_per_seq + j)] = int32_t(b * blocks_per_seq + j);
        slots[size_t(b)] =
            int32_t(tables[size_t(b * blocks_per_seq + context / bs)] * bs + context % bs);
      }
      auto upload = [&](const std::vector<int32_t>& v) {
        DeviceBuffer d(*be, v.size() * 4);
        be->to_device(d.get(), v.data(), v.size() * 4);
        return d;
      };
      DeviceBuffer d_tok = upload(tokens), d_pos = upload(pos), d_seq = upload(seq),
                   d_slots = upload(slots), d_tables = upload(tables);
      std::vector<float> inv(size_t(s.hd / 2));
      for (int64_t i = 0; i < s.hd / 2; ++i) inv[size_t(i)] = float(std::pow(1e6, -2.0 * i / s.hd));
      DeviceBuffer d_inv(*be, inv.size() * 4);
      be->to_device(d_inv.get(), inv.data(), inv.size() * 4);
      auto buf = [&](int64_t n) { return DeviceBuffer(*be, size_t(n) * 4); };
      DeviceBuffer x = buf(B * s.D), h = buf(B * s.D), q = buf(B * s.H * s.hd),
                   k = buf(B * s.KVH * s.hd), v = buf(B * s.KVH * s.hd), att = buf(B * s.H * s.hd),
                   o = buf(B * s.D), g = buf(B * s.F), u = buf(B * s.F), a = buf(B * s.F),
                   logits = buf(B * s.V);
      const float scale = 1.0f / std::sqrt(float(s.hd));
      const cpu::AttentionBatch ab{B, d_seq.get<int32_t>(), d_pos.get<int32_t>(),
                                   d_tables.get<int32_t>(), blocks_per_seq};
      // --skip: the step without those ops (where the time of a step goes; values are then
      // meaningless, times are not).
      auto run = [&](const char* op) { return skip.count(op) == 0; };
      auto step = [&] {
        float *xp = x.get<float>(), *hp = h.get<float>(), *qp = q.get<float>();
        float *kp = k.get<float>(), *vp = v.get<float>(), *op = o.get<float>();
        const int32_t* pos = d_pos.get<int32_t>();
        if (run("embedding")) be->embedding(*embed, d_tok.get<int32_t>(), B, xp);
        for (int64_t l = 0; l < s.layers; ++l) {
          const Layer& L = layers[size_t(l)];
          // The previous layer's MLP output joins the residual stream in this norm (model.cpp).
          if (l == 0 && run("rmsnorm")) be->rmsnorm(xp, B, s.D, *L.n1, 1e-6f, hp);
          if (l > 0 && run("add_rmsnorm")) be->add_rmsnorm(xp, op, B, s.D, *L.n1, 1e-6f, hp);
          // q/k/v and gate/up as model.cpp runs them: weights of one input in linear_shared.
          const BackendWeight* qkv[3] = {L.q.get(), L.k.get(), L.v.get()};
          float* qkv_out[3] = {qp, kp, vp};
          if (run("linear")) be->linear_shared(qkv, qkv_out, 3, hp, B);
          if (run("rope_kv_write"))
            be->rope_kv_write(qp, kp, vp, B, s.H, pos, d_inv.get<float>(),
                              d_slots.get<int32_t>(), caches[size_t(l)]);
          if (run("attention"))
            be->paged_attention(qp, s.H, caches[size_t(l)], ab, scale, att.get<float>());
          if (run("linear")) be->linear(*L.o, att.get<float>(), B, op);
          if (run("add_rmsnorm")) be->add_rmsnorm(xp, op, B, s.D, *L.n2, 1e-6f, hp);
          const BackendWeight* gate_up[2] = {L.gate.get(), L.up.get()};
          float* gate_up_out[2] = {g.get<float>(), u.get<float>()};
          if (run("linear")) be->linear_shared(gate_up, gate_up_out, 2, hp, B);
          if (run("silu_mul")) be->silu_mul(g.get<float>(), u.get<float>(), B, s.F, a.get<float>());
          if (run("linear")) be->linear(*L.down, a.get<float>(), B, op);
        }
        if (run("add_rmsnorm")) be->add_rmsnorm(xp, op, B, s.D, *final_norm, 1e-6f, xp);
        if (run("linear")) be->linear(*lm_head, xp, B, logits.get<float>());
      };
      auto timed = [&](const std::function<void()>& run) {
        run();
        be->synchronize();
        const double a0 = now();
        for (int64_t i = 0; i < steps; ++i) run();
        be->synchronize();
        return (now() - a0) / double(steps);
      };
      const double eager = timed(step);
      auto graph = capture_step_graph(*be, step);
      const double replay = timed([&] { graph->replay(); });
      const double roof = double(weight_bytes) / bandwidth;
      std::printf("batch %3lld: eager %.3f ms/step, graph %.3f ms/step (graph gain %.1f%%); "
                  "%.0f tokens/s; %.1f%% of the %.0f steps/s roofline\n",
                  (long long)B, eager * 1e3, replay * 1e3, (eager / replay - 1) * 100,
                  double(B) / replay, roof / replay * 100, 1.0 / roof);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "medrt-gpu-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
