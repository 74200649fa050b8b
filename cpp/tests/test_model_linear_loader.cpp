// LinearLoader over hand-written medrt-quant checkpoints (docs/quantized-format.md): every
// weight type comes back as views of the stored bytes, and every way a `quantization` section
// can disagree with its files is refused at load with the module named.
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "medrt/checkpoint.h"
#include "medrt/error.h"
#include "model/linear_loader.h"
#include "tiny_checkpoint.h"

using namespace medrt;
using medrt_test::TempDir;
using medrt_test::TinyCheckpoint;
using medrt_test::TinyTensor;

namespace {

const std::string L0 = "model.layers.0.";

TinyTensor random_tensor(const std::string& dtype, std::vector<int64_t> shape, size_t width,
                         uint32_t seed) {
  TinyTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  t.bytes.resize(size_t(n) * width);
  std::mt19937 rng(seed);
  for (auto& b : t.bytes) b = uint8_t(rng());
  if (dtype == "F16")  // keep the halves finite: clear the top exponent bit
    for (size_t i = 1; i < t.bytes.size(); i += 2) t.bytes[i] &= 0xBF;
  return t;
}

// A tiny Llama (hidden 64, intermediate 128) in which layer 0's projections are quantized, one
// per type, and every other module is listed as f32. `entries` holds each module's JSON entry
// so that a test can break one before writing.
struct QuantCheckpoint {
  TinyCheckpoint ck;
  std::map<std::string, std::string> entries;
  std::map<std::string, std::vector<int64_t>> shapes;  // of the quantized modules
  int64_t version = 1;
  std::string format = "medrt-quant";

  QuantCheckpoint() {
    ck.hidden = 64;
    ck.intermediate = 128;
    ck.heads = 4;
    ck.kv_heads = 2;
    ck.head_dim = 16;
    ck.layers = 1;
    ck.fill_random(7);
    for (const auto& [name, t] : ck.tensors) {
      const std::string module = name.substr(0, name.rfind('.'));
      entries[module] = R"({"type": "f32"})";
    }
    quantize(L0 + "self_attn.q_proj", "int8", 0);
    quantize(L0 + "self_attn.k_proj", "int4", 32);
    quantize(L0 + "self_attn.o_proj", "int4", 64);
    quantize(L0 + "mlp.gate_proj", "nf4", 64);
    quantize(L0 + "mlp.up_proj", "int4", 64);
    quantize(L0 + "mlp.down_proj", "int4", 128);
  }

  // Replaces module M's float weight by the tensors of `type` (random codes and scales).
  // `mins` stores int4 offsets as `mins` (format 2); int8 with a group size is format 2 too.
  void quantize(const std::string& m, const std::string& type, int group, bool mins = false) {
    if (!shapes.count(m)) shapes[m] = ck.tensors.at(m + ".weight").shape;
    const int64_t out = shapes[m][0], in = shapes[m][1];
    for (const char* s : {".weight", ".qweight", ".scales", ".zeros", ".mins"})
      ck.tensors.erase(m + s);
    const uint32_t seed = uint32_t(std::hash<std::string>{}(m));
    if (type == "int8") {
      ck.tensors[m + ".qweight"] = random_tensor("I8", {out, in}, 1, seed);
      ck.tensors[m + ".scales"] = group ? random_tensor("F16", {out, in / group}, 2, seed + 1)
                                        : random_tensor("F32", {out}, 4, seed + 1);
    } else {
      const int64_t code_bytes = type == "int6" ? in / 32 * 24 : in / 2;
      ck.tensors[m + ".qweight"] = random_tensor("U8", {out, code_bytes}, 1, seed);
      ck.tensors[m + ".scales"] = random_tensor("F16", {out, in / group}, 2, seed + 1);
      if (type == "int4")
        ck.tensors[m + (mins ? ".mins" : ".zeros")] =
            random_tensor("F16", {out, in / group}, 2, seed + 2);
    }
    std::string e = "{\"type\": \"" + type + "\", \"shape\": [" + std::to_string(out) + ", " +
                    std::to_string(in) + "]";
    if (group) e += ", \"group_size\": " + std::to_string(group);
    if (mins) e += ", \"offset\": \"mins\"";
    entries[m] = e + "}";
  }

  std::string section() const {
    std::string mods;
    for (const auto& [m, e] : entries) mods += (mods.empty() ? "" : ", ") + ("\"" + m + "\": " + e);
    return "{\"format\": \"" + format + "\", \"version\": " + std::to_string(version) +
           ", \"recipe\": \"test\", \"method\": {\"name\": \"rtn\"}, \"calibration\": null, "
           "\"modules\": {" + mods + "}}";
  }

