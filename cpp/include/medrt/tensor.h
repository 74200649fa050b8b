// A non-owning view of a tensor: weights point into the safetensors mmap, so loading
// copies nothing whose dtype the kernels read directly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "medrt/dtype.h"

namespace medrt {

struct TensorView {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major; for a linear weight: [out_features, in_features]
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape.at(size_t(i)); }
  std::string shape_str() const;  // "[576, 1536]"
  // Element i (row-major) as f32, for a tensor of dtype F32, F16 or BF16 (0 for other dtypes:
  // callers check the dtype first). Reads unaligned data too.
  float f32_at(int64_t i) const;
};

}  // namespace medrt
