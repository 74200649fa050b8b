// The backend interface: the op set the decoder and the encoder are written over, on the
// backend's own memory.
// CpuBackend (backend/cpu/) implements it with the kernels of kernels.h; a CUDA backend
// implements the same ops on device memory and one stream. The model calls nothing else, so
// it is written once, and each layer can live on a different backend (layer-to-device
// mapping: the hidden state is copied across when consecutive layers differ).
//
// Rules every backend keeps, so that a GPU backend can capture a decode step as a graph:
//  - ops are queued in call order on the backend's stream and may run asynchronously;
//  - ops never allocate, free or synchronise; every pointer they take is backend memory
//    (alloc()), including index arrays (tokens, positions, slots, block tables);
//  - weights are prepared once at load (prepare_linear / prepare_vector) and never change.
// Activations are f32. The determinism contract of kernels.h holds per backend: a row's result
// never depends on the other rows of the batch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "medrt/kernels.h"
#include "medrt/linear.h"
#include "medrt/thread_pool.h"

namespace medrt {

// A weight as one backend holds it (repacked for the CPU kernels, uploaded to a GPU).
class BackendWeight {
 public:
  virtual ~BackendWeight() = default;
  WeightType type = WeightType::F32;
  int64_t rows = 0, cols = 0;  // [out, in] for a linear; [1, n] for a vector
  int64_t bytes = 0;           // memory it takes on the backend
  // True when it holds its own copy (repacked, uploaded) and never reads the stored tensors
  // again, so the loader may drop their pages from memory (Checkpoint::release_pages).
  bool holds_copy = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // "cpu (avx512)", "cuda:0 (NVIDIA H200)"
  virtual bool is_host() const = 0;      // its memory is host memory (pointers usable by C++)

  // --- memory -------------------------------------------------------------------------------
  // Throws CapacityError naming the size when the backend is out of memory.
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) noexcept = 0;
  virtual void to_device(void* dst, const void* host_src, size_t bytes) = 0;  // queued
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;    // waits for it
  virtual void synchronize() = 0;  // waits for every op queued so far

  // --- weights (at load) --------------------------------------------------------------------
  // Throws InvalidCheckpoint naming w.name when this backend has no kernel for its type.
  virtual std::unique_ptr<BackendWeight> prepare_linear(const LinearWeight& w) = 0;
  // A float vector (a norm weight) of any float dtype, held as f32.
  virtual std::unique_ptr<BackendWeight> prepare_vector(const TensorView& v,
                                                        const std::string& name) = 0;

