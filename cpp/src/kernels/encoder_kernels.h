// The ops a BERT encoder needs beyond the decoder's op set (kernels.h): LayerNorm with a bias,
// GELU (the exact, erf form BERT trains with) and bidirectional attention over packed
// variable-length rows. Each has a portable path and an AVX2/FMA path
// (norm_gelu_{portable,avx2}.cpp, encoder_attention_{portable,avx2}.cpp), chosen at run time
// like every other op; encoder_dispatch.cpp checks arguments once.
//
// CpuBackend's encoder ops (backend.h) are these; the encoder (model/bert_encoder.cpp) reaches
// them through the Backend. Rows never interact except inside one sequence's attention (and
// pooling), so an embedding does not depend on what else is in the batch.
#pragma once
#include <cstdint>

#include "medrt/kernels.h"
#include "medrt/thread_pool.h"

namespace medrt::cpu {

// y[t, :] = (x[t, :] - mean) / sqrt(var + eps) * w + b over the D features of row t
// (biased variance, as torch.nn.LayerNorm). w, b: [D] f32. y may be x.
void layernorm(const float* x, int64_t T, int64_t D, const float* w, const float* b, float eps,
               float* y);

// x[i] = x[i] * Phi(x[i]) = 0.5 x (1 + erf(x / sqrt 2)), in place.
void gelu_erf(float* x, int64_t n);

// Packed rows of several sequences: sequence s owns token rows [offsets[s], offsets[s + 1]).
struct PackedRows {
  int64_t n_seqs = 0;
  const int64_t* offsets = nullptr;  // [n_seqs + 1], offsets[0] = 0, non-decreasing
};

// Bidirectional (non-causal) multi-head attention: each query row attends to every key row of
// its own sequence. q, k, v: rows of `stride` floats, head h at columns [h*head_dim,
// (h+1)*head_dim) (q, k, v may be views into one fused [T, 3*H] buffer); out: [T, n_heads *
// head_dim] dense. softmax(q.k * scale) over the sequence's keys.
void encoder_attention(const float* q, const float* k, const float* v, int64_t stride,
                       int64_t n_heads, int64_t head_dim, const PackedRows& rows, float scale,
                       float* out, ThreadPool& pool);

// out[s, :] = mean over the rows [offsets[s], offsets[s + 1]) of x [., D], in token order,
// then divided by its L2 norm (summed in double, floored at 1e-12). Portable only: it is one
// pass over the last hidden states, not worth an ISA path.
void mean_pool_l2(const float* x, int64_t D, const int64_t* offsets, int64_t n_seqs,
                  float* out);

#define MEDRT_ENCODER_KERNEL_DECLS                                                              \
  void layernorm(const float* x, int64_t T, int64_t D, const float* w, const float* b,        \
                 float eps, float* y);                                                        \
  void gelu_erf(float* x, int64_t n);                                                         \
  void encoder_attention_rows(const float* q, const float* k, const float* v, int64_t stride, \
                              int64_t head_dim, int64_t q_begin, int64_t q_end,                \
                              int64_t k_begin, int64_t k_end, int64_t head, float scale,      \
                              float* scores, float* out, int64_t out_stride);

// encoder_attention_rows: query rows [q_begin, q_end) of one head over key rows
// [k_begin, k_end); `scores` holds k_end - k_begin floats of scratch.
namespace portable {
MEDRT_ENCODER_KERNEL_DECLS
}
#if MEDRT_PORTABLE_ONLY
namespace avx2 = portable;  // not an x86 build: see kernels_impl.h
#else
namespace avx2 {
MEDRT_ENCODER_KERNEL_DECLS
}
#endif

#undef MEDRT_ENCODER_KERNEL_DECLS

}  // namespace medrt::cpu
