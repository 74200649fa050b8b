// Reads each module's weight from a checkpoint as a LinearWeight of its stored type. For a
// plain Hugging Face directory every module is a float weight (`M.weight`); for a medrt-quant
// directory (docs/quantized-format.md) the `quantization` section of config.json says each
// module's type and which tensors hold it, and is validated up front with the rules of
// medrt_train.quant.format.validate, so a directory the engine cannot run is refused at load
// with the module named, never as a missing tensor later.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "medrt/checkpoint.h"
#include "medrt/linear.h"
#include "model/quant_section.h"

namespace medrt::model {

class LinearLoader {
 public:
  // Parses and validates the quantization section (if any) of ckpt.dir()/config.json: the
  // section's rules (quant_section.h), then every module's tensors (present, dtype and shape,
  // packed lengths) and that every tensor of the files belongs to a module. Throws
  // InvalidCheckpoint naming the module (or the unclaimed tensor).
  explicit LinearLoader(const Checkpoint& ckpt);

  bool quantized() const { return !modules_.empty(); }

  // The module `name` ("model.layers.0.self_attn.q_proj") of logical shape [out, in]; `bias`
  // says whether the architecture has one (then `name.bias` must exist). Quantized modules
  // come back as views of the stored codes, scales and zeros or mins (no copy, no repacking).
  LinearWeight linear(const std::string& name, int64_t out, int64_t in, bool bias) const;
  // A float vector module (a norm weight) of n elements.
  TensorView vector(const std::string& name, int64_t n) const;

  // Each module's description (empty for a plain Hugging Face directory).
  const std::map<std::string, QuantModule>& modules() const { return modules_; }

 private:
  const QuantModule* module(const std::string& name) const;  // throws when not listed
  void check_tensors();

  const Checkpoint& ckpt_;
  std::string config_path_;
  std::map<std::string, QuantModule> modules_;  // from the quantization section; empty: plain HF
};

}  // namespace medrt::model
