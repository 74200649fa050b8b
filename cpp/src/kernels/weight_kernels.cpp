// The traits table (weight_kernels.h): one entry per weight type and instruction set.
#include "kernels/weight_kernels.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/kernels_impl.h"
#include "kernels/quant_kernels.h"
#include "medrt/error.h"

namespace medrt::cpu {

void AlignedBytes::Free::operator()(uint8_t* p) const noexcept { std::free(p); }

void AlignedBytes::allocate(size_t n) {
  const size_t padded = (n + 63) / 64 * 64;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, padded ? padded : 64));
  if (!p) throw CapacityError("out of memory repacking a weight of " + std::to_string(n) + " bytes");
  std::memset(p, 0, padded ? padded : 64);
  data.reset(p);
  size = n;
}

namespace {

// Float weights: read in place by the f32/f16/bf16 GEMM of kernels.h, which already keeps the
// determinism contract across its small-M and large-M regimes.
void pack_float(const LinearWeight& w, PackedLinear& p) { p.weight = w.weight; }

void float_linear(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  cpu::linear(x, M, w.in, w.weight, w.bias.empty() ? nullptr : &w.bias_view, y, pool);
}

void float_row(const PackedLinear& w, int64_t r, float* out) {
  const size_t row_bytes = size_t(w.in) * dtype_size(w.weight.dtype);
  const void* src = static_cast<const char*>(w.weight.data) + size_t(r) * row_bytes;
  switch (w.weight.dtype) {
    case DType::F32: std::memcpy(out, src, size_t(w.in) * sizeof(float)); return;
    case DType::F16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < w.in; ++i) out[i] = f16_to_f32(h[i]);
      return;
    }
    case DType::BF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < w.in; ++i) out[i] = bf16_to_f32(h[i]);
      return;
    }
    default: throw Error("float_row: not a float weight");
  }
}

constexpr WeightKernels kFloat{"float", ActFormat::F32, pack_float, float_linear, float_linear,
                               INT64_MAX, float_row};

}  // namespace

const WeightKernels* weight_kernels(WeightType type, Isa isa) {
  switch (type) {
    case WeightType::F32: return &kFloat;  // the float GEMM dispatches on the ISA itself
    case WeightType::F16:
    case WeightType::BF16: {
      const WeightKernels* half = half_weight_kernels(isa);
      return half ? half : &kFloat;
    }
    case WeightType::Int8:
    case WeightType::Nf4:
    case WeightType::Int4:
    case WeightType::Int6: return quant::quant_weight_kernels(type, isa);
  }
  return nullptr;
}

PackedLinear pack_linear(const LinearWeight& w, ActPrecision act) {
  PackedLinear p;
  p.type = w.type;
  p.act = act;
  p.out = w.out;
  p.in = w.in;
  p.group_size = w.group_size;
  p.kernels = weight_kernels(w.type, active_isa());
  if (!p.kernels)
    throw InvalidCheckpoint("'" + w.name + "': no CPU kernel reads weight type " +
                            weight_type_name(w.type) + " on " + isa_name(active_isa()));
  if (w.has_bias()) {
    if (w.bias.numel() != w.out)
      throw InvalidCheckpoint("'" + w.name + "': bias " + w.bias.shape_str() + " does not match " +
                              std::to_string(w.out) + " outputs");
    p.bias.resize(size_t(w.out));
    switch (w.bias.dtype) {
      case DType::F32: std::memcpy(p.bias.data(), w.bias.data, size_t(w.out) * 4); break;
      case DType::F16:
        for (int64_t i = 0; i < w.out; ++i)
          p.bias[size_t(i)] = f16_to_f32(static_cast<const uint16_t*>(w.bias.data)[i]);
        break;
      case DType::BF16:
        for (int64_t i = 0; i < w.out; ++i)
          p.bias[size_t(i)] = bf16_to_f32(static_cast<const uint16_t*>(w.bias.data)[i]);
        break;
      default:
        throw InvalidCheckpoint("'" + w.name + "': bias is " + dtype_name(w.bias.dtype) +
                                "; expected F32, F16 or BF16");
    }
    p.bias_view.dtype = DType::F32;
    p.bias_view.shape = {w.out};
    p.bias_view.data = p.bias.data();  // a moved vector keeps its buffer, so this stays valid
    p.bias_view.nbytes = p.bias.size() * sizeof(float);
  }
  p.kernels->pack(w, p);
  return p;
}

void linear(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  if (M <= 0 || w.out == 0) return;
  const WeightKernels& k = *w.kernels;
  (M <= k.decode_max_rows ? k.decode : k.prefill)(w, x, M, y, pool);
}

void linear_shared(const PackedLinear* const* ws, float* const* ys, int n, const float* x,
                   int64_t M, ThreadPool& pool) {
  bool shared = n > 1 && n <= kMaxShared && M > 0;
  for (int i = 0; i < n && shared; ++i)
    shared = ws[i]->kernels->rowgroups != nullptr && ws[i]->act == ws[0]->act &&
             ws[i]->in == ws[0]->in && ws[i]->out > 0;
  if (shared) return quant::quant_linear_shared(ws, ys, n, x, M, pool);
  for (int i = 0; i < n; ++i) linear(*ws[i], x, M, ys[i], pool);
}

}  // namespace medrt::cpu
