#include "model/linear_loader.h"

#include <filesystem>
#include <set>

#include "io/json.h"
#include "io/read_file.h"
#include "medrt/error.h"

namespace medrt::model {

namespace {

bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

DType float_dtype(WeightType t) {
  return t == WeightType::F32 ? DType::F32 : t == WeightType::F16 ? DType::F16 : DType::BF16;
}

std::string described(DType dtype, const std::vector<int64_t>& shape) {
  TensorView v;
  v.shape = shape;
  return std::string(dtype_name(dtype)) + v.shape_str();
}

}  // namespace

LinearLoader::LinearLoader(const Checkpoint& ckpt)
    : ckpt_(ckpt), config_path_((std::filesystem::path(ckpt.dir()) / "config.json").string()) {
  json::Value config;
  try {
    config = json::parse(io::read_text_file(config_path_));
  } catch (const json::ParseError& e) {
    throw InvalidCheckpoint(config_path_ + ": invalid JSON: " + e.what());
  }
  const json::Value* section = config.find("quantization");
  if (!section || section->is_null()) return;  // a plain Hugging Face directory
  modules_ = parse_quant_section(*section, config_path_);
  check_tensors();
}

// Every module's tensors with the dtype and shape its type stores, and no tensor left over:
// a file the section does not describe fully is refused here, before any weight is used.
void LinearLoader::check_tensors() {
  std::set<std::string> claimed;
  for (const auto& [name, m] : modules_) {
    auto fail = [&](const std::string& what) {
      throw InvalidCheckpoint(ckpt_.dir() + ": quantization module " + name + ": " + what);
    };
    auto expect = [&](const std::string& tensor, DType dtype, const std::vector<int64_t>* shape) {
      const TensorView* v = ckpt_.find(tensor);
      if (!v) fail("tensor " + tensor + " is missing");
      if (v->dtype != dtype || (shape && v->shape != *shape))
        fail("tensor " + tensor + " is " + described(v->dtype, v->shape) + ", expected " +
             (shape ? described(dtype, *shape) : std::string(dtype_name(dtype))));
      claimed.insert(tensor);
    };
    if (m.quantized()) {
      for (const QuantTensorSpec& spec : quant_tensor_specs(m))
        expect(name + "." + spec.suffix, spec.dtype, &spec.shape);
    } else {
      expect(name + ".weight", float_dtype(m.type), nullptr);
    }
    const std::string bias = name + ".bias";
    if (const TensorView* b = ckpt_.find(bias)) {
      const bool ok = is_float_dtype(b->dtype) && b->shape.size() == 1 &&
                      (!m.quantized() || b->dim(0) == m.out);
      if (!ok)
        fail("tensor " + bias + " is " + described(b->dtype, b->shape) +
             ", expected a float bias of " + (m.quantized() ? std::to_string(m.out) : "out") +
             " elements");
      claimed.insert(bias);
    }
  }
  for (const std::string& tensor : ckpt_.names())
    if (!claimed.count(tensor))
      throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + tensor +
                              "' is not described by quantization.modules (no listed module "
                              "stores it)");
}

const QuantModule* LinearLoader::module(const std::string& name) const {
  auto it = modules_.find(name);
  if (it == modules_.end())
    throw InvalidCheckpoint(config_path_ + ": quantization.modules does not list module " + name +
                            ", which the model needs");
  return &it->second;
}

LinearWeight LinearLoader::linear(const std::string& name, int64_t out, int64_t in,
                                  bool bias) const {
  const QuantModule* m = quantized() ? module(name) : nullptr;
  const TensorView* b = bias ? &ckpt_.get(name + ".bias", {out}) : nullptr;
  if (!m || !m->quantized()) {
    const TensorView& w = ckpt_.get(name + ".weight", {out, in});
    if (!is_float_dtype(w.dtype))
      throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + name + ".weight' is " +
                              dtype_name(w.dtype) + "; medrt reads F32, F16 or BF16 weights");
    return float_linear(name, w, b);
  }
  if (m->out != out || m->in != in)
    throw InvalidCheckpoint(ckpt_.dir() + ": quantization module " + name + ": shape [" +
                            std::to_string(m->out) + ", " + std::to_string(m->in) +
                            "], but the model needs [" + std::to_string(out) + ", " +
                            std::to_string(in) + "]");
  // check_tensors() has verified every tensor's presence, dtype and shape.
  LinearWeight w;
  w.name = name;
  w.type = m->type;
  w.out = out;
  w.in = in;
  w.group_size = m->group_size;
  w.weight = *ckpt_.find(name + ".qweight");
  w.scales = *ckpt_.find(name + ".scales");
  if (m->type == WeightType::Int4) {
    if (m->mins)
      w.mins = *ckpt_.find(name + ".mins");
    else
      w.zeros = *ckpt_.find(name + ".zeros");
  }
  if (b) w.bias = *b;
  return w;
}

TensorView LinearLoader::vector(const std::string& name, int64_t n) const {
  if (quantized()) {
    const QuantModule* m = module(name);
    if (m->quantized())
      throw InvalidCheckpoint(ckpt_.dir() + ": quantization module " + name + " is " +
                              weight_type_name(m->type) +
                              "; a norm weight must be f32, f16 or bf16");
  }
  const TensorView& t = ckpt_.get(name + ".weight", {n});
  if (!is_float_dtype(t.dtype))
    throw InvalidCheckpoint(ckpt_.dir() + ": tensor '" + name + ".weight' is " +
                            dtype_name(t.dtype) + "; medrt reads F32, F16 or BF16 weights");
  return t;
}

}  // namespace medrt::model
