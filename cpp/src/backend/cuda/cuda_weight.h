// A weight on the device, as the kernels read it. Uploaded once at load by
// CudaBackend::prepare_linear, in the checkpoint's own layout (linear.h), except that the f16
// group scale and zero (or min) of an int4 group are interleaved into one half2 so a kernel
// fetches both with one load:
//   F32/F16/BF16  data: [out, in] as stored
//   Int8          data: int8 codes [out, in]; row_scales: f32 [out] (group_size 0) or
//                 scales: f16 [out, in/g] (group_size > 0)
//   Nf4           data: packed codes [out, in/2] (32-input chunks, linear.h);
//                 scales: f16 [out, in/g]
//   Int4          data: packed codes; params: half2 (scale, zero) or (scale, min) [out, in/g]
//   bias          f32 [out] or null
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "medrt/backend.h"

namespace medrt::cuda {

struct WeightView {
  WeightType type = WeightType::F32;
  int64_t out = 0, in = 0;
  int group_size = 0;
  bool has_mins = false;
  const void* data = nullptr;
  const float* row_scales = nullptr;
  const __half* scales = nullptr;
  const __half2* params = nullptr;
  const float* bias = nullptr;

  __host__ __device__ int64_t groups_per_row() const {
    return group_size > 0 ? in / group_size : 0;
  }
};

// Owns the device allocations of one weight (freed with it).
class CudaWeight : public BackendWeight {
 public:
  ~CudaWeight() override;
  WeightView view;
  std::vector<void*> allocations;
};

}  // namespace medrt::cuda
