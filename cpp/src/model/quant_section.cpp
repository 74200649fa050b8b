#include "model/quant_section.h"

#include <algorithm>
#include <cctype>
#include <string_view>

#include "medrt/error.h"

namespace medrt::model {

namespace {

constexpr int kInt4Groups[] = {32, 64, 128};
constexpr int kNf4Group = 64;
constexpr int64_t kNibbleChunk = 32;  // 4- and 6-bit codes are packed per 32 inputs

bool one_of_int4_groups(int64_t g) {
  return std::find(std::begin(kInt4Groups), std::end(kInt4Groups), g) != std::end(kInt4Groups);
}

struct ModuleError {
  const std::string& where;
  const std::string& module;
  [[noreturn]] void operator()(const std::string& what) const {
    throw InvalidCheckpoint(where + ": quantization module " + module + ": " + what);
  }
};

// The type of one entry: "int4" with "group_size", or the spec form "int4-g64" (as the Python
// reader's parse_type accepts it); sets type and group_size.
void parse_type(const json::Value& entry, const ModuleError& fail, QuantModule& m) {
  const json::Value* type = entry.find("type");
  if (!type || type->type != json::Type::String) fail("entry needs a string 'type'");
  std::string spec;
  for (char c : type->string) spec += char(std::tolower(static_cast<unsigned char>(c)));
  std::string name = spec;
  int64_t group = 0;
  bool has_group = false;
  if (size_t dash = spec.find("-g"); dash != std::string::npos) {
    name = spec.substr(0, dash);
    std::string digits = spec.substr(dash + 2);
    if (digits.empty() || digits.size() > 6 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return std::isdigit(c); }))
      fail("bad weight type '" + type->string + "': expected e.g. int4-g64");
    group = std::stoll(digits);
    has_group = true;
  }
  if (const json::Value* g = entry.find("group_size"); g && !g->is_null()) {
    if (!g->integer || *g->integer <= 0) fail("'group_size' must be a positive integer");
    if (has_group && *g->integer != group)
      fail("weight type '" + type->string + "' contradicts group_size " +
           std::to_string(*g->integer));
    group = *g->integer;
    has_group = true;
  }
  const std::string g_str = std::to_string(group);
  if (name == "f32" || name == "f16" || name == "bf16") {
    m.type = name == "f32" ? WeightType::F32 : name == "f16" ? WeightType::F16 : WeightType::BF16;
    if (has_group) fail(name + " takes no group size (got " + g_str + ")");
  } else if (name == "int8") {
    m.type = WeightType::Int8;
    if (has_group && !one_of_int4_groups(group))
      fail("int8 group size " + g_str + " is not one of (32, 64, 128)");
  } else if (name == "nf4") {
    m.type = WeightType::Nf4;
    if (!has_group) fail("nf4 needs 'group_size' (64)");
    if (group != kNf4Group) fail("nf4 uses groups of 64, not " + g_str);
  } else if (name == "int4") {
    m.type = WeightType::Int4;
    if (!has_group) fail("int4 needs 'group_size' (32, 64 or 128)");
    if (!one_of_int4_groups(group))
      fail("int4 group size " + g_str + " is not one of (32, 64, 128)");
  } else if (name == "int6") {
    m.type = WeightType::Int6;
    if (!has_group) fail("int6 needs 'group_size' (32, 64 or 128)");
    if (!one_of_int4_groups(group))
      fail("int6 group size " + g_str + " is not one of (32, 64, 128)");
  } else {
    fail("unknown weight type '" + type->string +
         "': expected one of int8, nf4, int4[-g32|-g64|-g128], int6[-g32|-g64|-g128], f16, "
         "bf16, f32");
  }
  m.group_size = int(group);
}

// int4's offset: "zeros" (the default, format 1) or "mins" (format 2, GGUF Q4_1).
void parse_offset(const json::Value& entry, const ModuleError& fail, QuantModule& m) {
  const json::Value* offset = entry.find("offset");
  if (!offset || offset->is_null()) return;
  if (m.type != WeightType::Int4) fail("'offset' is only for int4");
  if (offset->type != json::Type::String ||
      (offset->string != "zeros" && offset->string != "mins"))
    fail("'offset' must be \"zeros\" or \"mins\"");
  m.mins = offset->string == "mins";
}

