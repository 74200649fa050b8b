// CPU kernels: the op set the decoder is written over. Each op has a portable C++ path and an
// AVX2/FMA path (files *_portable.cpp / *_avx2.cpp), chosen at run time from CPUID; set_isa()
// forces one (tests run both and compare). Activations are f32; weights are used as stored
// (f32, f16 or bf16, row-major [out, in] as Hugging Face stores linear layers).
//
// Determinism contract (ARCHITECTURE.md "Reproducible"): the value of any output row depends
// only on that row's inputs, never on M (how many rows are in the batch), on how rows or
// columns are split across threads, or on which tile a row falls into. Every reduction runs in
// one fixed order per ISA.
#pragma once
#include <cstdint>

#include "medrt/tensor.h"
#include "medrt/thread_pool.h"

namespace medrt::cpu {

// Avx512 runs linear() with 16-lane kernels (AVX-512F/BW/VL) and every other op on the AVX2
// kernels; each ISA has its own fixed summation order, so results differ across ISAs in the
// last bits but never within one.
enum class Isa { Portable, Avx2, Avx512 };
Isa detected_isa();        // best ISA this CPU supports (MEDRT_ISA=portable|avx2|avx512 caps it)
Isa active_isa();          // ISA the kernels use now
void set_isa(Isa isa);     // throws InvalidRequest if the CPU lacks it
const char* isa_name(Isa isa);

// y[M, N] = x[M, K] @ W^T (+ bias[N]); W: [N, K] in f32/f16/bf16; bias: [N] any float dtype or
// nullptr.
void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const TensorView* bias,
            float* y, ThreadPool& pool);

// out[t, :] = row tokens[t] of table [V, D] converted to f32. Throws InvalidRequest for a
// token id outside [0, V).
void embedding(const int32_t* tokens, int64_t T, const TensorView& table, float* out);

// y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w   (w: [D], any float dtype). y may be x.
void rmsnorm(const float* x, int64_t T, int64_t D, const TensorView& w, float eps, float* y);

// Rotary embedding in place, rotate-half (GPT-NeoX / Hugging Face) convention:
// x: [T, n_heads, head_dim]; angle for pair i at position p is p * inv_freq[i], i < head_dim/2.
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq);

// out[t, i] = silu(gate[t, i]) * up[t, i]; gate and up rows have stride `stride`, out is dense.
void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, int64_t stride,
              float* out);

// x[i] += y[i]
void add_inplace(float* x, const float* y, int64_t n);

// Paged KV cache of one layer: K and V each [num_blocks, n_kv_heads, block_size, head_dim] of
// `dtype`: F32, or F16 (half the bytes an attention step reads; kv_write rounds each value to
// the nearest half, ties to even, and attention computes in f32 from there).
struct PagedKV {
  void* k = nullptr;
  void* v = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  DType dtype = DType::F32;
};

// The element types a KV cache can hold (F32, F16); InvalidRequest names any other.
void check_kv_dtype(DType dtype);

// Writes k, v [T, n_kv_heads, head_dim] into the cache at slot_mapping[t] = block * block_size
// + offset (slot < 0: skip the token).
void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
              const PagedKV& cache);

// Which sequence each token row belongs to and where that sequence's blocks are.
struct AttentionBatch {
  int64_t T = 0;                         // token rows
  const int32_t* token_seq = nullptr;    // [T]: sequence index of each row
  const int32_t* positions = nullptr;    // [T]: the row attends to keys 0..positions[t]
  const int32_t* block_tables = nullptr; // [n_seqs, max_blocks]: physical block ids
  int64_t max_blocks = 0;
};

// Causal attention of queries q [T, n_heads, head_dim] over the paged cache, flash-style
// (online softmax over blocks, no [T, context] score matrix). Grouped-query attention:
// query head h reads kv head h / (n_heads / n_kv_heads). out: [T, n_heads, head_dim].
void paged_attention(const float* q, int64_t n_heads, const PagedKV& cache,
                     const AttentionBatch& batch, float scale, float* out, ThreadPool& pool);

}  // namespace medrt::cpu
