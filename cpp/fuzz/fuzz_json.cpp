// The JSON reader on arbitrary bytes: a Value or a ParseError, nothing else.
#include <cstdint>
#include <string_view>

#include "io/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    medrt::json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const medrt::json::ParseError&) {
  }
  return 0;
}