  void write(const std::filesystem::path& dir) const {
    std::filesystem::remove_all(dir);
    ck.write(dir);
    std::string cfg = ck.config_json();
    cfg = cfg.substr(0, cfg.rfind('}')) + ", \"quantization\": " + section() + "}";
    std::ofstream(dir / "config.json") << cfg;
  }
};

// Opens `q` written to `dir` and runs the loader's checks (the constructor).
void load(const QuantCheckpoint& q, const std::filesystem::path& dir) {
  q.write(dir);
  auto ckpt = Checkpoint::open(dir.string());
  model::LinearLoader loader(*ckpt);
}

bool same_bytes(const TensorView& v, const TinyTensor& t) {
  return v.data && v.nbytes == t.bytes.size() && std::memcmp(v.data, t.bytes.data(), v.nbytes) == 0;
}

}  // namespace

TEST(every_type_loads_as_views_of_the_stored_tensors) {
  TempDir tmp("linear_loader_types");
  QuantCheckpoint q;
  q.write(tmp.path);
  auto ckpt = Checkpoint::open(tmp.path.string());
  model::LinearLoader loader(*ckpt);
  CHECK(loader.quantized());

  LinearWeight qp = loader.linear(L0 + "self_attn.q_proj", 64, 64, true);
  CHECK(qp.type == WeightType::Int8 && qp.group_size == 0 && qp.out == 64 && qp.in == 64);
  CHECK(same_bytes(qp.weight, q.ck.tensors.at(L0 + "self_attn.q_proj.qweight")));
  CHECK(same_bytes(qp.scales, q.ck.tensors.at(L0 + "self_attn.q_proj.scales")));
  CHECK(qp.scales.dtype == DType::F32 && qp.zeros.data == nullptr && qp.mins.data == nullptr);
  CHECK(same_bytes(qp.bias, q.ck.tensors.at(L0 + "self_attn.q_proj.bias")));

  LinearWeight kp = loader.linear(L0 + "self_attn.k_proj", 32, 64, true);
  CHECK(kp.type == WeightType::Int4 && kp.group_size == 32 && kp.out == 32);
  CHECK(same_bytes(kp.zeros, q.ck.tensors.at(L0 + "self_attn.k_proj.zeros")));
  CHECK(kp.mins.data == nullptr);
  CHECK(kp.bytes() == 32 * 32 + 2 * (32 * 2 * 2) + 32 * 4);  // codes, scales, zeros, bias

  LinearWeight gate = loader.linear(L0 + "mlp.gate_proj", 128, 64, false);
  CHECK(gate.type == WeightType::Nf4 && gate.group_size == 64 && !gate.has_bias());
  CHECK(same_bytes(gate.weight, q.ck.tensors.at(L0 + "mlp.gate_proj.qweight")));
  CHECK(gate.zeros.data == nullptr);
  LinearWeight down = loader.linear(L0 + "mlp.down_proj", 64, 128, false);
  CHECK(down.type == WeightType::Int4 && down.group_size == 128);
  CHECK(down.scales.shape == std::vector<int64_t>({64, 1}));

  LinearWeight v = loader.linear(L0 + "self_attn.v_proj", 32, 64, true);  // listed as f32
  CHECK(v.type == WeightType::F32 && v.weight.shape == std::vector<int64_t>({32, 64}));
  LinearWeight embed = loader.linear("model.embed_tokens", 64, 64, false);
  CHECK(embed.type == WeightType::F32);
  CHECK(loader.vector("model.norm", 64).numel() == 64);

  // The model's view of a module must match the section's.
  CHECK_THROWS(InvalidCheckpoint, loader.linear(L0 + "mlp.up_proj", 64, 128, false),
               "module " + L0 + "mlp.up_proj: shape [128, 64], but the model needs [64, 128]");
  CHECK_THROWS(InvalidCheckpoint, loader.vector(L0 + "mlp.up_proj", 64),
               "module " + L0 + "mlp.up_proj is int4; a norm weight must be");
  CHECK_THROWS(InvalidCheckpoint, loader.linear("model.layers.1.mlp.up_proj", 128, 64, false),
               "does not list module model.layers.1.mlp.up_proj");
}