void parse_shape(const json::Value& entry, const ModuleError& fail, QuantModule& m) {
  const json::Value* shape = entry.find("shape");
  bool ok = shape && shape->type == json::Type::Array && shape->array.size() == 2;
  for (size_t i = 0; ok && i < 2; ++i) {
    const json::Value& d = shape->array[i];
    ok = d.integer && *d.integer > 0;
  }
  if (!ok) fail("'shape' must be [out, in]");
  m.out = *shape->array[0].integer;
  m.in = *shape->array[1].integer;
  if (m.group_size && m.in % m.group_size)
    fail("group size " + std::to_string(m.group_size) + " does not divide the input dimension " +
         std::to_string(m.in));
  if ((m.type == WeightType::Int4 || m.type == WeightType::Nf4 || m.type == WeightType::Int6) &&
      m.in % kNibbleChunk)
    fail("input dimension " + std::to_string(m.in) + " is not a multiple of 32");
}

}  // namespace

std::vector<QuantTensorSpec> quant_tensor_specs(const QuantModule& m) {
  if (m.type == WeightType::Int8) {
    if (m.group_size == 0)
      return {{"qweight", DType::I8, {m.out, m.in}}, {"scales", DType::F32, {m.out}}};
    return {{"qweight", DType::I8, {m.out, m.in}},
            {"scales", DType::F16, {m.out, m.in / m.group_size}}};
  }
  // 4-bit: two codes per byte; 6-bit: 24 bytes per 32 inputs.
  const int64_t code_bytes = m.type == WeightType::Int6 ? m.in / 4 * 3 : m.in / 2;
  std::vector<QuantTensorSpec> specs = {{"qweight", DType::U8, {m.out, code_bytes}},
                                        {"scales", DType::F16, {m.out, m.in / m.group_size}}};
  if (m.type == WeightType::Int4)
    specs.push_back({m.mins ? "mins" : "zeros", DType::F16, {m.out, m.in / m.group_size}});
  return specs;
}

std::map<std::string, QuantModule> parse_quant_section(const json::Value& section,
                                                       const std::string& where) {
  if (section.type != json::Type::Object)
    throw InvalidCheckpoint(where + ": 'quantization' must be an object");
  const json::Value* format = section.find("format");
  if (!format || format->type != json::Type::String || format->string != "medrt-quant")
    throw InvalidCheckpoint(where + ": quantization.format is " +
                            (format && format->type == json::Type::String
                                 ? "'" + format->string + "'" : std::string("missing")) +
                            ", expected 'medrt-quant'");
  const json::Value* version = section.find("version");
  if (!version || !version->integer || *version->integer < kQuantVersionMin ||
      *version->integer > kQuantVersionMax) {
    const std::string got = version && version->integer ? std::to_string(*version->integer)
                                                        : std::string("not an integer");
    throw InvalidCheckpoint(where + ": quantization.version is " + got +
                            "; this reader understands versions " +
                            std::to_string(kQuantVersionMin) + " to " +
                            std::to_string(kQuantVersionMax));
  }
  const json::Value* modules = section.find("modules");
  if (!modules || modules->type != json::Type::Object || modules->object.empty())
    throw InvalidCheckpoint(where + ": quantization.modules is missing or empty");

  std::map<std::string, QuantModule> out;
  for (const auto& [name, entry] : modules->object) {
    ModuleError fail{where, name};
    if (entry.type != json::Type::Object) fail("entry needs a 'type'");
    QuantModule m;
    parse_type(entry, fail, m);
    parse_offset(entry, fail, m);
    if (m.quantized()) parse_shape(entry, fail, m);
    const bool v2 = (m.type == WeightType::Int8 && m.group_size) || m.mins;
    if (v2 && *version->integer < 2)
      fail(m.mins ? "int4 with 'mins' needs quantization.version 2"
                  : "int8 with a group size needs quantization.version 2");
    if (m.type == WeightType::Int6 && *version->integer < 3)
      fail("int6 needs quantization.version 3");
    out.emplace(name, m);
  }
  return out;
}

}  // namespace medrt::model
