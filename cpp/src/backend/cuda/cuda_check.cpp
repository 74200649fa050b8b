#include "backend/cuda/cuda_check.h"

#include <string>

#include "medrt/error.h"

namespace medrt::cuda {

void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") in " + call + " at " + file + ":" +
                    std::to_string(line);
  if (e == cudaErrorMemoryAllocation) throw CapacityError(msg);
  throw Error(msg);
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda_error(e, kernel, "kernel launch", 0);
}

}  // namespace medrt::cuda
