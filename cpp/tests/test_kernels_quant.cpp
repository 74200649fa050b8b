// Quantized linear layers (int8 per row and in groups of 32, nf4, int4 with zeros or mins, int6)
// through the traits table (cpu::pack_linear / cpu::linear), on every ISA this CPU has:
//   (a) against double-precision references: the format's dequantized weight times the f32
//       input within the activation-quantization bound, and the kernels' documented arithmetic
//       (int8 activations, nf4's int8 table) within f32 rounding;
//   (b) bit-identical to the portable path;
//   (c) decode == prefill bit for bit, a row alone == the same row among 37 or 70, any thread
//       count;
// on ragged shapes (rows not a multiple of the 16-row group, in not a multiple of the group
// tile), with codes and scales built exactly as docs/quantized-format.md stores them; and
//   (d) on weights written by medrt-train's quantizer, against the numpy reference dequantizer
//       (data/quant_reference.safetensors, made by data/make_quant_reference.py).
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "isas.h"
#include "medrt/checkpoint.h"
#include "kernels/quant_kernels.h"
#include "kernels/weight_kernels.h"
#include "medrt/dtype.h"
#include "medrt/error.h"

using namespace medrt;
namespace q = medrt::cpu::quant;

namespace {

struct Spec {
  const char* name;
  WeightType type;
  int group_size;
  bool mins;  // int4: mins (GGUF Q4_1) instead of zeros
  int64_t out, in;
  bool bias;
};

// A LinearWeight over tensors owned here, and its weight in double two ways: as the format
// dequantizes it (f32 formulas of docs/quantized-format.md) and as the kernels compute with it
// (nf4 through round(127 * NF4) / 127).
struct Built {
  std::vector<uint8_t> codes;
  std::vector<float> scales32, bias;
  std::vector<uint16_t> scales16, zm16;
  std::vector<double> wdeq, wkern;
  std::vector<double> wmag;  // per weight: the magnitude of the terms the kernel sums
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

Built build(const Spec& s, std::mt19937& rng) {
  Built b;
  const int64_t O = s.out, I = s.in, gs = s.group_size;
  const int64_t G = gs ? I / gs : 1;
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  auto uni = [&](float lo, float hi) { return lo + (hi - lo) * u01(rng); };
  auto half = [](float v) { return f32_to_f16(v); };
  b.wdeq.resize(size_t(O * I));
  b.wkern.resize(size_t(O * I));
  b.wmag.resize(size_t(O * I));
  b.lw.name = std::string("model.layers.0.") + s.name;
  b.lw.type = s.type;
  b.lw.out = O;
  b.lw.in = I;
  b.lw.group_size = s.group_size;
  if (s.type == WeightType::Int8) {
    b.codes.resize(size_t(O * I));
    const int lo = gs ? -128 : -127;  // Q8_0 files may hold -128; medrt's int8 never does
    std::uniform_int_distribution<int> code(lo, 127);
    for (auto& c : b.codes) c = uint8_t(int8_t(code(rng)));
    if (gs == 0) {
      b.scales32.resize(size_t(O));
      for (auto& v : b.scales32) v = uni(0.001f, 0.02f);
    } else {
      b.scales16.resize(size_t(O * G));
      for (auto& v : b.scales16) v = half(uni(0.001f, 0.02f));
    }
    for (int64_t r = 0; r < O; ++r)
      for (int64_t i = 0; i < I; ++i) {
        const float sc = gs ? f16_to_f32(b.scales16[size_t(r * G + i / gs)]) : b.scales32[size_t(r)];
        const float c = float(int8_t(b.codes[size_t(r * I + i)]));
        b.wdeq[size_t(r * I + i)] = c * sc;
        b.wkern[size_t(r * I + i)] = double(c) * sc;
        b.wmag[size_t(r * I + i)] = std::fabs(double(c) * sc);
      }
    b.lw.weight = view(DType::I8, {O, I}, b.codes.data());
    b.lw.scales = gs ? view(DType::F16, {O, G}, b.scales16.data())
                     : view(DType::F32, {O}, b.scales32.data());
  } else if (s.type == WeightType::Int6) {
    // Codes 0..63 packed as docs/quantized-format.md says: per 32 inputs, 16 bytes of low
    // nibbles (input j and j + 16), then 8 bytes whose byte 4v + t holds, in bits 2f..2f+1,
    // the high bits of inputs 8v + t, 16 + 8v + t, 8v + 4 + t, 16 + 8v + 4 + t (f = 0..3).
    std::uniform_int_distribution<int> code(0, 63);
    b.codes.assign(size_t(O * I / 32 * 24), 0);
    b.scales16.resize(size_t(O * G));
    for (auto& v : b.scales16) v = half(uni(0.001f, 0.01f));
    for (int64_t r = 0; r < O; ++r)
      for (int64_t c = 0; c < I / 32; ++c) {
        int q[32];
        for (int& v : q) v = code(rng);
        uint8_t* chunk = b.codes.data() + (r * I / 32 + c) * 24;
        for (int j = 0; j < 16; ++j) chunk[j] = uint8_t((q[j] & 15) | (q[j + 16] & 15) << 4);
        for (int v = 0; v < 2; ++v)
          for (int t = 0; t < 4; ++t) {
            const int in[4] = {8 * v + t, 16 + 8 * v + t, 8 * v + 4 + t, 16 + 8 * v + 4 + t};
            for (int f = 0; f < 4; ++f)
              chunk[16 + 4 * v + t] |= uint8_t((q[in[f]] >> 4) << (2 * f));
          }
        for (int j = 0; j < 32; ++j) {
          const int64_t i = c * 32 + j;
          const size_t k = size_t(r * I + i);
          const float sc = f16_to_f32(b.scales16[size_t(r * G + i / gs)]);
          b.wdeq[k] = float(q[j] - 32) * sc;
          b.wkern[k] = double(q[j] - 32) * sc;
          b.wmag[k] = double(q[j] + 32) * sc;  // the kernel sums q * a, then 32 * sum(a)
        }
      }
    b.lw.weight = view(DType::U8, {O, I / 32 * 24}, b.codes.data());
    b.lw.scales = view(DType::F16, {O, G}, b.scales16.data());
  } else {
    std::vector<int> code(size_t(O * I));
    std::uniform_int_distribution<int> nib(0, 15);
    for (auto& c : code) c = nib(rng);
    b.codes.assign(size_t(O * I / 2), 0);
    for (int64_t r = 0; r < O; ++r)
      for (int64_t i = 0; i < I; ++i) {
        const int64_t c = i / 32, j = i % 32;
        const int v = code[size_t(r * I + i)];
        b.codes[size_t(r * I / 2 + c * 16 + j % 16)] |= uint8_t(j < 16 ? v : v << 4);
      }
    b.scales16.resize(size_t(O * G));
    for (auto& v : b.scales16) v = half(s.type == WeightType::Nf4 ? uni(0.01f, 0.1f) : uni(0.002f, 0.02f));
    const bool int4 = s.type == WeightType::Int4;
    if (int4) {
      b.zm16.resize(size_t(O * G));
      for (auto& v : b.zm16) v = half(s.mins ? uni(-0.2f, 0.05f) : uni(-3.0f, 18.0f));
    }
    for (int64_t r = 0; r < O; ++r)
      for (int64_t i = 0; i < I; ++i) {
        const size_t k = size_t(r * I + i), gi = size_t(r * G + i / gs);
        const int c = code[k];
        const float sc = f16_to_f32(b.scales16[gi]);
        if (!int4) {
          b.wdeq[k] = q::kNf4[c] * sc;
          b.wkern[k] = double(q::kNf4Int8[c]) / 127.0 * sc;
          b.wmag[k] = std::fabs(b.wkern[k]);
        } else if (!s.mins) {
          const float z = f16_to_f32(b.zm16[gi]);
          b.wdeq[k] = (float(c) - z) * sc;
          b.wkern[k] = (double(c) - z) * sc;
          b.wmag[k] = (c + std::fabs(double(z))) * sc;
        } else {
          const float m = f16_to_f32(b.zm16[gi]);
          const float qs = float(c) * sc;
          b.wdeq[k] = qs + m;
          b.wkern[k] = double(c) * sc + m;
          b.wmag[k] = double(c) * sc + std::fabs(double(m));
        }
      }
    b.lw.weight = view(DType::U8, {O, I / 2}, b.codes.data());
    b.lw.scales = view(DType::F16, {O, G}, b.scales16.data());
    if (int4) (s.mins ? b.lw.mins : b.lw.zeros) = view(DType::F16, {O, G}, b.zm16.data());
  }
  if (s.bias) {
    b.bias.resize(size_t(O));
    for (auto& v : b.bias) v = uni(-1.0f, 1.0f);
    b.lw.bias = view(DType::F32, {O}, b.bias.data());
  }
  return b;
}

std::vector<float> random_x(int64_t M, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(size_t(M * K));
  for (auto& v : x) v = dist(rng);
  if (M * K > 40) x[7] = 0.0f, x[40] = 25.0f;  // an outlier and an exact zero
  return x;
}

const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {
      {"int8_row", WeightType::Int8, 0, false, 37, 203, true},   // in not a multiple of 32
      {"int8_g32", WeightType::Int8, 32, false, 37, 416, false},
      {"nf4_g64", WeightType::Nf4, 64, false, 37, 448, true},
      {"int4_g32_zeros", WeightType::Int4, 32, false, 37, 416, false},
      {"int4_g64_zeros", WeightType::Int4, 64, false, 9, 448, true},
      {"int4_g128_zeros", WeightType::Int4, 128, false, 37, 640, true},
      {"int4_g32_mins", WeightType::Int4, 32, true, 37, 416, true},
      {"int4_g64_mins", WeightType::Int4, 64, true, 37, 448, false},
      {"int4_g128_mins", WeightType::Int4, 128, true, 21, 384, true},
      {"int6_g32", WeightType::Int6, 32, false, 21, 416, false},
      {"int6_g64", WeightType::Int6, 64, false, 37, 448, true},
      {"int6_g128", WeightType::Int6, 128, false, 9, 640, true},
  };
  return s;
}

std::vector<float> run(const cpu::PackedLinear& p, const std::vector<float>& x, int64_t M,
                       ThreadPool& pool) {
  std::vector<float> y(size_t(M * p.out), -1.0f);
  cpu::linear(p, x.data(), M, y.data(), pool);
  return y;
}

bool same_bits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

}  // namespace

