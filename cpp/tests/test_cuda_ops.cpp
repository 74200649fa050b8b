// The CUDA backend's ops against a reference: linear layers of every weight type (decode GEMV
// and prefill GEMM paths) against the dequantisation formulas of linear.h in double, the other
// ops and paged attention against the CPU backend, and a captured graph against eager runs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "check.h"
#include "cuda_skip.h"
#include "medrt/backend.h"
#include "medrt/cuda.h"
#include "medrt/dtype.h"
#include "medrt/error.h"

using namespace medrt;

namespace {

std::mt19937 rng(1234);

std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct Gpu {
  ThreadPool pool{2};
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  std::unique_ptr<Backend> dev = make_cuda_backend();
  std::vector<DeviceBuffer> bufs;

  template <typename T>
  T* up(const std::vector<T>& v) {
    bufs.emplace_back(*dev, v.size() * sizeof(T));
    dev->to_device(bufs.back().get(), v.data(), v.size() * sizeof(T));
    return bufs.back().get<T>();
  }
  float* zeros(size_t n) {
    std::vector<float> z(n, 0.0f);
    return up(z);
  }
  std::vector<float> down(const float* p, size_t n) {
    std::vector<float> v(n);
    dev->to_host(v.data(), p, n * sizeof(float));
    return v;
  }
};

TensorView view(DType t, std::vector<int64_t> shape, const void* data, size_t nbytes) {
  TensorView v;
  v.dtype = t, v.shape = std::move(shape), v.data = data, v.nbytes = nbytes;
  return v;
}

uint16_t f16(float x) { return f32_to_f16(x); }

// A weight of each type with host storage, and its dequantised value w(r, i).
struct TestWeight {
  LinearWeight lw;
  std::vector<uint8_t> data, scales, zeros, bias;
  std::vector<double> dense;  // [out, in]
};

TestWeight make_weight(WeightType type, int64_t out, int64_t in, int group, bool mins = false) {
  TestWeight t;
  t.lw.name = std::string("test.") + weight_type_name(type);
  t.lw.type = type, t.lw.out = out, t.lw.in = in, t.lw.group_size = group;
  t.dense.assign(size_t(out * in), 0.0);
  std::uniform_int_distribution<int> byte(0, 255), code8(-127, 127);
  std::uniform_real_distribution<float> sc(0.005f, 0.05f), zr(0.0f, 15.0f);
  const int64_t ng = group > 0 ? in / group : 0;
  auto push16 = [](std::vector<uint8_t>& dst, uint16_t h) {
    dst.push_back(uint8_t(h & 0xFF)), dst.push_back(uint8_t(h >> 8));
  };
  if (is_float_type(type)) {
    const std::vector<float> w = randn(size_t(out * in), 0.1f);
    for (size_t k = 0; k < w.size(); ++k) {
      if (type == WeightType::F32) {
        uint8_t b[4];
        std::memcpy(b, &w[k], 4);
        t.data.insert(t.data.end(), b, b + 4);
        t.dense[k] = w[k];
      } else if (type == WeightType::F16) {
        push16(t.data, f16(w[k]));
        t.dense[k] = f16_to_f32(f16(w[k]));
      } else {
        push16(t.data, f32_to_bf16(w[k]));
        t.dense[k] = bf16_to_f32(f32_to_bf16(w[k]));
      }
    }
    const DType dt = type == WeightType::F32 ? DType::F32
                     : type == WeightType::F16 ? DType::F16 : DType::BF16;
    t.lw.weight = view(dt, {out, in}, t.data.data(), t.data.size());
  } else if (type == WeightType::Int8) {
    t.data.resize(size_t(out * in));
    for (auto& b : t.data) b = uint8_t(int8_t(code8(rng)));
    t.lw.weight = view(DType::I8, {out, in}, t.data.data(), t.data.size());
    if (group == 0) {
      for (int64_t r = 0; r < out; ++r) {
        const float s = sc(rng);
        uint8_t b[4];
        std::memcpy(b, &s, 4);
        t.scales.insert(t.scales.end(), b, b + 4);
        for (int64_t i = 0; i < in; ++i)
          t.dense[size_t(r * in + i)] = double(int8_t(t.data[size_t(r * in + i)])) * s;
      }
      t.lw.scales = view(DType::F32, {out}, t.scales.data(), t.scales.size());
    } else {
      std::vector<float> s(size_t(out * ng));
      for (float& x : s) x = f16_to_f32(f16(sc(rng))), push16(t.scales, f16(x));
      for (int64_t r = 0; r < out; ++r)
        for (int64_t i = 0; i < in; ++i)
          t.dense[size_t(r * in + i)] =
              double(int8_t(t.data[size_t(r * in + i)])) * s[size_t(r * ng + i / group)];
      t.lw.scales = view(DType::F16, {out, ng}, t.scales.data(), t.scales.size());
    }
  } else {
    t.data.resize(size_t(out * in / 2));
    for (auto& b : t.data) b = uint8_t(byte(rng));
    t.lw.weight = view(DType::U8, {out, in / 2}, t.data.data(), t.data.size());
    std::vector<float> s(size_t(out * ng)), z(size_t(out * ng));
    for (float& x : s) x = f16_to_f32(f16(sc(rng))), push16(t.scales, f16(x));
    t.lw.scales = view(DType::F16, {out, ng}, t.scales.data(), t.scales.size());
    if (type == WeightType::Int4) {
      for (float& x : z) {
        x = mins ? f16_to_f32(f16(-8 * sc(rng))) : f16_to_f32(f16(zr(rng)));
        push16(t.zeros, f16(x));
      }
      (mins ? t.lw.mins : t.lw.zeros) = view(DType::F16, {out, ng}, t.zeros.data(), t.zeros.size());
    }
    static const double nf4[16] = {-1.0, -0.6961928009986877, -0.5250730514526367,
                                   -0.39491748809814453, -0.28444138169288635,
                                   -0.18477343022823334, -0.09105003625154495, 0.0,
                                   0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                                   0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                                   0.7229568362236023, 1.0};
    for (int64_t r = 0; r < out; ++r)
      for (int64_t i = 0; i < in; ++i) {
        const uint8_t b = t.data[size_t(r * (in / 2) + (i / 32) * 16 + (i % 32) % 16)];
        const int code = (i % 32) < 16 ? (b & 15) : (b >> 4);
        const size_t g = size_t(r * ng + i / group);
        double w;
        if (type == WeightType::Nf4) w = nf4[code] * s[g];
        else if (mins) w = code * double(s[g]) + z[g];
        else w = (code - double(z[g])) * s[g];
        t.dense[size_t(r * in + i)] = w;
      }
  }
  const std::vector<float> b = randn(size_t(out), 0.1f);
  t.bias.resize(b.size() * 4);
  std::memcpy(t.bias.data(), b.data(), t.bias.size());
  t.lw.bias = view(DType::F32, {out}, t.bias.data(), t.bias.size());
  return t;
}

}  // namespace

