// The `quantization` section of a medrt-quant config.json to module descriptions
// (model/quant_section.h): the modules or an InvalidCheckpoint (or the JSON reader's
// ParseError for text that is not JSON), nothing else. The Python validator has its own
// harness (tests/fuzz/fuzz_quant_section.py); this one covers the C++ reader the engine loads
// with.
#include <cstdint>
#include <string>

#include "io/json.h"
#include "medrt/error.h"
#include "model/quant_section.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  medrt::json::Value section;
  try {
    section = medrt::json::parse(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const medrt::json::ParseError&) {
    return 0;
  }
  try {
    const auto modules = medrt::model::parse_quant_section(section, "fuzz/config.json");
    // What LinearLoader and the packers rely on after a successful parse: a quantized module
    // has a positive shape, a group size that divides its input dimension, and tensors of
    // positive extent.
    for (const auto& [name, m] : modules) {
      if (!m.quantized()) continue;
      if (m.out <= 0 || m.in <= 0 || m.group_size < 0) __builtin_trap();
      if (m.group_size && m.in % m.group_size) __builtin_trap();
      for (const auto& spec : medrt::model::quant_tensor_specs(m))
        for (int64_t d : spec.shape)
          if (d <= 0) __builtin_trap();
    }
  } catch (const medrt::InvalidCheckpoint&) {
  }
  return 0;
}