TEST(version_2_reads_grouped_int8_and_int4_with_mins) {
  TempDir tmp("linear_loader_v2");
  QuantCheckpoint q;
  q.version = 2;
  q.quantize(L0 + "self_attn.q_proj", "int8", 32);        // GGUF Q8_0
  q.quantize(L0 + "self_attn.k_proj", "int4", 32, true);  // GGUF Q4_1
  q.write(tmp.path);
  {
    auto ckpt = Checkpoint::open(tmp.path.string());
    model::LinearLoader loader(*ckpt);
    LinearWeight qp = loader.linear(L0 + "self_attn.q_proj", 64, 64, true);
    CHECK(qp.type == WeightType::Int8 && qp.group_size == 32);
    CHECK(qp.scales.dtype == DType::F16 && qp.scales.shape == std::vector<int64_t>({64, 2}));
    LinearWeight kp = loader.linear(L0 + "self_attn.k_proj", 32, 64, true);
    CHECK(kp.type == WeightType::Int4 && kp.zeros.data == nullptr);
    CHECK(same_bytes(kp.mins, q.ck.tensors.at(L0 + "self_attn.k_proj.mins")));
    // Version 1 modules read the same under version 2.
    CHECK(loader.linear(L0 + "mlp.up_proj", 128, 64, false).zeros.data != nullptr);
  }
  q.version = 1;
  CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "v1"),
               "module " + L0 + "self_attn.k_proj: int4 with 'mins' needs quantization.version 2");
  q.quantize(L0 + "self_attn.k_proj", "int4", 32);
  CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "v1"),
               "module " + L0 + "self_attn.q_proj: int8 with a group size needs");
}

TEST(version_3_reads_int6) {
  TempDir tmp("linear_loader_v3");
  QuantCheckpoint q;
  q.version = 3;
  q.quantize(L0 + "mlp.down_proj", "int6", 64);
  q.quantize("lm_head", "int6", 32);
  q.write(tmp.path);
  {
    auto ckpt = Checkpoint::open(tmp.path.string());
    model::LinearLoader loader(*ckpt);
    LinearWeight down = loader.linear(L0 + "mlp.down_proj", 64, 128, false);
    CHECK(down.type == WeightType::Int6 && down.group_size == 64);
    CHECK(down.weight.shape == std::vector<int64_t>({64, 96}));  // 24 bytes per 32 inputs
    CHECK(same_bytes(down.weight, q.ck.tensors.at(L0 + "mlp.down_proj.qweight")));
    CHECK(down.zeros.data == nullptr && down.mins.data == nullptr);
    CHECK(down.bytes() == 64 * 96 + 64 * 2 * 2);
    CHECK(std::string(weight_type_name(down.type)) == "int6");
    // Versions 1 and 2 modules read the same under version 3.
    CHECK(loader.linear(L0 + "mlp.up_proj", 128, 64, false).zeros.data != nullptr);
  }
  q.version = 2;
  CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "v2"),
               "module lm_head: int6 needs quantization.version 3");  // the first in order
  q.version = 3;
  q.entries[L0 + "mlp.down_proj"] = R"({"type": "int6", "shape": [64, 128]})";
  CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "v3"),
               "module " + L0 + "mlp.down_proj: int6 needs 'group_size' (32, 64 or 128)");
  q.entries[L0 + "mlp.down_proj"] = R"({"type": "int6-g64", "shape": [64, 128]})";
  q.ck.tensors[L0 + "mlp.down_proj.qweight"] = random_tensor("U8", {64, 64}, 1, 5);
  CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "v3"),
               "tensor " + L0 + "mlp.down_proj.qweight is U8[64, 64], expected U8[64, 96]");
}

TEST(a_plain_checkpoint_reads_float_weights) {
  TempDir tmp("linear_loader_plain");
  TinyCheckpoint ck;
  ck.fill_random(3);
  ck.write(tmp.path);
  auto ckpt = Checkpoint::open(tmp.path.string());
  model::LinearLoader loader(*ckpt);
  CHECK(!loader.quantized());
  LinearWeight w = loader.linear(L0 + "mlp.up_proj", 48, 32, false);
  CHECK(w.type == WeightType::F32 && w.out == 48 && w.in == 32);
  CHECK(same_bytes(w.weight, ck.tensors.at(L0 + "mlp.up_proj.weight")));
}

