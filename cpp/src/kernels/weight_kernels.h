// The weight-type traits table of the CPU kernels (as ggml's type traits): for each weight type
// and instruction set, how to repack a LinearWeight at load, the decode kernel (few rows), the
// prefill kernel (many rows), the row dequantizer the embedding lookup uses, and the activation
// format the kernels consume. CpuBackend (backend/cpu/cpu_backend.cpp) is the only caller; a new
// type adds a table entry and its kernel files (quant_<family>_<isa>.cpp), nothing else.
//
// Determinism (kernels.h): decode and prefill of one type and ISA give bit-identical output
// rows, and a row never depends on the others, so a request's tokens do not depend on the batch.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "medrt/kernels.h"
#include "medrt/linear.h"
#include "medrt/thread_pool.h"

namespace medrt::cpu {

namespace quant {
struct RowGroupKernel;  // quant_kernels.h
}

// What the kernels of a type read as input rows.
enum class ActFormat {
  F32,        // the f32 activations as they are
  Q8Block32,  // rows quantized once per call to int8 blocks of 32 (one f32 scale per block)
};

// 64-byte aligned bytes owned by a packed weight.
struct AlignedBytes {
  struct Free {
    void operator()(uint8_t* p) const noexcept;
  };
  std::unique_ptr<uint8_t[], Free> data;
  size_t size = 0;
  void allocate(size_t n);  // zero-filled
  uint8_t* get() const { return data.get(); }
};

struct WeightKernels;

// A linear weight as the CPU kernels use it. f32 weights (and f16/bf16 on the portable ISA) are
// read in place from the mapping (`weight`); quantized weights, and f16/bf16 on AVX2 and
// AVX-512, are repacked into `packed`, in the layout documented in the type's layout header
// (quant_layout.h, half_layout.h; the checkpoint files stay as written).
struct PackedLinear {
  WeightType type = WeightType::F32;
  int64_t out = 0, in = 0;
  int group_size = 0;
  TensorView weight;         // float types: the stored weight [out, in]
  AlignedBytes packed;       // repacked weights (empty when `weight` is read in place)
  std::vector<float> bias;   // [out] as f32, or empty
  TensorView bias_view;      // `bias` as the float GEMM takes it (built once, at pack time)
  ActPrecision act = ActPrecision::Int8;  // ActFormat::Q8Block32 kernels: one or two terms
  const WeightKernels* kernels = nullptr;
};

using LinearKernelFn = void (*)(const PackedLinear& w, const float* x, int64_t M, float* y,
                                ThreadPool& pool);

struct WeightKernels {
  const char* name;
  ActFormat act;
  // Fills p.packed (and anything else it needs) from w; throws InvalidCheckpoint naming w.name.
  void (*pack)(const LinearWeight& w, PackedLinear& p);
  // y[M, out] = x[M, in] @ W^T + bias; decode when M <= decode_max_rows, else prefill.
  LinearKernelFn decode;
  LinearKernelFn prefill;
  int64_t decode_max_rows;
  // out[0, in) = row r of W dequantized to f32 (the embedding lookup).
  void (*dequant_row)(const PackedLinear& w, int64_t r, float* out);
  // ActFormat::Q8Block32 kernels: the type's row-group kernel (quant_kernels.h), so that
  // weights of one input can share a quantization and a parallel region; else nullptr.
  const quant::RowGroupKernel* rowgroups = nullptr;
};

// The kernels for `type` on `isa`, or nullptr when that ISA has none for it.
const WeightKernels* weight_kernels(WeightType type, Isa isa);

// f16/bf16 weights repacked into row groups (half_layout.h) on AVX2 and AVX-512; nullptr on the
// portable ISA, which reads them as stored (half_pack.cpp).
const WeightKernels* half_weight_kernels(Isa isa);

// Repacks w for the active ISA (bias converted to f32); throws InvalidCheckpoint naming w.name
// when no kernel reads its type. `act`: how a quantized type's kernels read activations (float
// types ignore it).
PackedLinear pack_linear(const LinearWeight& w, ActPrecision act = ActPrecision::Int8);

// y = x @ W^T + bias through the table entry of w.
void linear(const PackedLinear& w, const float* x, int64_t M, float* y, ThreadPool& pool);

// ys[i] = linear(*ws[i], x) for n weights of one input, bit for bit. Up to kMaxShared quantized
// weights of one activation precision share one quantization of x and one parallel region
// (quant_linear.cpp); the others run one by one.
inline constexpr int kMaxShared = 8;  // q/k/v, gate/up: the callers' arrays live in the frame
void linear_shared(const PackedLinear* const* ws, float* const* ys, int n, const float* x,
                   int64_t M, ThreadPool& pool);

}  // namespace medrt::cpu
