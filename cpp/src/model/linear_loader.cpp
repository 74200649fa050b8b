#include "model/linear_loader.h"

#include "medrt/error.h"

namespace medrt::model {

LinearLoader::LinearLoader(const Checkpoint& ckpt) : ckpt_(ckpt) {}

LinearWeight LinearLoader::linear(const std::string& name, int64_t out, int64_t in,
                                  bool bias) const {
  const TensorView& w = ckpt_.get(name + ".weight", {out, in});
  const TensorView* b = bias ? &ckpt_.get(name + ".bias", {out}) : nullptr;
  if (w.dtype != DType::F32 && w.dtype != DType::F16 && w.dtype != DType::BF16)
    throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + name + ".weight' is " +
                            dtype_name(w.dtype) + "; medrt reads F32, F16 or BF16 weights");
  return float_linear(name, w, b);
}

TensorView LinearLoader::vector(const std::string& name, int64_t n) const {
  const TensorView& t = ckpt_.get(name + ".weight", {n});
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + name + ".weight' is " +
                            dtype_name(t.dtype) + "; medrt reads F32, F16 or BF16 weights");
  return t;
}

}  // namespace medrt::model