// Each broken directory is refused by the constructor, before any weight is read, and the
// message names the module (or the tensor no module claims).
TEST(refusals_name_the_module) {
  TempDir tmp("linear_loader_refusals");
  const std::string up = L0 + "mlp.up_proj";
  struct Case {
    const char* what;
    std::function<void(QuantCheckpoint&)> edit;
    std::string needle;
  };
  using Edit = std::function<void(QuantCheckpoint&)>;
  auto entry = [](const std::string& m, const std::string& json) -> Edit {
    return [m, json](QuantCheckpoint& q) { q.entries[m] = json; };
  };
  auto tensor = [](const std::string& name, const std::string& dtype,
                   std::vector<int64_t> shape, size_t width) -> Edit {
    return [=](QuantCheckpoint& q) { q.ck.tensors[name] = random_tensor(dtype, shape, width, 1); };
  };
  const std::string mins64 =
      R"({"type": "int4", "group_size": 64, "shape": [128, 64], "offset": "mins"})";
  const std::vector<Case> cases = {
      {"missing scales", [&](QuantCheckpoint& q) { q.ck.tensors.erase(up + ".scales"); },
       "module " + up + ": tensor " + up + ".scales is missing"},
      {"group size not allowed",
       entry(up, R"({"type": "int4", "group_size": 48, "shape": [128, 64]})"),
       "module " + up + ": int4 group size 48 is not one of (32, 64, 128)"},
      {"group size does not divide in",
       entry(up, R"({"type": "int4", "group_size": 128, "shape": [128, 64]})"),
       "module " + up + ": group size 128 does not divide the input dimension 64"},
      {"group size of the scales",
       entry(up, R"({"type": "int4", "group_size": 32, "shape": [128, 64]})"),
       "module " + up + ": tensor " + up + ".scales is F16[128, 1], expected F16[128, 2]"},
      {"unknown type", entry(up, R"({"type": "int3", "shape": [128, 64]})"),
       "module " + up + ": unknown weight type 'int3'"},
      {"version 99", [](QuantCheckpoint& q) { q.version = 99; },
       "quantization.version is 99; this reader understands versions 1 to 3"},
      {"wrong format", [](QuantCheckpoint& q) { q.format = "gptq"; },
       "quantization.format is 'gptq', expected 'medrt-quant'"},
      {"unclaimed tensor", tensor(up + ".g_idx", "I32", {64}, 4),
       "tensor '" + up + ".g_idx' is not described by quantization.modules"},
      {"float weight beside the codes", tensor(up + ".weight", "F32", {128, 64}, 4),
       "tensor '" + up + ".weight' is not described by quantization.modules"},
      {"packed length", tensor(up + ".qweight", "U8", {128, 31}, 1),
       "module " + up + ": tensor " + up + ".qweight is U8[128, 31], expected U8[128, 32]"},
      {"codes of the wrong dtype", tensor(up + ".qweight", "I8", {128, 32}, 1),
       "module " + up + ": tensor " + up + ".qweight is I8[128, 32], expected U8[128, 32]"},
      {"f32 scales for int4", tensor(up + ".scales", "F32", {128, 1}, 4),
       "module " + up + ": tensor " + up + ".scales is F32[128, 1], expected F16[128, 1]"},
      {"missing shape", entry(up, R"({"type": "int4", "group_size": 64})"),
       "module " + up + ": 'shape' must be [out, in]"},
      {"float type of the wrong dtype", entry("model.norm", R"({"type": "f16"})"),
       "module model.norm: tensor model.norm.weight is F32[64], expected F16"},
      {"mins in version 1", entry(up, mins64),
       "module " + up + ": int4 with 'mins' needs quantization.version 2"},
      {"zeros where mins are declared",
       [&](QuantCheckpoint& q) {
         q.version = 2;
         q.entries[up] = mins64;
       },
       "module " + up + ": tensor " + up + ".mins is missing"},
      {"nf4 group size",
       entry(L0 + "mlp.gate_proj", R"({"type": "nf4", "group_size": 32, "shape": [128, 64]})"),
       "module " + L0 + "mlp.gate_proj: nf4 uses groups of 64, not 32"},
      {"bias of the wrong length", tensor(L0 + "self_attn.q_proj.bias", "F32", {63}, 4),
       "module " + L0 + "self_attn.q_proj: tensor " + L0 + "self_attn.q_proj.bias is F32[63]"},
      {"empty module list", [](QuantCheckpoint& q) { q.entries.clear(); },
       "quantization.modules is missing or empty"},
  };
  for (const Case& c : cases) {
    QuantCheckpoint q;
    c.edit(q);
    std::fprintf(stderr, "case: %s\n", c.what);
    CHECK_THROWS(InvalidCheckpoint, load(q, tmp.path / "ckpt"), c.needle);
  }
}

TEST(a_quantization_section_that_is_not_an_object_is_refused) {
  TempDir tmp("linear_loader_section");
  TinyCheckpoint ck;
  ck.fill_random(3);
  ck.write(tmp.path);
  std::string cfg = ck.config_json();
  std::ofstream(tmp.path / "config.json")
      << cfg.substr(0, cfg.rfind('}')) + ", \"quantization\": 4}";
  auto ckpt = Checkpoint::open(tmp.path.string());
  CHECK_THROWS(InvalidCheckpoint, model::LinearLoader{*ckpt}, "'quantization' must be an object");
}