TEST(linear_matches_the_dequantised_weight_for_every_type_and_path) {
  Gpu g;
  struct Case { WeightType t; int group; bool mins; int64_t out, in; };
  // in = 256: one K split; in = 1024 with few output tiles: split-K partial sums; in = 48:
  // rows that are not whole 32-input pieces (the element-wise GEMM; as f32 they are whole
  // 16-byte pieces, so M <= 8 still takes the GEMV).
  using W = WeightType;
  const Case cases[] = {{W::F32, 0, false, 96, 256},   {W::F16, 0, false, 96, 256},
                        {W::BF16, 0, false, 96, 256},  {W::Int8, 0, false, 96, 256},
                        {W::Int8, 32, false, 96, 256}, {W::Nf4, 64, false, 96, 256},
                        {W::Int4, 32, false, 96, 256}, {W::Int4, 64, true, 96, 256},
                        {W::BF16, 0, false, 80, 1024}, {W::Int4, 64, false, 80, 1024},
                        {W::F32, 0, false, 40, 48}};
  for (const Case& c : cases) {
    const int64_t out = c.out, in = c.in;
    TestWeight tw = make_weight(c.t, out, in, c.group, c.mins);
    auto w = g.dev->prepare_linear(tw.lw);
    for (int64_t M : {1, 3, 8, 9, 70}) {
      const std::vector<float> x = randn(size_t(M * in));
      float* dx = g.up(x);
      float* dy = g.zeros(size_t(M * out));
      g.dev->linear(*w, dx, M, dy);
      const std::vector<float> y = g.down(dy, size_t(M * out));
      double max_err = 0, max_ref = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < out; ++r) {
          double ref = 0;
          for (int64_t i = 0; i < in; ++i)
            ref += tw.dense[size_t(r * in + i)] * x[size_t(m * in + i)];
          float bias;
          std::memcpy(&bias, tw.bias.data() + 4 * r, 4);
          ref += bias;
          max_err = std::max(max_err, std::fabs(ref - y[size_t(m * out + r)]));
          max_ref = std::max(max_ref, std::fabs(ref));
        }
      // GEMV (M <= 8) accumulates f32 products of exact weights; the GEMM rounds operands to
      // bf16/f16 (8 or 11 mantissa bits) and accumulates in f32.
      const double tol = (M <= 8 ? 2e-5 : 1.5e-2) * (max_ref + 1.0);
      if (!(max_err <= tol))
        std::fprintf(stderr, "%s g%d [%lld, %lld] M=%lld: max error %g (max |y| %g)\n",
                     weight_type_name(c.t), c.group, (long long)out, (long long)in,
                     (long long)M, max_err, max_ref);
      CHECK(max_err <= tol);
    }
  }
}

