// The encoder ops of backend.h on CUDA: none has a kernel yet, so each refuses by name rather
// than the interface giving them a silent default. The BERT encoder runs on CpuBackend.
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "medrt/error.h"

namespace medrt::cuda {
namespace {

[[noreturn]] void not_yet(const std::string& backend, const char* op) {
  throw Error(std::string(op) + ": not implemented on CUDA yet (" + backend +
              "); run the encoder on the CPU backend");
}

}  // namespace

void CudaBackend::layernorm(const float*, int64_t, int64_t, const BackendWeight&,
                            const BackendWeight&, float, float*) {
  not_yet(name_, "layernorm");
}

void CudaBackend::gelu(float*, int64_t) { not_yet(name_, "gelu"); }

void CudaBackend::encoder_attention(const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, const int64_t*, int64_t, float, float*) {
  not_yet(name_, "encoder_attention");
}

void CudaBackend::mean_pool_l2(const float*, int64_t, const int64_t*, int64_t, float*) {
  not_yet(name_, "mean_pool_l2");
}

}  // namespace medrt::cuda
