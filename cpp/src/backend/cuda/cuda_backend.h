// CudaBackend: the Backend interface (backend.h) on one CUDA device and one stream.
//  - memory: alloc/free go through the stream-ordered allocator (cudaMallocAsync on a pool
//    that keeps freed memory for reuse), so freeing persistent buffers does not synchronise;
//  - weights are uploaded once at prepare time (cuda_weight.h), synchronously;
//  - ops launch kernels on the stream and never allocate or wait, so a decode step can be
//    captured as a CUDA graph (capture_step_graph in medrt/cuda.h);
//  - the only scratch (split-KV partials of attention, split-K partials of the GEMM) is
//    allocated at construction.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/launch.h"
#include "medrt/backend.h"
#include "medrt/cuda.h"

namespace medrt::cuda {

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return name_; }
  bool is_host() const override { return false; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

  void* alloc(size_t bytes) override;
  void free(void* p) noexcept override;
  void to_device(void* dst, const void* host_src, size_t bytes) override;
  void to_host(void* host_dst, const void* src, size_t bytes) override;
  void synchronize() override;

  std::unique_ptr<BackendWeight> prepare_linear(const LinearWeight& w) override;
  std::unique_ptr<BackendWeight> prepare_vector(const TensorView& v,
                                                const std::string& name) override;

  void embedding(const BackendWeight& table, const int32_t* tokens, int64_t T,
                 float* out) override;
  void rmsnorm(const float* x, int64_t T, int64_t D, const BackendWeight& w, float eps,
               float* y) override;
  void linear(const BackendWeight& w, const float* x, int64_t M, float* y) override;
  // q/k/v or gate/up in one GEMV launch when M <= kGemvMaxRows and all take the GEMV with one
  // type and input width (each result bit-identical to linear()); else one linear() each.
  void linear_shared(const BackendWeight* const* ws, float* const* ys, int n, const float* x,
                     int64_t M) override;
  void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
            const float* inv_freq) override;
  void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, float* out) override;
  void add(float* x, const float* y, int64_t n) override;
  void add_rmsnorm(float* x, const float* y, int64_t T, int64_t D, const BackendWeight& w,
                   float eps, float* h) override;
  void rope_kv_write(float* q, float* k, const float* v, int64_t T, int64_t n_heads,
                     const int32_t* positions, const float* inv_freq,
                     const int32_t* slot_mapping, const cpu::PagedKV& cache) override;
  void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n,
                   float* dst) override;
  void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
                const cpu::PagedKV& cache) override;
  void paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                       const cpu::AttentionBatch& batch, float scale, float* out) override;

  // The encoder ops throw "not implemented on CUDA yet" (cuda_encoder_ops.cpp): the encoder
  // runs on the CPU backend until they have kernels.
  void layernorm(const float* x, int64_t T, int64_t D, const BackendWeight& w,
                 const BackendWeight& b, float eps, float* y) override;
  void gelu(float* x, int64_t n) override;
  void encoder_attention(const float* q, const float* k, const float* v, int64_t stride,
                         int64_t n_heads, int64_t head_dim, const int64_t* offsets,
                         int64_t n_seqs, float scale, float* out) override;
  void mean_pool_l2(const float* x, int64_t D, const int64_t* offsets, int64_t n_seqs,
                    float* out) override;

 private:
  void make_current() const;
  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  AttentionScratch attn_scratch_;
  GemmScratch gemm_scratch_;
};

}  // namespace medrt::cuda