namespace {

// max |y - reference| / (max |reference| + 1) of y = x @ W^T + b, the reference in double.
double linear_error(const TestWeight& tw, const std::vector<float>& x, int64_t M,
                    const std::vector<float>& y) {
  const int64_t out = tw.lw.out, in = tw.lw.in;
  double max_err = 0, max_ref = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t r = 0; r < out; ++r) {
      double ref = 0;
      for (int64_t i = 0; i < in; ++i) ref += tw.dense[size_t(r * in + i)] * x[size_t(m * in + i)];
      float bias;
      std::memcpy(&bias, tw.bias.data() + 4 * r, 4);
      ref += bias;
      max_err = std::max(max_err, std::fabs(ref - y[size_t(m * out + r)]));
      max_ref = std::max(max_ref, std::fabs(ref));
    }
  return max_err / (max_ref + 1.0);
}

std::vector<float> run_linear(Gpu& g, const BackendWeight& w, const std::vector<float>& x,
                              int64_t M, int64_t out) {
  float* dy = g.zeros(size_t(M * out));
  g.dev->linear(w, g.up(x), M, dy);
  return g.down(dy, size_t(M * out));
}

}  // namespace

TEST(gemv_matches_the_dequantised_weight_at_model_widths) {
  Gpu g;
  struct Case { WeightType t; int group; bool mins; int64_t out, in; };
  // 7B widths (3584, 18944), row counts that are not a multiple of the rows per warp, group
  // sizes whose pieces per group are not a power of two (96, 48), a weight of several CTAs.
  using W = WeightType;
  const Case cases[] = {{W::BF16, 0, false, 12, 3584},  {W::BF16, 0, false, 4, 18944},
                        {W::Int4, 64, false, 12, 3584}, {W::Int4, 64, false, 4, 18944},
                        {W::Nf4, 64, false, 12, 3584},  {W::Nf4, 64, false, 4, 18944},
                        {W::Int4, 128, true, 20, 3584}, {W::Int4, 96, false, 9, 2304},
                        {W::Int8, 0, false, 12, 3584},  {W::Int8, 48, false, 5, 1536},
                        {W::F16, 0, false, 7, 3584},    {W::F32, 0, false, 3, 1000},
                        {W::BF16, 0, false, 300, 1024}, {W::Int4, 32, false, 70, 2048}};
  for (const Case& c : cases) {
    TestWeight tw = make_weight(c.t, c.out, c.in, c.group, c.mins);
    auto w = g.dev->prepare_linear(tw.lw);
    for (int64_t M : {1, 2, 5, 8}) {
      const std::vector<float> x = randn(size_t(M * c.in));
      const double err = linear_error(tw, x, M, run_linear(g, *w, x, M, c.out));
      if (!(err <= 2e-5))
        std::fprintf(stderr, "%s g%d%s [%lld, %lld] M=%lld: relative error %g\n",
                     weight_type_name(c.t), c.group, c.mins ? " mins" : "", (long long)c.out,
                     (long long)c.in, (long long)M, err);
      CHECK(err <= 2e-5);
    }
  }
}

TEST(gemv_rows_do_not_depend_on_the_other_rows_of_the_batch) {
  Gpu g;
  struct Case { WeightType t; int group; bool mins; };
  using W = WeightType;
  const Case cases[] = {{W::F32, 0, false},  {W::F16, 0, false},  {W::BF16, 0, false},
                        {W::Int8, 0, false}, {W::Int8, 32, false}, {W::Nf4, 64, false},
                        {W::Int4, 64, false}, {W::Int4, 32, true}};
  const int64_t out = 20, in = 1024;
  for (const Case& c : cases) {
    TestWeight tw = make_weight(c.t, out, in, c.group, c.mins);
    auto w = g.dev->prepare_linear(tw.lw);
    const std::vector<float> x8 = randn(size_t(8 * in));
    const std::vector<float> y8 = run_linear(g, *w, x8, 8, out);
    CHECK(linear_error(tw, x8, 8, y8) <= 2e-5);
    // Every M of the GEMV, each with rows of the 8 in another order and company.
    for (int64_t M = 1; M <= 8; ++M) {
      std::vector<int64_t> rows;
      std::vector<float> x;
      for (int64_t j = 0; j < M; ++j) {
        rows.push_back((3 * j + M) % 8);
        x.insert(x.end(), x8.begin() + rows.back() * in, x8.begin() + (rows.back() + 1) * in);
      }
      const std::vector<float> y = run_linear(g, *w, x, M, out);
      for (int64_t j = 0; j < M; ++j) {
        const bool same = std::memcmp(&y[size_t(j * out)], &y8[size_t(rows[size_t(j)] * out)],
                                      size_t(out) * 4) == 0;
        if (!same)
          std::fprintf(stderr, "%s: row %lld at M=%lld differs from M=8\n",
                       weight_type_name(c.t), (long long)rows[size_t(j)], (long long)M);
        CHECK(same);
      }
    }
  }
}

