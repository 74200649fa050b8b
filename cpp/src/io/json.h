// A strict JSON reader (RFC 8259) for the small documents a checkpoint carries: config.json,
// safetensors headers, index files. Anything that is not well-formed JSON is rejected with the
// byte offset of the first problem; there is no lenient mode (comments, trailing commas, NaN).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace medrt::json {

enum class Type { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);  // "null", "boolean", "number", "string", "array", "object"

struct Value {
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  // Set when the number was written as an integer literal that fits int64: byte offsets and
  // shapes must not pass through a double.
  std::optional<int64_t> integer;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // document order; keys are unique

  bool is_null() const { return type == Type::Null; }
  // The member named `key`, or nullptr when absent (or when this is not an object).
  const Value* find(std::string_view key) const;
};

class ParseError : public std::runtime_error {
 public:
  ParseError(const std::string& what, size_t offset);
  size_t offset() const { return offset_; }

 private:
  size_t offset_;
};

// A parsed value takes ~120 bytes against 2 bytes of text ("0,"), so an untrusted document is
// limited in how many values it may hold: one per 8 bytes of text beyond the first 4096 values
// (real configs and safetensors headers hold one per 12 bytes or more) and never more than
// kMaxValues (about 250,000 tensors in a safetensors header; a few hundred MB parsed). A
// 100 MiB header of [0,0,...] is refused after kMaxValues values instead of taking gigabytes.
constexpr size_t kMaxValues = 2'000'000;
size_t max_values_for(size_t text_bytes);

// Parses exactly one JSON value surrounded by optional whitespace. Duplicate object keys,
// invalid UTF-8 and more than max_values_for(text.size()) values are errors. Throws ParseError.
Value parse(std::string_view text);

}  // namespace medrt::json
