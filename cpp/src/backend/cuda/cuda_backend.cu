#include "backend/cuda/cuda_backend.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/weight_decode.cuh"
#include "medrt/error.h"

namespace medrt::cuda {
namespace {

std::string size_str(size_t bytes) {
  return std::to_string(bytes) + " bytes (" + std::to_string(bytes >> 20) + " MiB)";
}

bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

void need(bool ok, const std::string& name, const std::string& what) {
  if (!ok) throw InvalidCheckpoint("'" + name + "': " + what);
}

// A float tensor of n elements as f32 (host), any float dtype.
std::vector<float> host_f32(const TensorView& t, int64_t n, const std::string& name,
                            const char* what) {
  need(t.data != nullptr && is_float_dtype(t.dtype) && t.numel() == n, name,
       std::string(what) + " must be a float tensor of " + std::to_string(n) + " elements, got " +
           dtype_name(t.dtype) + " " + t.shape_str());
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = t.f32_at(i);
  return out;
}

// A float tensor as f16 bits (exact when it is stored as F16, as the format specifies).
std::vector<uint16_t> host_f16(const TensorView& t, int64_t n, const std::string& name,
                               const char* what) {
  need(t.data != nullptr && is_float_dtype(t.dtype) && t.numel() == n, name,
       std::string(what) + " must be a float tensor of " + std::to_string(n) + " elements, got " +
           dtype_name(t.dtype) + " " + t.shape_str());
  std::vector<uint16_t> out(static_cast<size_t>(n));
  if (t.dtype == DType::F16) {
    std::memcpy(out.data(), t.data, size_t(n) * 2);
  } else {
    for (int64_t i = 0; i < n; ++i) out[size_t(i)] = f32_to_f16(t.f32_at(i));
  }
  return out;
}

}  // namespace

CudaWeight::~CudaWeight() {
  for (void* p : allocations) cudaFree(p);  // errors at teardown have nobody to report to
}

CudaBackend::CudaBackend(const CudaBackendOptions& options) : device_(options.device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
    throw InvalidRequest("no CUDA device: " + cuda_status().reason);
  if (device_ < 0 || device_ >= count)
    throw InvalidRequest("CUDA device " + std::to_string(device_) + " does not exist (" +
                         std::to_string(count) + " present)");
  make_current();
  cudaDeviceProp prop{};
  MEDRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  name_ = "cuda:" + std::to_string(device_) + " (" + prop.name + ")";
  MEDRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  // Keep freed blocks in the pool: a freed buffer is reused without going back to the driver.
  MEDRT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device_));
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  MEDRT_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &threshold));
  const int64_t scratch = std::max<int64_t>(options.attention_scratch_bytes, 0);
  attn_scratch_.floats = scratch / int64_t(sizeof(float));
  if (attn_scratch_.floats > 0)
    attn_scratch_.data = static_cast<float*>(alloc(size_t(attn_scratch_.floats) * sizeof(float)));
  gemm_scratch_.floats = std::max<int64_t>(options.gemm_scratch_bytes, 0) / int64_t(sizeof(float));
  if (gemm_scratch_.floats > 0)
    gemm_scratch_.data = static_cast<float*>(alloc(size_t(gemm_scratch_.floats) * sizeof(float)));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (attn_scratch_.data) cudaFreeAsync(attn_scratch_.data, stream_);
  if (gemm_scratch_.data) cudaFreeAsync(gemm_scratch_.data, stream_);
  cudaStreamSynchronize(stream_);
  cudaStreamDestroy(stream_);
}

void CudaBackend::make_current() const { MEDRT_CUDA_CHECK(cudaSetDevice(device_)); }

void* CudaBackend::alloc(size_t bytes) {
  make_current();
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, bytes, stream_);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error state of the runtime
    throw CapacityError(name_ + ": out of device memory allocating " + size_str(bytes));
  }
  MEDRT_CUDA_CHECK(e);
  return p;
}

void CudaBackend::free(void* p) noexcept {
  if (!p) return;
  cudaSetDevice(device_);
  cudaFreeAsync(p, stream_);
}

