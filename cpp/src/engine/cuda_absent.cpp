// medrt/cuda.h in a build without the CUDA backend (MEDRT_CUDA=OFF or no nvcc): the status
// says so and the constructors refuse with that reason. With MEDRT_HAVE_CUDA the real
// definitions live in backend/cuda/ and this file is empty.
#ifndef MEDRT_HAVE_CUDA
#include "medrt/cuda.h"
#include "medrt/error.h"

namespace medrt {
namespace {
constexpr const char* kNotBuilt =
    "this medrt was built without the CUDA backend (rebuild with -DMEDRT_CUDA=ON; docs/cuda.md)";
}

CudaStatus cuda_status() {
  CudaStatus s;
  s.reason = kNotBuilt;
  return s;
}

bool cuda_available() { return false; }

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  throw InvalidRequest(kNotBuilt);
}

bool is_cuda_backend(const Backend&) { return false; }

std::unique_ptr<StepGraph> capture_step_graph(Backend&, const std::function<void()>&) {
  throw InvalidRequest(kNotBuilt);
}

}  // namespace medrt
#endif