  // --- ops ----------------------------------------------------------------------------------
  // out[t, :] = row tokens[t] of the table [V, D] (any linear weight type), as f32.
  virtual void embedding(const BackendWeight& table, const int32_t* tokens, int64_t T,
                         float* out) = 0;
  // y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w; y may be x.
  virtual void rmsnorm(const float* x, int64_t T, int64_t D, const BackendWeight& w, float eps,
                       float* y) = 0;
  // y[M, out] = x[M, in] @ W^T (+ the weight's bias).
  virtual void linear(const BackendWeight& w, const float* x, int64_t M, float* y) = 0;
  // ys[i] = linear(*ws[i], x) for n weights of one input (q/k/v, gate/up), each result exactly
  // what linear() gives. A backend may convert x once and run all n in one pass; this default
  // makes the n calls.
  virtual void linear_shared(const BackendWeight* const* ws, float* const* ys, int n,
                             const float* x, int64_t M) {
    for (int i = 0; i < n; ++i) linear(*ws[i], x, M, ys[i]);
  }
  // Rotate-half rotary embedding in place (kernels.h cpu::rope).
  virtual void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim,
                    const int32_t* positions, const float* inv_freq) = 0;
  // out[t, i] = silu(gate[t, i]) * up[t, i], all [T, F] dense.
  virtual void silu_mul(const float* gate, const float* up, int64_t T, int64_t F,
                        float* out) = 0;
  virtual void add(float* x, const float* y, int64_t n) = 0;  // x += y
  // dst[r, :] = src[rows[r], :] for r < n (rows of `width` floats).
  virtual void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n,
                           float* dst) = 0;
  virtual void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
                        const cpu::PagedKV& cache) = 0;
  virtual void paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                               const cpu::AttentionBatch& batch, float scale, float* out) = 0;

  // Fused pairs the decoder runs back to back, each exactly what its default composes (the
  // results are the same bits): a backend where every op is a kernel launch (CUDA) runs each
  // pair as one, saving launches per layer.
  // x += y, then h = rmsnorm(x) (the residual add, then the next norm); h may be x.
  virtual void add_rmsnorm(float* x, const float* y, int64_t T, int64_t D,
                           const BackendWeight& w, float eps, float* h) {
    add(x, y, T * D);
    rmsnorm(x, T, D, w, eps, h);
  }
  // RoPE of q [T, n_heads, hd] and k [T, kv_heads, hd] in place, then k and v into the cache
  // (kv_heads and hd are the cache's).
  virtual void rope_kv_write(float* q, float* k, const float* v, int64_t T, int64_t n_heads,
                             const int32_t* positions, const float* inv_freq,
                             const int32_t* slot_mapping, const cpu::PagedKV& cache) {
    rope(q, T, n_heads, cache.head_dim, positions, inv_freq);
    rope(k, T, cache.n_kv_heads, cache.head_dim, positions, inv_freq);
    kv_write(k, v, T, slot_mapping, cache);
  }

  // --- encoder ops (BERT, model/bert_encoder.cpp) -------------------------------------------
  // Pure like the rest, so that a backend says for each op what it does: the CUDA backend
  // answers them with an Error "not implemented on CUDA yet" (cuda_encoder_ops.cpp).
  // Rows of several sequences are packed: sequence s owns token rows [offsets[s],
  // offsets[s + 1]); offsets ([n_seqs + 1], offsets[0] = 0) is backend memory like any index.
  //
  // y[t, :] = (x[t, :] - mean) / sqrt(var + eps) * w + b (biased variance, as
  // torch.nn.LayerNorm); w, b from prepare_vector; y may be x.
  virtual void layernorm(const float* x, int64_t T, int64_t D, const BackendWeight& w,
                         const BackendWeight& b, float eps, float* y) = 0;
  // x[i] = 0.5 x (1 + erf(x / sqrt 2)) in place (the exact GELU BERT trains with).
  virtual void gelu(float* x, int64_t n) = 0;
  // Bidirectional attention: each query row attends to every key row of its own sequence.
  // q, k, v: rows of `stride` floats, head h at columns [h*head_dim, (h+1)*head_dim) (views
  // into one fused [T, 3H] buffer, say); out: [T, n_heads * head_dim] dense.
  virtual void encoder_attention(const float* q, const float* k, const float* v,
                                 int64_t stride, int64_t n_heads, int64_t head_dim,
                                 const int64_t* offsets, int64_t n_seqs, float scale,
                                 float* out) = 0;
  // out[s, :] = mean of x's rows of sequence s (in token order), divided by its L2 norm
  // (floored at 1e-12): sentence-transformers' Pooling(mean) + Normalize. x: [T, D].
  virtual void mean_pool_l2(const float* x, int64_t D, const int64_t* offsets, int64_t n_seqs,
                            float* out) = 0;
};

// The CPU backend over `pool` (which must outlive it), kernels for the ISA chosen at run time;
// `act`: how the kernels of quantized weights read activations (linear.h).
std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool,
                                          ActPrecision act = ActPrecision::Int8);

// Backend memory owned for its lifetime (persistent buffers keep their address).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& b, size_t bytes) : b_(&b), p_(bytes ? b.alloc(bytes) : nullptr), n_(bytes) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      b_ = o.b_, p_ = o.p_, n_ = o.n_;
      o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = void>
  T* get() const { return static_cast<T*>(p_); }
  size_t bytes() const { return n_; }
  void reset() {
    if (p_) b_->free(p_);
    p_ = nullptr, n_ = 0;
  }

 private:
  Backend* b_ = nullptr;
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace medrt