void CudaBackend::to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  make_current();
  MEDRT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  make_current();
  MEDRT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  MEDRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::synchronize() {
  make_current();
  MEDRT_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

namespace {

// Uploads `bytes` from host to a new device allocation owned by `cw`.
template <typename T>
const T* upload(CudaWeight& cw, const void* src, size_t bytes, const std::string& name) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw CapacityError("out of device memory uploading '" + name + "' (" + size_str(bytes) + ")");
  }
  MEDRT_CUDA_CHECK(e);
  cw.allocations.push_back(p);
  MEDRT_CUDA_CHECK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
  cw.bytes += int64_t(bytes);
  return static_cast<const T*>(p);
}

}  // namespace

std::unique_ptr<BackendWeight> CudaBackend::prepare_linear(const LinearWeight& w) {
  make_current();
  auto cw = std::make_unique<CudaWeight>();
  cw->type = w.type;
  cw->rows = w.out;
  cw->cols = w.in;
  WeightView& v = cw->view;
  v.type = w.type, v.out = w.out, v.in = w.in, v.group_size = w.group_size;
  need(w.out > 0 && w.in > 0, w.name, "empty shape");
  need(w.type != WeightType::Int6, w.name,
       "int6 weights have no CUDA kernel yet; run this model on the CPU backend");
  const bool four_bit = w.type == WeightType::Nf4 || w.type == WeightType::Int4;
  if (four_bit) {
    need(w.in % 32 == 0, w.name,
         "4-bit weights need in % 32 == 0, got in = " + std::to_string(w.in));
    need(w.group_size > 0 && w.group_size % 32 == 0 && w.in % w.group_size == 0, w.name,
         "4-bit group size must be a multiple of 32 dividing in, got " +
             std::to_string(w.group_size));
  }
  if (w.type == WeightType::Int8 && w.group_size > 0)
    need(w.group_size % 16 == 0 && w.in % w.group_size == 0, w.name,
         "int8 group size must be a multiple of 16 dividing in, got " +
             std::to_string(w.group_size));
  const size_t data_bytes = size_t(w.out) * size_t(row_bytes(w.type, w.in));
  need(w.weight.data != nullptr && w.weight.nbytes == data_bytes, w.name,
       "weight holds " + std::to_string(w.weight.nbytes) + " bytes, expected " +
           std::to_string(data_bytes) + " for " + weight_type_name(w.type) + " [" +
           std::to_string(w.out) + ", " + std::to_string(w.in) + "]");
  v.data = upload<void>(*cw, w.weight.data, data_bytes, w.name);

  const int64_t n_groups = w.group_size > 0 ? w.out * (w.in / w.group_size) : 0;
  switch (w.type) {
    case WeightType::F32:
    case WeightType::F16:
    case WeightType::BF16: break;
    case WeightType::Int8:
      if (w.group_size == 0) {
        const auto s = host_f32(w.scales, w.out, w.name, "int8 scales");
        v.row_scales = upload<float>(*cw, s.data(), s.size() * 4, w.name);
      } else {
        const auto s = host_f16(w.scales, n_groups, w.name, "int8 group scales");
        v.scales = upload<__half>(*cw, s.data(), s.size() * 2, w.name);
      }
      break;
    case WeightType::Nf4: {
      const auto s = host_f16(w.scales, n_groups, w.name, "nf4 scales");
      v.scales = upload<__half>(*cw, s.data(), s.size() * 2, w.name);
      break;
    }
    case WeightType::Int4: {
      const bool mins = w.mins.data != nullptr;
      need(mins != (w.zeros.data != nullptr), w.name, "int4 needs exactly one of zeros and mins");
      const auto s = host_f16(w.scales, n_groups, w.name, "int4 scales");
      const auto z = host_f16(mins ? w.mins : w.zeros, n_groups, w.name,
                              mins ? "int4 mins" : "int4 zeros");
      // half2 per group: (scale, zero) or (scale, min)
      std::vector<uint16_t> inter(static_cast<size_t>(2 * n_groups));
      for (int64_t g = 0; g < n_groups; ++g) {
        inter[size_t(2 * g)] = s[size_t(g)];
        inter[size_t(2 * g + 1)] = z[size_t(g)];
      }
      v.params = upload<__half2>(*cw, inter.data(), inter.size() * 2, w.name);
      v.has_mins = mins;
      break;
    }
    case WeightType::Int6: break;  // refused above
  }
  if (w.has_bias()) {
    const auto b = host_f32(w.bias, w.out, w.name, "bias");
    v.bias = upload<float>(*cw, b.data(), b.size() * 4, w.name);
  }
  return cw;
}