TEST(linear_shared_is_bit_identical_to_separate_linear_calls) {
  Gpu g;
  struct Case { std::vector<WeightType> types; std::vector<int64_t> outs; int group; };
  using W = WeightType;
  // q/k/v and gate/up shapes; a mixed-type trio takes the fallback (one linear each).
  const Case cases[] = {{{W::BF16, W::BF16, W::BF16}, {24, 8, 8}, 0},
                        {{W::Int4, W::Int4, W::Int4}, {40, 8, 8}, 64},
                        {{W::Nf4, W::Nf4}, {36, 36}, 64},
                        {{W::Int8, W::Int8, W::Int8}, {16, 4, 4}, 32},
                        {{W::Int4, W::BF16, W::BF16}, {16, 8, 8}, 64}};
  const int64_t in = 512;
  for (const Case& c : cases) {
    const int n = int(c.types.size());
    std::vector<TestWeight> tws;
    std::vector<std::unique_ptr<BackendWeight>> ws;
    for (int i = 0; i < n; ++i) {
      const WeightType t = c.types[size_t(i)];
      tws.push_back(make_weight(t, c.outs[size_t(i)], in,
                                t == W::Int4 || t == W::Nf4 || t == W::Int8 ? c.group : 0));
      ws.push_back(g.dev->prepare_linear(tws.back().lw));
    }
    for (int64_t M : {1, 3, 8, 12}) {
      const std::vector<float> x = randn(size_t(M * in));
      float* dx = g.up(x);
      std::vector<const BackendWeight*> wp;
      std::vector<float*> ys;
      for (int i = 0; i < n; ++i) {
        wp.push_back(ws[size_t(i)].get());
        ys.push_back(g.zeros(size_t(M * c.outs[size_t(i)])));
      }
      g.dev->linear_shared(wp.data(), ys.data(), n, dx, M);
      for (int i = 0; i < n; ++i) {
        const int64_t out = c.outs[size_t(i)];
        const std::vector<float> shared = g.down(ys[size_t(i)], size_t(M * out));
        const std::vector<float> alone = run_linear(g, *ws[size_t(i)], x, M, out);
        const bool same = std::memcmp(shared.data(), alone.data(), shared.size() * 4) == 0;
        if (!same)
          std::fprintf(stderr, "linear_shared weight %d (%s) M=%lld differs from linear\n", i,
                       weight_type_name(c.types[size_t(i)]), (long long)M);
        CHECK(same);
        if (M <= 8) CHECK(linear_error(tws[size_t(i)], x, M, shared) <= 2e-5);
      }
    }
  }
}

TEST(gemm_matches_the_dequantised_weight_for_every_row_tile_and_split) {
  Gpu g;
  struct Case { WeightType t; int group; bool mins; };
  using W = WeightType;
  // Row tiles 16/32/64/128 (M 16, 17, 33, 64, 65, 200: one or several row tiles), a ragged and
  // an odd `out`, split-K at in = 3584, every weight type (int8 g16: two groups per k-step).
  const Case cases[] = {{W::BF16, 0, false}, {W::F16, 0, false},  {W::F32, 0, false},
                        {W::Int8, 0, false}, {W::Int8, 16, false}, {W::Nf4, 64, false},
                        {W::Int4, 64, false}, {W::Int4, 32, true}};
  struct Shape { int64_t out, M; };
  const Shape shapes[] = {{512, 16}, {512, 33}, {512, 64}, {97, 17}, {97, 65}, {97, 200}};
  const int64_t in = 3584;
  for (const Case& c : cases) {
    for (int64_t out : {int64_t(512), int64_t(97)}) {
      TestWeight tw = make_weight(c.t, out, in, c.group, c.mins);
      auto w = g.dev->prepare_linear(tw.lw);
      for (const Shape& sh : shapes) {
        if (sh.out != out) continue;
        const std::vector<float> x = randn(size_t(sh.M * in));
        const std::vector<float> y = run_linear(g, *w, x, sh.M, out);
        const double err = linear_error(tw, x, sh.M, y);
        if (!(err <= 1.5e-2))
          std::fprintf(stderr, "gemm %s g%d%s [%lld, %lld] M=%lld: relative error %g\n",
                       weight_type_name(c.t), c.group, c.mins ? " mins" : "", (long long)out,
                       (long long)in, (long long)sh.M, err);
        CHECK(err <= 1.5e-2);
        // The same M twice: the same kernels, split count and summation order.
        CHECK(run_linear(g, *w, x, sh.M, out) == y);
      }
    }
  }
}

