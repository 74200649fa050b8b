// Error handling for CUDA runtime calls: a failed call becomes a medrt error naming the call
// (out of memory: CapacityError with the size asked for), never an abort.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace medrt::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line);

// Throws after a kernel launch that failed to launch (bad configuration); does not wait.
void check_launch(const char* kernel);

}  // namespace medrt::cuda

#define MEDRT_CUDA_CHECK(call)                                                     \
  do {                                                                             \
    const cudaError_t medrt_err_ = (call);                                         \
    if (medrt_err_ != cudaSuccess)                                                 \
      ::medrt::cuda::throw_cuda_error(medrt_err_, #call, __FILE__, __LINE__);      \
  } while (0)