TEST(activation_quantization_is_within_half_a_step) {
  std::mt19937 rng(3);
  ThreadPool pool(2);
  const int64_t M = 3, K = 100;
  const auto x = random_x(M, K, rng);
  q::ActBuffer a;
  q::quantize_act(x.data(), M, K, a, pool);
  const int64_t nb = 4;
  CHECK(a.blocks.size() == size_t(M * nb) && a.codes.size() == size_t(M * nb * 32));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const q::ActBlock& ab = a.blocks[size_t(m * nb + b)];
      int32_t sum = 0;
      for (int64_t j = 0; j < 32; ++j) {
        const int64_t i = b * 32 + j;
        const int c = a.codes[size_t(m * nb * 32 + i)];
        CHECK(c >= -127 && c <= 127);
        sum += c;
        const double xv = i < K ? x[size_t(m * K + i)] : 0.0;
        CHECK(std::fabs(xv - double(ab.d) * c) <= ab.d * 0.5 * (1 + 1e-6));
      }
      CHECK(ab.qsum == sum && ab.sum == float(sum) && ab.dsum == ab.d * float(sum));
    }
}

TEST(activation_quantization_is_the_same_on_every_isa) {
  std::mt19937 rng(4);
  ThreadPool pool(1);
  const int64_t M = 4, K = 200;
  auto x = random_x(M, K, rng);
  x[size_t(K)] = 127.0f;  // row 1, block 0: amax 127, so x * 127 / amax is x
  for (int64_t i = 1; i < 32; ++i) x[size_t(K + i)] = float(i) - 15.5f;
  x[size_t(2 * K + 3)] = NAN;  // a NaN is skipped by the block's max, its code is -127
  x[size_t(3 * K + 40)] = 1e30f;
  std::vector<int8_t> codes0;
  std::vector<q::ActBlock> blocks0;
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    q::ActBuffer a;
    q::quantize_act(x.data(), M, K, a, pool);
    if (isa == cpu::Isa::Portable) {
      codes0 = a.codes, blocks0 = a.blocks;
      // Row 1, block 0 holds -14.5, -13.5, ..., 15.5: ties round to even.
      CHECK(a.codes[size_t(7 * 32) + 1] == -14 && a.codes[size_t(7 * 32) + 2] == -14);
      continue;
    }
    CHECK(a.codes == codes0);
    CHECK(std::memcmp(a.blocks.data(), blocks0.data(), blocks0.size() * sizeof(q::ActBlock)) == 0);
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(nf4_int8_table_is_round_127_nf4) {
  double worst = 0;
  for (int c = 0; c < 16; ++c) {
    CHECK(q::kNf4Int8[c] == int(std::lround(127.0 * q::kNf4[c])));
    worst = std::fmax(worst, std::fabs(q::kNf4Int8[c] / 127.0 - q::kNf4[c]));
  }
  CHECK(worst < 0.00368 && worst > 0.00367);  // the bound quant_layout.h states
}

TEST(every_type_matches_references_and_portable_bit_for_bit) {
  std::mt19937 rng(11);
  ThreadPool pool(2);
  const int64_t Ms[] = {1, 3, 8, 37};
  for (const Spec& s : specs()) {
    Built w = build(s, rng);
    for (int64_t M : Ms) {
      const auto x = random_x(M, s.in, rng);
      q::ActBuffer act;
      q::quantize_act(x.data(), M, s.in, act, pool);
      const int64_t nb = (s.in + 31) / 32;
      std::vector<float> y_portable;
      for (cpu::Isa isa : isas()) {
        cpu::set_isa(isa);
        const cpu::PackedLinear p = cpu::pack_linear(w.lw);
        if (isa == cpu::Isa::Avx512 && q::cpu_has_avx512_vnni())
          CHECK(std::string(p.kernels->name).find("avx512vnni") != std::string::npos);
        const auto y = run(p, x, M, pool);
        if (isa == cpu::Isa::Portable) {
          y_portable = y;
          int bad = 0;
          for (int64_t m = 0; m < M; ++m)
            for (int64_t r = 0; r < s.out; ++r) {
              double ref = s.bias ? w.bias[size_t(r)] : 0.0;  // format weight, f32 input
              double kref = ref;                              // kernel math, int8 input
              double act_bound = 0, table_err = 0, mag = 0;
              for (int64_t i = 0; i < s.in; ++i) {
                const size_t k = size_t(r * s.in + i);
                const double xv = x[size_t(m * s.in + i)];
                const q::ActBlock& ab = act.blocks[size_t(m * nb + i / 32)];
                const double xq = double(ab.d) * act.codes[size_t(m * nb * 32 + i)];
                ref += w.wdeq[k] * xv;
                kref += w.wkern[k] * xq;
                act_bound += std::fabs(w.wkern[k]) * ab.d * 0.5 * (1 + 1e-6);
                table_err += std::fabs(w.wkern[k] - w.wdeq[k]) * std::fabs(xv);
                mag += w.wmag[k] * std::fabs(xq);
              }
              const double yv = y[size_t(m * s.out + r)];
              const double ftol = 1e-5 * mag + 1e-6;
              if (std::fabs(yv - kref) > ftol || std::fabs(yv - ref) > act_bound + table_err + ftol) {
                if (bad++ < 3)
                  std::fprintf(stderr, "  %s M=%ld y[%ld,%ld]=%.9g kernel-math %.9g (tol %.3g) "
                               "format %.9g (tol %.3g)\n", s.name, long(M), long(m), long(r), yv,
                               kref, ftol, ref, act_bound + table_err + ftol);
              }
            }
          CHECK(bad == 0);
        } else if (!same_bits(y.data(), y_portable.data(), y.size())) {
          std::fprintf(stderr, "  %s M=%ld: %s differs from portable\n", s.name, long(M),
                       p.kernels->name);
          CHECK(false);
        }
      }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(decode_prefill_and_batch_invariance) {
  std::mt19937 rng(5);
  ThreadPool pool2(2), pool1(1), pool3(3);
  for (const Spec& s : specs()) {
    Built w = build(s, rng);
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      const cpu::PackedLinear p = cpu::pack_linear(w.lw);
      for (int64_t M : {37, 70}) {  // 70: two prefill chunks of rows
        const auto x = random_x(M, s.in, rng);
        const auto batch = run(p, x, M, pool2);
        std::vector<float> dec(batch.size()), pre(batch.size());
        p.kernels->decode(p, x.data(), M, dec.data(), pool2);
        p.kernels->prefill(p, x.data(), M, pre.data(), pool3);
        CHECK(same_bits(dec.data(), batch.data(), batch.size()));
        CHECK(same_bits(pre.data(), batch.data(), batch.size()));
        for (int64_t m : {int64_t(0), int64_t(5), M - 1}) {
          const std::vector<float> xr(x.begin() + m * s.in, x.begin() + (m + 1) * s.in);
          const auto alone = run(p, xr, 1, pool1);
          if (!same_bits(alone.data(), batch.data() + m * s.out, size_t(s.out))) {
            std::fprintf(stderr, "  %s %s: row %ld alone differs from inside M=%ld\n", s.name,
                         p.kernels->name, long(m), long(M));
            CHECK(false);
          }
        }
      }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(dequant_row_is_the_format_formula) {
  std::mt19937 rng(9);
  for (const Spec& s : specs()) {
    Built w = build(s, rng);
    const cpu::PackedLinear p = cpu::pack_linear(w.lw);
    std::vector<float> row(size_t(s.in));
    int bad = 0;
    for (int64_t r = 0; r < s.out; ++r) {
      p.kernels->dequant_row(p, r, row.data());
      for (int64_t i = 0; i < s.in; ++i) bad += row[size_t(i)] != float(w.wdeq[size_t(r * s.in + i)]);
    }
    if (bad) std::fprintf(stderr, "  %s: %d values differ\n", s.name, bad);
    CHECK(bad == 0);
  }
}

TEST(pack_refuses_malformed_tensors_naming_the_module) {
  std::mt19937 rng(2);
  Built nf4 = build(specs()[2], rng);
  LinearWeight lw = nf4.lw;
  lw.group_size = 48;
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "model.layers.0.nf4_g64");
  lw = nf4.lw;
  lw.scales = TensorView();
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "missing scales");
  lw = nf4.lw;
  lw.weight.shape = {lw.out, lw.in};
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "qweight is U8");
  Built i4 = build(specs()[3], rng);
  lw = i4.lw;
  lw.mins = lw.zeros;
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "exactly one of zeros and mins");
  lw = i4.lw;
  lw.zeros.dtype = DType::F32;
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "zeros is F32");
  Built i8 = build(specs()[0], rng);
  lw = i8.lw;
  lw.scales.shape = {lw.out + 1};
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "model.layers.0.int8_row");
  Built i6 = build(specs()[10], rng);  // int6_g64: 24 bytes per 32 inputs, not 16
  lw = i6.lw;
  lw.weight.shape = {lw.out, lw.in / 2};
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw),
               "qweight is U8 [37, 224]; expected U8 [37, 336]");
  lw = i6.lw;
  lw.in = 432, lw.group_size = 48;
  CHECK_THROWS(InvalidCheckpoint, cpu::pack_linear(lw), "model.layers.0.int6_g64");
}

