#include "medrt/linear.h"

#include "medrt/error.h"

namespace medrt {

const char* weight_type_name(WeightType t) {
  switch (t) {
    case WeightType::F32: return "f32";
    case WeightType::F16: return "f16";
    case WeightType::BF16: return "bf16";
    case WeightType::Int8: return "int8";
    case WeightType::Nf4: return "nf4";
    case WeightType::Int4: return "int4";
    case WeightType::Int6: return "int6";
  }
  return "?";
}

bool is_float_type(WeightType t) {
  return t == WeightType::F32 || t == WeightType::F16 || t == WeightType::BF16;
}

const char* act_precision_name(ActPrecision p) {
  return p == ActPrecision::Int8x2 ? "int8x2" : "int8";
}

ActPrecision parse_act_precision(const std::string& name) {
  if (name == "int8") return ActPrecision::Int8;
  if (name == "int8x2") return ActPrecision::Int8x2;
  throw InvalidRequest("activation precision '" + name + "' is not one of: int8, int8x2");
}

int64_t LinearWeight::bytes() const {
  return int64_t(weight.nbytes + scales.nbytes + zeros.nbytes + mins.nbytes + bias.nbytes);
}

LinearWeight float_linear(const std::string& name, const TensorView& weight,
                          const TensorView* bias) {
  LinearWeight w;
  w.name = name;
  switch (weight.dtype) {
    case DType::F32: w.type = WeightType::F32; break;
    case DType::F16: w.type = WeightType::F16; break;
    case DType::BF16: w.type = WeightType::BF16; break;
    default:
      throw InvalidCheckpoint("'" + name + "' is " + dtype_name(weight.dtype) +
                              "; a float weight must be F32, F16 or BF16");
  }
  if (weight.shape.size() != 2)
    throw InvalidCheckpoint("'" + name + "' must be 2-d, got " + weight.shape_str());
  w.out = weight.shape[0];
  w.in = weight.shape[1];
  w.weight = weight;
  if (bias) w.bias = *bias;
  return w;
}

}  // namespace medrt
