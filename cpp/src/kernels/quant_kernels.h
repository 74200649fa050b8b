// The quantized weight types in the traits table (weight_kernels.h): packing at load, the
// activation quantizer, and the table entries. Layouts and arithmetic: quant_layout.h.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/quant_layout.h"
#include "kernels/weight_kernels.h"

namespace medrt::cpu::quant {

// The entry for a quantized `type` on `isa` (Avx512 uses the VNNI kernels when the CPU has
// AVX512-VNNI, else the AVX2 ones); nullptr for a float type.
const WeightKernels* quant_weight_kernels(WeightType type, Isa isa);

// True when the CPU runs AVX512-VNNI (vpdpbusd); cpu_features.cpp.
bool cpu_has_avx512_vnni();

// WeightKernels::pack and ::dequant_row of every quantized type (quant_pack.cpp).
void pack_quant(const LinearWeight& w, PackedLinear& p);
void quant_dequant_row(const PackedLinear& p, int64_t r, float* out);

// The Layout in p.packed's header.
const Layout& layout_of(const PackedLinear& p);

// A quantized type's row-group kernel for one ISA, as WeightKernels::rowgroups names it.
struct RowGroupKernel {
  RowGroupFn fn;
};

// linear_shared (weight_kernels.h) for 1 <= n <= kMaxShared quantized weights of one input
// with one activation precision and one `in`: x is quantized once and every row group of every
// weight runs in one parallel region.
void quant_linear_shared(const PackedLinear* const* ws, float* const* ys, int n, const float* x,
                         int64_t M, ThreadPool& pool);

// Quantized activations owned by the caller (ActFormat::Q8Block32).
struct ActBuffer {
  std::vector<int8_t> codes;
  std::vector<ActBlock> blocks;
  Act view(int64_t nb) const { return {codes.data(), blocks.data(), nb}; }
};

// Quantizes rows [0, M) of x [M, K] into nb = ceil(K / 32) blocks per row (quant_layout.h);
// rows are split over the pool when there are many.
void quantize_act(const float* x, int64_t M, int64_t K, ActBuffer& out, ThreadPool& pool);

// ActPrecision::Int8x2: 2M quantized rows, row 2m the codes of x's row m as quantize_act gives
// them, row 2m+1 the codes of its rounding residual r = x - d * q (per block, in f32), so that
// a kernel's results for the two rows sum to x's row within amax / 127^2 / 2 per input.
void quantize_act_split(const float* x, int64_t M, int64_t K, ActBuffer& out, ThreadPool& pool);

}  // namespace medrt::cpu::quant
