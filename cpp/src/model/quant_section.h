// The `quantization` section of a medrt-quant config.json (docs/quantized-format.md): each
// module's weight type, group size and shape, checked with the rules of
// medrt_train.quant.format.validate (the Python reader), and the tensors each type stores.
// LinearLoader checks those tensors against the files; this part needs no tensor data.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/json.h"
#include "medrt/dtype.h"
#include "medrt/linear.h"

namespace medrt::model {

// Format versions this reader understands. Version 2 adds int8 with group scales (GGUF Q8_0)
// and int4 with `mins` instead of `zeros` (GGUF Q4_1); version 3 adds int6; older files read
// unchanged.
inline constexpr int64_t kQuantVersionMin = 1;
inline constexpr int64_t kQuantVersionMax = 3;

struct QuantModule {
  WeightType type = WeightType::F32;
  int group_size = 0;  // inputs per scale; 0: one scale per row (int8) or not quantized
  bool mins = false;   // int4 only: w = code * scale + min (else (code - zero) * scale)
  int64_t out = 0, in = 0;  // quantized types: the logical weight shape [out, in]
  bool quantized() const { return !is_float_type(type); }
};

// One stored tensor of a quantized module: `module.suffix`, its dtype and shape.
struct QuantTensorSpec {
  std::string suffix;  // "qweight", "scales", "zeros", "mins"
  DType dtype;
  std::vector<int64_t> shape;
};

// The tensors a quantized module stores (the table of docs/quantized-format.md).
std::vector<QuantTensorSpec> quant_tensor_specs(const QuantModule& m);

// Module name -> description, from the section's JSON. Throws InvalidCheckpoint prefixed with
// `where` (the config path) for a wrong format name or version, an empty module list, an
// unknown type, a group size the type does not take or that does not divide the input
// dimension, a missing or malformed shape, or a feature newer than the file's version; a
// module's error names the module.
std::map<std::string, QuantModule> parse_quant_section(const json::Value& section,
                                                       const std::string& where);

}  // namespace medrt::model