TEST(gemm_takes_unaligned_activations_and_a_weight_without_bias) {
  Gpu g;
  const int64_t out = 256, in = 1024, M = 24;
  TestWeight tw = make_weight(WeightType::BF16, out, in, 0);
  tw.lw.bias = TensorView{};
  std::fill(tw.bias.begin(), tw.bias.end(), 0);  // linear_error's reference: no bias
  auto w = g.dev->prepare_linear(tw.lw);
  const std::vector<float> x = randn(size_t(M * in));
  CHECK(linear_error(tw, x, M, run_linear(g, *w, x, M, out)) <= 1.5e-2);
  // Activations one float past a 16-byte boundary: the element-wise fallback.
  std::vector<float> shifted(1, 0.0f);
  shifted.insert(shifted.end(), x.begin(), x.end());
  float* dx = g.up(shifted) + 1;
  float* dy = g.zeros(size_t(M * out));
  g.dev->linear(*w, dx, M, dy);
  CHECK(linear_error(tw, x, M, g.down(dy, size_t(M * out))) <= 1.5e-2);
}

TEST(elementwise_ops_match_the_cpu_backend) {
  Gpu g;
  const int64_t T = 5, D = 320, H = 4, hd = 80, F = 200;
  // rmsnorm
  const std::vector<float> x = randn(size_t(T * D)), wn = randn(size_t(D));
  const TensorView wv = view(DType::F32, {D}, wn.data(), wn.size() * 4);
  auto wc = g.cpu->prepare_vector(wv, "norm"), wd = g.dev->prepare_vector(wv, "norm");
  std::vector<float> yc(size_t(T * D));
  g.cpu->rmsnorm(x.data(), T, D, *wc, 1e-6f, yc.data());
  float* dy = g.zeros(size_t(T * D));
  g.dev->rmsnorm(g.up(x), T, D, *wd, 1e-6f, dy);
  const std::vector<float> yd = g.down(dy, size_t(T * D));
  for (size_t i = 0; i < yc.size(); ++i) CHECK_NEAR(yd[i], yc[i], 1e-5 * (1 + std::fabs(yc[i])));
  // rope
  std::vector<float> q = randn(size_t(T * H * hd)), inv(size_t(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i) inv[size_t(i)] = float(std::pow(10000.0, -2.0 * i / hd));
  const std::vector<int32_t> pos = {0, 1, 7, 300, 4000};
  float* dq = g.up(q);
  g.dev->rope(dq, T, H, hd, g.up(pos), g.up(inv));
  g.cpu->rope(q.data(), T, H, hd, pos.data(), inv.data());
  const std::vector<float> qd = g.down(dq, q.size());
  for (size_t i = 0; i < q.size(); ++i) CHECK_NEAR(qd[i], q[i], 2e-4 * (1 + std::fabs(q[i])));
  // silu_mul, add, gather_rows
  const std::vector<float> ga = randn(size_t(T * F)), upv = randn(size_t(T * F));
  std::vector<float> act(size_t(T * F));
  g.cpu->silu_mul(ga.data(), upv.data(), T, F, act.data());
  float* dact = g.zeros(act.size());
  g.dev->silu_mul(g.up(ga), g.up(upv), T, F, dact);
  const std::vector<float> actd = g.down(dact, act.size());
  for (size_t i = 0; i < act.size(); ++i)
    CHECK_NEAR(actd[i], act[i], 1e-5 * (1 + std::fabs(act[i])));
  float* dsum = g.up(ga);
  g.dev->add(dsum, g.up(upv), T * F);
  const std::vector<float> sum = g.down(dsum, ga.size());
  for (size_t i = 0; i < sum.size(); ++i) CHECK(sum[i] == ga[i] + upv[i]);
  const std::vector<int32_t> rows = {4, 0, 2};
  float* dg = g.zeros(size_t(3 * F));
  g.dev->gather_rows(g.up(ga), F, g.up(rows), 3, dg);
  const std::vector<float> gathered = g.down(dg, size_t(3 * F));
  for (int r = 0; r < 3; ++r)
    CHECK(std::memcmp(&gathered[size_t(r * F)], &ga[size_t(rows[size_t(r)] * F)],
                      size_t(F) * 4) == 0);
  // embedding from a bf16 table
  TestWeight table = make_weight(WeightType::BF16, 50, 64, 0);
  auto tc = g.cpu->prepare_linear(table.lw), td = g.dev->prepare_linear(table.lw);
  const std::vector<int32_t> toks = {3, 49, 0, 3};
  std::vector<float> ec(4 * 64);
  g.cpu->embedding(*tc, toks.data(), 4, ec.data());
  float* de = g.zeros(ec.size());
  g.dev->embedding(*td, g.up(toks), 4, de);
  CHECK(g.down(de, ec.size()) == ec);
}

TEST(rmsnorm_matches_the_cpu_backend_at_every_width_and_in_place) {
  // 3584 and 18944: one and five float4 per thread (the vectorised kernel); 322: not whole
  // float4s (the element kernel); 40000: more than 1024 x 8 float4 (the element kernel).
  Gpu g;
  for (int64_t D : {int64_t(3584), int64_t(18944), int64_t(322), int64_t(40000)}) {
    const int64_t T = 3;
    const std::vector<float> x = randn(size_t(T * D), 3.0f), wn = randn(size_t(D));
    const TensorView wv = view(DType::F32, {D}, wn.data(), wn.size() * 4);
    auto wc = g.cpu->prepare_vector(wv, "norm"), wd = g.dev->prepare_vector(wv, "norm");
    std::vector<float> yc(x.size());
    g.cpu->rmsnorm(x.data(), T, D, *wc, 1e-6f, yc.data());
    float* dx = g.up(x);
    float* dy = g.zeros(x.size());
    g.dev->rmsnorm(dx, T, D, *wd, 1e-6f, dy);
    const std::vector<float> yd = g.down(dy, x.size());
    g.dev->rmsnorm(dx, T, D, *wd, 1e-6f, dx);  // in place, as the final norm runs
    CHECK(g.down(dx, x.size()) == yd);
    double max_err = 0;
    for (size_t i = 0; i < yc.size(); ++i)
      max_err = std::max(max_err, std::fabs(double(yd[i]) - yc[i]) / (1 + std::fabs(yc[i])));
    if (!(max_err <= 1e-5)) std::fprintf(stderr, "rmsnorm D=%lld: %g\n", (long long)D, max_err);
    CHECK(max_err <= 1e-5);
  }
}

TEST(fused_pairs_give_the_bits_of_their_parts) {
  Gpu g;
  // add_rmsnorm == add then rmsnorm: vectorised rows (3584) and element rows (322), and in place.
  for (int64_t D : {int64_t(3584), int64_t(322)}) {
    const int64_t T = 4;
    const std::vector<float> x = randn(size_t(T * D)), y = randn(size_t(T * D)),
                             wn = randn(size_t(D));
    auto w = g.dev->prepare_vector(view(DType::F32, {D}, wn.data(), wn.size() * 4), "n");
    float *xa = g.up(x), *xb = g.up(x), *xc = g.up(x), *dy = g.up(y);
    float *ha = g.zeros(x.size()), *hb = g.zeros(x.size());
    g.dev->add(xa, dy, T * D);
    g.dev->rmsnorm(xa, T, D, *w, 1e-6f, ha);
    g.dev->add_rmsnorm(xb, dy, T, D, *w, 1e-6f, hb);
    g.dev->add_rmsnorm(xc, dy, T, D, *w, 1e-6f, xc);
    const std::vector<float> sum = g.down(xa, x.size()), normed = g.down(ha, x.size());
    CHECK(g.down(xb, x.size()) == sum);
    CHECK(g.down(hb, x.size()) == normed);
    CHECK(g.down(xc, x.size()) == normed);
  }
  // rope_kv_write == rope(q), rope(k), kv_write: Qwen2-7B heads, a skipped slot, both caches.
  for (DType dt : {DType::F32, DType::F16}) {
    const int64_t T = 5, H = 14, KVH = 2, hd = 128, bs = 16, nb = 8;
    const std::vector<int32_t> pos = {0, 1, 17, 40, 99}, slots = {3, -1, 17, 40, 99};
    std::vector<float> inv(size_t(hd / 2));
    for (int64_t i = 0; i < hd / 2; ++i) inv[size_t(i)] = float(std::pow(1e6, -2.0 * i / hd));
    const std::vector<float> q = randn(size_t(T * H * hd)), k = randn(size_t(T * KVH * hd)),
                             v = randn(size_t(T * KVH * hd));
    const size_t words = size_t(nb * KVH * bs * hd) * dtype_size(dt) / 4;
    cpu::PagedKV ca{g.zeros(words), g.zeros(words), nb, bs, KVH, hd, dt};
    cpu::PagedKV cb{g.zeros(words), g.zeros(words), nb, bs, KVH, hd, dt};
    float *qa = g.up(q), *ka = g.up(k), *qb = g.up(q), *kb = g.up(k), *dv = g.up(v);
    const int32_t *dpos = g.up(pos), *dslots = g.up(slots);
    const float* dinv = g.up(inv);
    g.dev->rope(qa, T, H, hd, dpos, dinv);
    g.dev->rope(ka, T, KVH, hd, dpos, dinv);
    g.dev->kv_write(ka, dv, T, dslots, ca);
    g.dev->rope_kv_write(qb, kb, dv, T, H, dpos, dinv, dslots, cb);
    CHECK(g.down(qb, q.size()) == g.down(qa, q.size()));
    CHECK(g.down(kb, k.size()) == g.down(ka, k.size()));
    CHECK(g.down(static_cast<float*>(cb.k), words) == g.down(static_cast<float*>(ca.k), words));
    CHECK(g.down(static_cast<float*>(cb.v), words) == g.down(static_cast<float*>(ca.v), words));
  }
}

namespace {

// A paged cache of `dt` filled through kv_write on both backends (the same bytes), then
// attention on both.
void check_attention(Gpu& g, int64_t n_heads, int64_t kv_heads, int64_t hd, int64_t bs,
                     const std::vector<std::vector<int32_t>>& tables,
                     const std::vector<int32_t>& seq_len, const std::vector<int32_t>& token_seq,
                     const std::vector<int32_t>& positions, DType dt = DType::F32) {
  const int64_t nb = 64;
  // The cache in 4-byte words (two halves a word in f16; every head_dim here is even).
  const size_t words = size_t(nb * kv_heads * bs * hd) * dtype_size(dt) / 4;
  std::vector<float> kc(words, 0.0f), vc(words, 0.0f);
  cpu::PagedKV hc{kc.data(), vc.data(), nb, bs, kv_heads, hd, dt};
  cpu::PagedKV dc{g.zeros(words), g.zeros(words), nb, bs, kv_heads, hd, dt};
  // Write every key of every sequence through kv_write.
  std::vector<int32_t> slots;
  for (size_t s = 0; s < tables.size(); ++s)
    for (int32_t p = 0; p < seq_len[s]; ++p)
      slots.push_back(tables[s][size_t(p / bs)] * int32_t(bs) + p % int32_t(bs));
  const int64_t n_keys = int64_t(slots.size());
  const std::vector<float> k = randn(size_t(n_keys * kv_heads * hd)),
                           v = randn(size_t(n_keys * kv_heads * hd));
  g.cpu->kv_write(k.data(), v.data(), n_keys, slots.data(), hc);
  g.dev->kv_write(g.up(k), g.up(v), n_keys, g.up(slots), dc);
  const std::vector<float> dk = g.down(static_cast<float*>(dc.k), words),
                           dv = g.down(static_cast<float*>(dc.v), words);
  CHECK(std::memcmp(dk.data(), kc.data(), words * 4) == 0);
  CHECK(std::memcmp(dv.data(), vc.data(), words * 4) == 0);

  int64_t max_blocks = 0;
  for (const auto& t : tables) max_blocks = std::max(max_blocks, int64_t(t.size()));
  std::vector<int32_t> bt(tables.size() * size_t(max_blocks), -1);
  for (size_t s = 0; s < tables.size(); ++s)
    std::copy(tables[s].begin(), tables[s].end(), bt.begin() + int64_t(s) * max_blocks);
  const int64_t T = int64_t(token_seq.size());
  const std::vector<float> q = randn(size_t(T * n_heads * hd));
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> oc(q.size());
  g.cpu->paged_attention(q.data(), n_heads, hc,
                         cpu::AttentionBatch{T, token_seq.data(), positions.data(), bt.data(),
                                             max_blocks},
                         scale, oc.data());
  float* od = g.zeros(q.size());
  g.dev->paged_attention(g.up(q), n_heads, dc,
                         cpu::AttentionBatch{T, g.up(token_seq), g.up(positions), g.up(bt),
                                             max_blocks},
                         scale, od);
  const std::vector<float> o = g.down(od, q.size());
  double max_err = 0;
  for (size_t i = 0; i < o.size(); ++i)
    max_err = std::max(max_err, double(std::fabs(o[i] - oc[i])));
  if (!(max_err < 1e-4)) std::fprintf(stderr, "attention max error %g\n", max_err);
  CHECK(max_err < 1e-4);
}

}  // namespace

TEST(paged_attention_matches_the_cpu_backend_for_decode_prefill_and_mixed_batches) {
  Gpu g;
  // Decode: three sequences of different lengths, GQA 8 query heads over 2 kv heads.
  check_attention(g, 8, 2, 64, 16, {{3, 9, 1}, {5}, {7, 2, 8, 4, 6}}, {40, 9, 77},
                  {0, 1, 2}, {39, 8, 76});
  // Prefill chunk of 90 rows (tiled path) after 10 cached keys, plus two decode rows.
  std::vector<int32_t> seq, pos;
  for (int p = 10; p < 100; ++p) seq.push_back(0), pos.push_back(p);
  seq.push_back(1), pos.push_back(20);
  seq.push_back(2), pos.push_back(3);
  check_attention(g, 8, 2, 64, 16, {{10, 11, 12, 13, 14, 15, 16}, {20, 21}, {30}}, {100, 21, 4},
                  seq, pos);
  // Head dim below a warp, one query head per kv head, long context (many key splits).
  std::vector<int32_t> long_table;
  for (int b = 0; b < 60; ++b) long_table.push_back(int32_t(63 - b));
  check_attention(g, 4, 4, 8, 4, {long_table}, {239}, {0}, {238});
  // Seven query heads per kv head (Qwen2.5-7B's ratio), head_dim 128.
  check_attention(g, 14, 2, 128, 16, {{1, 2}, {3}}, {20, 16}, {0, 1}, {19, 15});
  // An f16 cache: kv_write rounds as the CPU does (the same bytes), and attention reads it.
  check_attention(g, 8, 2, 64, 16, {{3, 9, 1}, {5}, {7, 2, 8, 4, 6}}, {40, 9, 77},
                  {0, 1, 2}, {39, 8, 76}, DType::F16);
  check_attention(g, 8, 2, 64, 16, {{10, 11, 12, 13, 14, 15, 16}, {20, 21}, {30}}, {100, 21, 4},
                  seq, pos, DType::F16);
}

TEST(a_captured_graph_replays_bit_identical_to_eager) {
  // M = 4: the GEMV; 16 and 64: the tensor-core GEMM (row tiles 16 and 64, split-K). The first
  // capture (M = 64 first) is the process's first GEMM: its shared-memory opt-in happens while
  // the stream is being captured.
  Gpu g;
  const int64_t D = 1024;
  TestWeight tw = make_weight(WeightType::Int4, D, D, 64);
  auto w = g.dev->prepare_linear(tw.lw);
  const std::vector<float> nw = randn(size_t(D));
  auto norm = g.dev->prepare_vector(view(DType::F32, {D}, nw.data(), nw.size() * 4), "n");
  for (int64_t M : {64, 16, 4}) {
    const std::vector<float> x0 = randn(size_t(M * D));
    float* x = g.up(x0);
    float* h = g.zeros(size_t(M * D));
    float* y = g.zeros(size_t(M * D));
    auto step = [&] {
      g.dev->rmsnorm(x, M, D, *norm, 1e-5f, h);
      g.dev->linear(*w, h, M, y);
      g.dev->silu_mul(y, h, M, D, h);
      g.dev->add(x, h, M * D);
    };
    auto graph = capture_step_graph(*g.dev, step);
    graph->replay();
    graph->replay();
    const std::vector<float> replayed = g.down(x, size_t(M * D));
    g.dev->to_device(x, x0.data(), x0.size() * 4);
    step();
    step();
    const std::vector<float> eager = g.down(x, size_t(M * D));
    const bool same = std::memcmp(eager.data(), replayed.data(), eager.size() * 4) == 0;
    if (!same) std::fprintf(stderr, "graph replay differs from eager at M=%lld\n", (long long)M);
    CHECK(same);
  }
}

TEST(bad_weights_and_shapes_are_refused_with_the_module_named) {
  Gpu g;
  TestWeight tw = make_weight(WeightType::Int4, 8, 64, 32);
  tw.lw.group_size = 48;
  CHECK_THROWS(InvalidCheckpoint, g.dev->prepare_linear(tw.lw), "test.int4");
  CHECK_THROWS(InvalidRequest, capture_step_graph(*g.cpu, [] {}), "CUDA backend");
}