TEST(numpy_reference_weights_from_medrt_train) {
  std::string dir = __FILE__;
  dir = dir.substr(0, dir.rfind('/'));
  const auto file = SafetensorsFile::open(dir + "/data/quant_reference.safetensors");
  const auto& t = file->tensors();
  const TensorView& xv = t.at("x");
  const int64_t M = xv.dim(0), K = xv.dim(1);
  const auto* x = static_cast<const float*>(xv.data);
  double nf4_err = 0;  // the int8 NF4 table's largest error, in units of the group scale
  for (int c = 0; c < 16; ++c)
    nf4_err = std::fmax(nf4_err, std::fabs(q::kNf4Int8[c] / 127.0 - q::kNf4[c]));
  ThreadPool pool(2);
  q::ActBuffer act;
  q::quantize_act(x, M, K, act, pool);
  const int64_t nb = K / 32;
  struct Ref { const char* spec; WeightType type; int group_size; };
  for (const Ref& r : {Ref{"int8", WeightType::Int8, 0}, Ref{"nf4", WeightType::Nf4, 64},
                       Ref{"int4-g32", WeightType::Int4, 32}, Ref{"int4-g64", WeightType::Int4, 64},
                       Ref{"int4-g128", WeightType::Int4, 128},
                       Ref{"int6-g64", WeightType::Int6, 64}}) {
    const std::string pre = std::string(r.spec) + ".";
    LinearWeight lw;
    lw.name = r.spec;
    lw.type = r.type;
    lw.weight = t.at(pre + "qweight");
    lw.scales = t.at(pre + "scales");
    if (r.type == WeightType::Int4) lw.zeros = t.at(pre + "zeros");
    lw.out = lw.weight.dim(0);
    lw.in = K;
    lw.group_size = r.group_size;
    const auto* deq = static_cast<const float*>(t.at(pre + "dequant").data);
    const auto* yref = static_cast<const float*>(t.at(pre + "y").data);
    const int64_t N = lw.out;
    // The group scale of weight (n, i), for the nf4 table term and the f32 rounding slack.
    auto scale = [&](int64_t n, int64_t i) -> double {
      if (r.group_size == 0) return static_cast<const float*>(lw.scales.data)[n];
      return f16_to_f32(static_cast<const uint16_t*>(lw.scales.data)[n * (K / r.group_size) +
                                                                     i / r.group_size]);
    };
    for (cpu::Isa isa : isas()) {
      cpu::set_isa(isa);
      const cpu::PackedLinear p = cpu::pack_linear(lw);
      std::vector<float> row(static_cast<size_t>(K));
      int bad = 0;
      for (int64_t n = 0; n < N; ++n) {
        p.kernels->dequant_row(p, n, row.data());
        bad += std::memcmp(row.data(), deq + n * K, size_t(K) * 4) != 0;
      }
      CHECK(bad == 0);
      std::vector<float> y(size_t(M * N));
      cpu::linear(p, x, M, y.data(), pool);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          // |sum w (x - x')| <= sum |w| d_b / 2 for x' the int8 activation of block b; nf4 adds
          // sum |x| * s * nf4_err for its int8 table; f32 rounding of the block sums is far
          // below 1e-5 of the magnitudes summed.
          double tol = 0;
          for (int64_t i = 0; i < K; ++i) {
            const double w = deq[n * K + i], xi = x[m * K + i];
            const double d = act.blocks[size_t(m * nb + i / 32)].d;
            tol += std::fabs(w) * d * 0.5 * (1 + 1e-6);
            if (r.type == WeightType::Nf4) tol += std::fabs(xi) * scale(n, i) * nf4_err;
            tol += 1e-5 * (std::fabs(w) + 32 * scale(n, i)) * (std::fabs(xi) + d);
          }
          const double got = y[size_t(m * N + n)], want = yref[m * N + n];
          if (!(std::fabs(got - want) <= tol + 1e-6 * std::fabs(want))) {
            std::fprintf(stderr, "  %s %s y[%ld,%ld]=%.7g numpy %.7g tol %.3g\n", r.spec,
                         p.kernels->name, long(m), long(n), got, want, tol);
            CHECK(false);
          }
        }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

// ActPrecision::Int8x2: each input row as two int8 rows, its codes and its rounding residual's.
TEST(split_activations_are_within_half_a_residual_step) {
  std::mt19937 rng(13);
  ThreadPool pool(2);
  const int64_t M = 3, K = 100, nb = 4, width = nb * 32;
  const auto x = random_x(M, K, rng);
  q::ActBuffer one, two;
  q::quantize_act(x.data(), M, K, one, pool);
  q::quantize_act_split(x.data(), M, K, two, pool);
  CHECK(two.blocks.size() == size_t(2 * M * nb) && two.codes.size() == size_t(2 * M * width));
  for (int64_t m = 0; m < M; ++m) {
    // Row 2m is quantize_act's row m, bit for bit.
    CHECK(std::memcmp(two.codes.data() + 2 * m * width, one.codes.data() + m * width,
                      size_t(width)) == 0);
    for (int64_t b = 0; b < nb; ++b) {
      const q::ActBlock& hi = two.blocks[size_t(2 * m * nb + b)];
      const q::ActBlock& lo = two.blocks[size_t((2 * m + 1) * nb + b)];
      CHECK(hi.d == one.blocks[size_t(m * nb + b)].d);
      // The residual is at most half a first step, so its step is 127 times finer or more.
      CHECK(lo.d <= hi.d * 0.5f / 127.0f * (1 + 1e-5f));
      for (int64_t j = 0; j < 32; ++j) {
        const int64_t i = b * 32 + j;
        const double xv = i < K ? x[size_t(m * K + i)] : 0.0;
        const double x2 = double(hi.d) * two.codes[size_t(2 * m * width + i)] +
                          double(lo.d) * two.codes[size_t((2 * m + 1) * width + i)];
        CHECK(std::fabs(xv - x2) <= lo.d * 0.5 * (1 + 1e-5) + 1e-7 * std::fabs(xv));
      }
    }
  }
}

TEST(int8x2_activations_match_the_f32_input_on_every_isa) {
  std::mt19937 rng(17);
  ThreadPool pool2(2), pool1(1), pool3(3);
  for (const Spec& s : specs()) {
    Built w = build(s, rng);
    for (int64_t M : {1, 5, 37}) {
      const auto x = random_x(M, s.in, rng);
      q::ActBuffer act;
      q::quantize_act_split(x.data(), M, s.in, act, pool2);
      const int64_t nb = (s.in + 31) / 32;
      std::vector<float> y_portable;
      double worst_x2 = 0, worst_x1 = 0;  // largest error against the format weight x f32 input
      for (cpu::Isa isa : isas()) {
        cpu::set_isa(isa);
        const cpu::PackedLinear p = cpu::pack_linear(w.lw, ActPrecision::Int8x2);
        const auto y = run(p, x, M, pool2);
        // Decode and prefill and a row alone give the same bits.
        std::vector<float> dec(y.size()), pre(y.size());
        p.kernels->decode(p, x.data(), M, dec.data(), pool1);
        p.kernels->prefill(p, x.data(), M, pre.data(), pool3);
        CHECK(same_bits(dec.data(), y.data(), y.size()));
        CHECK(same_bits(pre.data(), y.data(), y.size()));
        const std::vector<float> last(x.end() - s.in, x.end());
        CHECK(same_bits(run(p, last, 1, pool1).data(), y.data() + (M - 1) * s.out, size_t(s.out)));
        if (isa != cpu::Isa::Portable) {
          if (!same_bits(y.data(), y_portable.data(), y.size())) {
            std::fprintf(stderr, "  %s M=%ld: %s int8x2 differs from portable\n", s.name,
                         long(M), p.kernels->name);
            CHECK(false);
          }
          continue;
        }
        y_portable = y;
        const auto y1 = run(cpu::pack_linear(w.lw), x, M, pool2);  // one int8 term
        int bad = 0;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t r = 0; r < s.out; ++r) {
            double ref = s.bias ? w.bias[size_t(r)] : 0.0, bound = 0, mag = 0;
            for (int64_t i = 0; i < s.in; ++i) {
              const size_t k = size_t(r * s.in + i);
              const double xv = x[size_t(m * s.in + i)];
              const double d2 = act.blocks[size_t((2 * m + 1) * nb + i / 32)].d;
              ref += w.wdeq[k] * xv;
              bound += std::fabs(w.wkern[k]) * d2 * 0.5 * (1 + 1e-5);
              bound += std::fabs(w.wkern[k] - w.wdeq[k]) * std::fabs(xv);  // nf4's table
              mag += w.wmag[k] * std::fabs(xv);
            }
            const double yv = y[size_t(m * s.out + r)];
            const double tol = bound + 2e-5 * mag + 1e-6;
            worst_x2 = std::fmax(worst_x2, std::fabs(yv - ref));
            worst_x1 = std::fmax(worst_x1, std::fabs(double(y1[size_t(m * s.out + r)]) - ref));
            if (std::fabs(yv - ref) > tol && bad++ < 3)
              std::fprintf(stderr, "  %s M=%ld y[%ld,%ld]=%.9g format %.9g (tol %.3g)\n",
                           s.name, long(M), long(m), long(r), yv, ref, tol);
          }
        CHECK(bad == 0);
        // Without nf4's int8 table the second term cuts the error at least tenfold.
        if (s.type != WeightType::Nf4 && !(worst_x2 * 10 < worst_x1)) {
          std::fprintf(stderr, "  %s M=%ld: int8x2 error %.3g, int8 %.3g\n", s.name, long(M),
                       worst_x2, worst_x1);
          CHECK(false);
        }
      }
    }
  }
  cpu::set_isa(cpu::detected_isa());
}

// linear_shared: weights of one input (q/k/v, gate/up) quantize it once and run in one
// parallel region; every result is the bits linear() gives for that weight alone.
TEST(linear_shared_gives_each_weights_own_result) {
  std::mt19937 rng(23);
  ThreadPool pool2(2), pool3(3);
  // Three types of in = 416 (int8 groups, int4 zeros, int4 mins), one with a bias.
  Built a = build(specs()[1], rng), b = build(specs()[3], rng), c = build(specs()[6], rng);
  for (cpu::Isa isa : isas()) {
    cpu::set_isa(isa);
    for (ActPrecision act : {ActPrecision::Int8, ActPrecision::Int8x2}) {
      const cpu::PackedLinear pa = cpu::pack_linear(a.lw, act), pb = cpu::pack_linear(b.lw, act),
                              pc = cpu::pack_linear(c.lw, act);
      const cpu::PackedLinear* ws[3] = {&pa, &pb, &pc};
      CHECK(pa.kernels->rowgroups != nullptr);
      for (int64_t M : {1, 5, 37, 70}) {
        const auto x = random_x(M, 416, rng);
        for (ThreadPool* pool : {&pool2, &pool3}) {
          std::vector<float> ya(size_t(M * pa.out), -1), yb(size_t(M * pb.out), -1),
              yc(size_t(M * pc.out), -1);
          float* ys[3] = {ya.data(), yb.data(), yc.data()};
          cpu::linear_shared(ws, ys, 3, x.data(), M, *pool);
          const bool same = same_bits(ya.data(), run(pa, x, M, *pool).data(), ya.size()) &&
                            same_bits(yb.data(), run(pb, x, M, *pool).data(), yb.size()) &&
                            same_bits(yc.data(), run(pc, x, M, *pool).data(), yc.size());
          if (!same)
            std::fprintf(stderr, "  %s %s M=%ld: shared differs from alone\n", pa.kernels->name,
                         act_precision_name(act), long(M));
          CHECK(same);
        }
      }
    }
    // Weights the shared path does not take (a float weight, mixed precisions) run alone.
    std::vector<float> wf(size_t(5 * 416));
    for (auto& v : wf) v = std::normal_distribution<float>(0.0f, 0.1f)(rng);
    TensorView tf;
    tf.dtype = DType::F32;
    tf.shape = {5, 416};
    tf.data = wf.data();
    tf.nbytes = wf.size() * 4;
    const cpu::PackedLinear pf = cpu::pack_linear(float_linear("f", tf));
    const cpu::PackedLinear p8 = cpu::pack_linear(a.lw), p82 = cpu::pack_linear(b.lw,
                                                                              ActPrecision::Int8x2);
    const auto x = random_x(3, 416, rng);
    std::vector<float> y0(size_t(3 * p8.out)), y1(size_t(3 * pf.out)), y2(size_t(3 * p82.out));
    const cpu::PackedLinear* ws[3] = {&p8, &pf, &p82};
    float* ys[3] = {y0.data(), y1.data(), y2.data()};
    cpu::linear_shared(ws, ys, 3, x.data(), 3, pool2);
    CHECK(same_bits(y0.data(), run(p8, x, 3, pool2).data(), y0.size()));
    CHECK(same_bits(y1.data(), run(pf, x, 3, pool2).data(), y1.size()));
    CHECK(same_bits(y2.data(), run(p82, x, 3, pool2).data(), y2.size()));
  }
  cpu::set_isa(cpu::detected_isa());
}