std::unique_ptr<BackendWeight> CudaBackend::prepare_vector(const TensorView& t,
                                                           const std::string& name) {
  make_current();
  auto cw = std::make_unique<CudaWeight>();
  const auto f = host_f32(t, t.numel(), name, "vector");
  cw->type = WeightType::F32;
  cw->rows = 1;
  cw->cols = t.numel();
  WeightView& v = cw->view;
  v.type = WeightType::F32, v.out = 1, v.in = t.numel();
  v.data = upload<void>(*cw, f.data(), f.size() * 4, name);
  return cw;
}

namespace {
const WeightView& view_of(const BackendWeight& w) {
  return static_cast<const CudaWeight&>(w).view;
}
}  // namespace

void CudaBackend::embedding(const BackendWeight& table, const int32_t* tokens, int64_t T,
                            float* out) {
  make_current();
  cuda::embedding(view_of(table), tokens, T, out, stream_);
}

void CudaBackend::rmsnorm(const float* x, int64_t T, int64_t D, const BackendWeight& w,
                          float eps, float* y) {
  make_current();
  cuda::rmsnorm(x, T, D, static_cast<const float*>(view_of(w).data), eps, y, stream_);
}

void CudaBackend::linear(const BackendWeight& w, const float* x, int64_t M, float* y) {
  make_current();
  cuda::linear(view_of(w), x, M, y, gemm_scratch_, stream_);
}

void CudaBackend::linear_shared(const BackendWeight* const* ws, float* const* ys, int n,
                                const float* x, int64_t M) {
  make_current();
  if (n >= 1 && n <= kGemvMaxWeights) {
    WeightView views[kGemvMaxWeights];
    for (int i = 0; i < n; ++i) views[i] = view_of(*ws[i]);
    if (gemv_shared(views, ys, n, x, M, stream_)) return;
  }
  Backend::linear_shared(ws, ys, n, x, M);
}

void CudaBackend::rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim,
                       const int32_t* positions, const float* inv_freq) {
  make_current();
  cuda::rope(x, T, n_heads, head_dim, positions, inv_freq, stream_);
}

void CudaBackend::silu_mul(const float* gate, const float* up, int64_t T, int64_t F,
                           float* out) {
  make_current();
  cuda::silu_mul(gate, up, T, F, out, stream_);
}

void CudaBackend::add(float* x, const float* y, int64_t n) {
  make_current();
  cuda::add(x, y, n, stream_);
}

void CudaBackend::add_rmsnorm(float* x, const float* y, int64_t T, int64_t D,
                              const BackendWeight& w, float eps, float* h) {
  make_current();
  cuda::add_rmsnorm(x, y, T, D, static_cast<const float*>(view_of(w).data), eps, h, stream_);
}

void CudaBackend::rope_kv_write(float* q, float* k, const float* v, int64_t T, int64_t n_heads,
                                const int32_t* positions, const float* inv_freq,
                                const int32_t* slot_mapping, const cpu::PagedKV& cache) {
  make_current();
  cuda::rope_kv_write(q, k, v, T, n_heads, positions, inv_freq, slot_mapping, cache, stream_);
}

void CudaBackend::gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n,
                              float* dst) {
  make_current();
  cuda::gather_rows(src, width, rows, n, dst, stream_);
}

void CudaBackend::kv_write(const float* k, const float* v, int64_t T,
                           const int32_t* slot_mapping, const cpu::PagedKV& cache) {
  make_current();
  cuda::kv_write(k, v, T, slot_mapping, cache, stream_);
}

void CudaBackend::paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                                  const cpu::AttentionBatch& batch, float scale, float* out) {
  make_current();
  cuda::paged_attention(q, n_heads, cache, batch, scale, out, attn_scratch_, stream_);
}

}  // namespace medrt::cuda
