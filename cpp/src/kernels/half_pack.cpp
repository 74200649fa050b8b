// f16 and bf16 linear weights on AVX2 and AVX-512: repacked at load into the row groups of
// half_layout.h, and their entries in the traits table (weight_kernels.h). The portable ISA
// reads them as stored (weight_kernels.cpp).
#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/half_layout.h"
#include "kernels/kernels_impl.h"
#include "kernels/weight_kernels.h"
#include "medrt/error.h"

namespace medrt::cpu {

#if !MEDRT_PORTABLE_ONLY
namespace {

int64_t chunks_of(int64_t in) { return (in + kHalfChunk - 1) / kHalfChunk; }

template <int R>
void pack_half(const LinearWeight& w, PackedLinear& p) {
  const TensorView& t = w.weight;
  if ((t.dtype != DType::F16 && t.dtype != DType::BF16) || t.shape.size() != 2 ||
      t.shape[0] != w.out || t.shape[1] != w.in || t.data == nullptr)
    throw InvalidCheckpoint("'" + w.name + "': weight " + t.shape_str() + " " +
                            dtype_name(t.dtype) + " is not a [" + std::to_string(w.out) + ", " +
                            std::to_string(w.in) + "] f16/bf16 tensor");
  const int64_t chunks = chunks_of(w.in), groups = (w.out + R - 1) / R;
  p.weight = t;  // kept for inspection; the kernels read only `packed`
  p.packed.allocate(size_t(groups * chunks * R * kHalfChunk) * sizeof(uint16_t));
  auto* dst = reinterpret_cast<uint16_t*>(p.packed.get());
  const auto* src = static_cast<const uint16_t*>(t.data);
  for (int64_t n = 0; n < w.out; ++n) {
    const uint16_t* row = src + n * w.in;
    uint16_t* group = dst + (n / R) * chunks * R * kHalfChunk + (n % R) * kHalfChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t k = c * kHalfChunk, len = std::min<int64_t>(kHalfChunk, w.in - k);
      std::memcpy(group + c * R * kHalfChunk, row + k, size_t(len) * sizeof(uint16_t));
    }
  }
}

template <int R>
void half_row(const PackedLinear& p, int64_t r, float* out) {
  const auto* packed = reinterpret_cast<const uint16_t*>(p.packed.get());
  const int64_t chunks = chunks_of(p.in);
  const uint16_t* group = packed + (r / R) * chunks * R * kHalfChunk + (r % R) * kHalfChunk;
  const bool bf16 = p.weight.dtype == DType::BF16;
  for (int64_t k = 0; k < p.in; ++k) {
    const uint16_t h = group[(k / kHalfChunk) * R * kHalfChunk + k % kHalfChunk];
    out[k] = bf16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

const float* bias_of(const PackedLinear& w) { return w.bias.empty() ? nullptr : w.bias.data(); }

// in == 0: an empty sum, the bias alone (the kernels' k-blocking needs K > 0).
bool empty_sum(const PackedLinear& w, int64_t M, float* y) {
  if (w.in != 0) return false;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < w.out; ++n) y[m * w.out + n] = w.bias.empty() ? 0.0f : w.bias[size_t(n)];
  return true;
}

void linear_avx512(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  if (empty_sum(w, M, y)) return;
  avx512::linear_half_packed(x, M, w.in, reinterpret_cast<const uint16_t*>(w.packed.get()),
                             w.weight.dtype, w.out, bias_of(w), y, pool);
}

void linear_avx2(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool) {
  if (empty_sum(w, M, y)) return;
  avx2::linear_half_packed(x, M, w.in, reinterpret_cast<const uint16_t*>(w.packed.get()),
                           w.weight.dtype, w.out, bias_of(w), y, pool);
}

// Decode and prefill share one entry: the kernel picks its regime from M, as the stored-layout
// GEMM does, so a row's result is the same in both.
constexpr WeightKernels kHalfAvx512{"f16/bf16 rows16", ActFormat::F32,
                                    pack_half<kHalfRowsAvx512>, linear_avx512, linear_avx512,
                                    INT64_MAX, half_row<kHalfRowsAvx512>};
constexpr WeightKernels kHalfAvx2{"f16/bf16 rows8", ActFormat::F32, pack_half<kHalfRowsAvx2>,
                                  linear_avx2, linear_avx2, INT64_MAX, half_row<kHalfRowsAvx2>};

}  // namespace
#endif

const WeightKernels* half_weight_kernels(Isa isa) {
#if !MEDRT_PORTABLE_ONLY
  if (isa == Isa::Avx512) return &kHalfAvx512;
  if (isa == Isa::Avx2) return &kHalfAvx2;
#else
  (void)isa;
#endif
  return nullptr;
}

}  // namespace medrt::cpu
