// medrt/cuda.h with the CUDA backend built in: what the driver reports, and the backend.
#include <cuda_runtime.h>

#include <sstream>

#include "backend/cuda/cuda_backend.h"
#include "medrt/cuda.h"
#include "medrt/error.h"

#ifndef MEDRT_CUDA_ARCHS
#define MEDRT_CUDA_ARCHS ""
#endif

namespace medrt {
namespace {

// Does the build hold code a device of compute capability major.minor can run? SASS runs on
// the same major with an equal or higher minor; we also ship PTX for the newest arch.
bool arch_runs_on(const std::string& archs, int major, int minor) {
  std::stringstream ss(archs);
  std::string a;
  int best = -1;
  while (std::getline(ss, a, ',')) {
    const std::string digits = a.substr(0, a.find_first_not_of("0123456789"));
    if (digits.empty()) continue;
    const int sm = std::stoi(digits);
    if (sm / 10 == major && sm % 10 <= minor) return true;
    best = std::max(best, sm);
  }
  return best >= 0 && major * 10 + minor > best;  // PTX of the newest arch is JIT-compiled
}

}  // namespace

CudaStatus cuda_status() {
  CudaStatus s;
  s.built = true;
  s.archs = MEDRT_CUDA_ARCHS;
  cudaRuntimeGetVersion(&s.runtime_version);
  if (cudaDriverGetVersion(&s.driver_version) != cudaSuccess || s.driver_version == 0) {
    s.reason = "no NVIDIA driver found";
    return s;
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    s.reason = e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e)
                                : "no CUDA device";
    cudaGetLastError();
    return s;
  }
  if (s.driver_version < s.runtime_version) {
    s.reason = "the driver supports CUDA " + std::to_string(s.driver_version / 1000) + "." +
               std::to_string(s.driver_version % 1000 / 10) + ", this build needs " +
               std::to_string(s.runtime_version / 1000) + "." +
               std::to_string(s.runtime_version % 1000 / 10);
  }
  bool runnable = false;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    CudaDeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.cc_major = p.major, d.cc_minor = p.minor;
    d.total_memory = int64_t(p.totalGlobalMem);
    d.multiprocessors = p.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      d.free_memory = int64_t(free_b);
    cudaGetLastError();
    runnable = runnable || arch_runs_on(s.archs, p.major, p.minor);
    s.devices.push_back(d);
  }
  if (!s.reason.empty()) return s;
  if (!runnable) {
    s.reason = "no device of an architecture this build has code for (built for sm " + s.archs +
               ")";
    return s;
  }
  s.available = true;
  s.reason = "ok";
  return s;
}

bool cuda_available() { return cuda_status().available; }

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  const CudaStatus s = cuda_status();
  if (!s.available) throw InvalidRequest("CUDA backend unavailable: " + s.reason);
  return std::make_unique<cuda::CudaBackend>(options);
}

bool is_cuda_backend(const Backend& b) {
  return dynamic_cast<const cuda::CudaBackend*>(&b) != nullptr;
}

}  // namespace medrt
