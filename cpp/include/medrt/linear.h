// A linear layer's weight as the checkpoint stores it: a weight type plus its tensors. The
// decoder holds every projection (and the embedding table and LM head) as a LinearWeight; a
// backend turns it into its own form (Backend::prepare_linear: repacked for the CPU kernels,
// uploaded to a GPU). A new weight type adds an enum value, a loader entry
// (model/linear_loader.cpp) and kernel files; the decoder does not change.
//
// Math of each type (docs/quantized-format.md is the spec; r = output row, i = input index,
// g = i / group_size):
//   F32 / F16 / BF16  w[r, i] = weight[r, i]
//   Int8              w[r, i] = codes[r, i] * scales[r]          (group_size 0: one f32 scale
//                                                                 per row, medrt's int8)
//                     w[r, i] = codes[r, i] * scales[r, g]       (group_size > 0: f16 scales,
//                                                                 GGUF Q8_0 with g = 32)
//   Nf4               w[r, i] = NF4[codes[r, i]] * scales[r, g]
//   Int4              w[r, i] = (codes[r, i] - zeros[r, g]) * scales[r, g]   (zeros given)
//                     w[r, i] = codes[r, i] * scales[r, g] + mins[r, g]      (mins given:
//                                                                 GGUF Q4_1; Q4_0 is zeros = 8)
//   Int6              w[r, i] = (codes[r, i] - 32) * scales[r, g]  (codes 0..63; format 3)
// 4-bit codes are packed two per byte in 32-input chunks (byte j of a chunk: input j in the low
// nibble, input j + 16 in the high one), the GGUF block order. 6-bit codes are stored as such a
// 16-byte chunk of their low 4 bits followed by 8 bytes of their high 2 bits (24 bytes per 32
// inputs; the bit order is docs/quantized-format.md's).
#pragma once
#include <cstdint>
#include <string>

#include "medrt/tensor.h"

namespace medrt {

enum class WeightType : uint8_t { F32, F16, BF16, Int8, Nf4, Int4, Int6 };

const char* weight_type_name(WeightType t);  // "f32", "f16", "bf16", "int8", "nf4", "int4", "int6"
bool is_float_type(WeightType t);             // F32, F16, BF16: used as stored

// How the CPU kernels of quantized weights (int8, nf4, int4, int6) read their input rows,
// which they quantize once per call into blocks of 32 (docs/quantization.md, "Activation
// precision"). Float weights always read f32 activations.
//   Int8    one int8 code per input and an f32 scale per block, as llama.cpp's Q8 blocks:
//           the fastest, about 8 bits of precision per block;
//   Int8x2  two int8 terms per input: the code and the code of its rounding residual (x =
//           d1 q1 + d2 q2 up to amax / 127^2 / 2 per block), about 15 bits; the integer work
//           doubles. For scoring and for matching a float reference token for token.
enum class ActPrecision : uint8_t { Int8, Int8x2 };
const char* act_precision_name(ActPrecision p);  // "int8", "int8x2"
// The precision named `name`; throws InvalidRequest naming the value and the choices.
ActPrecision parse_act_precision(const std::string& name);

struct LinearWeight {
  std::string name;            // module name ("model.layers.3.mlp.down_proj"), for errors
  WeightType type = WeightType::F32;
  int64_t out = 0, in = 0;     // logical shape [out, in]
  int group_size = 0;          // inputs per scale group; 0: not grouped
  TensorView weight;           // float types: the weight; quantized types: the codes (qweight)
  TensorView scales, zeros, mins;  // quantized types; unused ones stay empty (data == nullptr)
  TensorView bias;             // optional [out], any float dtype

  bool has_bias() const { return bias.data != nullptr; }
  // Bytes of the stored weight (codes, scales, zeros, mins, bias) as read from the files.
  int64_t bytes() const;
};

// The float weight as a LinearWeight (type from its dtype; throws InvalidCheckpoint naming
// `name` for a dtype that is not F32/F16/BF16).
LinearWeight float_linear(const std::string& name, const TensorView& weight,
                          const TensorView* bias = nullptr);

}  // namespace medrt
