// GPU tests exit with 77 (ctest's SKIP_RETURN_CODE for test_cuda_*) before any test runs when
// no usable CUDA device is present, saying why.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "medrt/cuda.h"

namespace medrt_test {
inline const bool kCudaPresent = [] {
  const medrt::CudaStatus s = medrt::cuda_status();
  if (!s.available) {
    std::printf("SKIP: no usable CUDA device (%s)\n", s.reason.c_str());
    std::exit(77);
  }
  return true;
}();
}  // namespace medrt_test
