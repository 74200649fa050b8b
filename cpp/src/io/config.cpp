// config.json -> ModelConfig. Reads both spellings transformers has used: v4 (top-level
// rope_theta, rope_scaling, torch_dtype) and v5 (rope_parameters holding rope_theta, dtype).
#include "medrt/config.h"

#include <climits>
#include <cmath>

#include "io/json.h"
#include "io/read_file.h"
#include "medrt/error.h"

namespace medrt {

namespace {

// Upper bounds on the sizes buffers are allocated from: several times the largest open models
// (Llama 3.1 405B: hidden 16384, 126 layers, 128 heads, intermediate 53248; vocabularies up
// to 256k; contexts up to 10M), low enough that products like vocab * hidden stay far from
// overflowing int64 and a hostile config.json fails here instead of in an allocation.
constexpr int kMaxHidden = 1 << 17;
constexpr int kMaxIntermediate = 1 << 20;
constexpr int kMaxLayers = 1024;
constexpr int kMaxHeads = 4096;
constexpr int kMaxHeadDim = 4096;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxPositions = 1 << 26;

// Typed access to one JSON object whose errors name the file and the field.
class Fields {
 public:
  Fields(const json::Value& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw InvalidCheckpoint(source_ + ": field '" + prefix_ + key + "': " + what);
  }

  // The member, or nullptr when absent or null (HF writes null for "not set").
  const json::Value* get(const std::string& key) const {
    const json::Value* v = obj_.find(key);
    return v && !v->is_null() ? v : nullptr;
  }

  const json::Value& require(const std::string& key) const {
    const json::Value* v = get(key);
    if (!v) fail(key, "missing");
    return *v;
  }

  int to_int(const std::string& key, const json::Value& v) const {
    if (v.type != json::Type::Number || !v.integer)
      fail(key, std::string("expected an integer, got ") + describe(v));
    if (*v.integer < INT_MIN || *v.integer > INT_MAX)
      fail(key, std::to_string(*v.integer) + " is out of range");
    return int(*v.integer);
  }

  int integer(const std::string& key) const { return to_int(key, require(key)); }
  int integer(const std::string& key, int fallback) const {
    const json::Value* v = get(key);
    return v ? to_int(key, *v) : fallback;
  }
  int positive(const std::string& key) const {
    int x = integer(key);
    if (x <= 0) fail(key, "must be positive, got " + std::to_string(x));
    return x;
  }
  // A size the model's buffers are allocated from: refused above `limit` before anything is
  // allocated (a config.json is untrusted input).
  int size(const std::string& key, int limit) const {
    int x = positive(key);
    if (x > limit)
      fail(key, std::to_string(x) + " is larger than medrt supports (at most " +
                    std::to_string(limit) + ")");
    return x;
  }

  float number(const std::string& key, float fallback) const {
    const json::Value* v = get(key);
    if (!v) return fallback;
    if (v->type != json::Type::Number)
      fail(key, std::string("expected a number, got ") + describe(*v));
    if (!std::isfinite(float(v->number))) fail(key, "is not a finite float");
    return float(v->number);
  }
  float number(const std::string& key) const {
    require(key);
    return number(key, 0.0f);
  }

  bool boolean(const std::string& key, bool fallback) const {
    const json::Value* v = get(key);
    if (!v) return fallback;
    if (v->type != json::Type::Bool)
      fail(key, std::string("expected a boolean, got ") + describe(*v));
    return v->boolean;
  }

  std::string string(const std::string& key, const std::string& fallback) const {
    const json::Value* v = get(key);
    if (!v) return fallback;
    if (v->type != json::Type::String)
      fail(key, std::string("expected a string, got ") + describe(*v));
    return v->string;
  }

  static std::string describe(const json::Value& v) {
    if (v.type == json::Type::String) return "\"" + v.string + "\"";
    return json::type_name(v.type);
  }

 private:
  const json::Value& obj_;
  std::string source_;
  std::string prefix_;
};

std::optional<RopeScaling> parse_rope_scaling(const json::Value& obj, const std::string& field,
                                              const std::string& source) {
  Fields f(obj, source, field + ".");
  if (obj.type != json::Type::Object)
    throw InvalidCheckpoint(source + ": field '" + field + "': expected an object or null, got " +
                            json::type_name(obj.type));
  std::string type = f.string("rope_type", f.string("type", ""));
  if (type.empty()) f.fail("rope_type", "missing");
  if (f.number("partial_rotary_factor", 1.0f) != 1.0f)
    f.fail("partial_rotary_factor", "partial rotary embeddings are not supported");
  if (type == "default") return std::nullopt;
  if (type != "llama3") f.fail("rope_type", "unsupported rope scaling type \"" + type + "\"");
  RopeScaling rs;
  rs.type = type;
  rs.factor = f.number("factor");
  rs.low_freq_factor = f.number("low_freq_factor");
  rs.high_freq_factor = f.number("high_freq_factor");
  rs.original_max_position_embeddings = f.positive("original_max_position_embeddings");
  if (rs.factor <= 0.0f) f.fail("factor", "must be positive");
  if (rs.low_freq_factor <= 0.0f) f.fail("low_freq_factor", "must be positive");
  if (rs.high_freq_factor <= rs.low_freq_factor)
    f.fail("high_freq_factor", "must be greater than low_freq_factor");
  return rs;
}

DType parse_dtype(const Fields& f) {
  std::string key = f.get("dtype") ? "dtype" : "torch_dtype";
  std::string name = f.string(key, "float32");
  if (name == "float32") return DType::F32;
  if (name == "float16") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  f.fail(key, "unsupported dtype \"" + name + "\" (float32, float16 or bfloat16)");
}

// A special token id must index the vocabulary: the sampler masks EOS by writing
// logits[id], so an id past the vocabulary would write past the logits row.
int token_id(const Fields& f, const std::string& key, const json::Value& v, int vocab_size) {
  int id = f.to_int(key, v);
  if (id < 0 || id >= vocab_size)
    f.fail(key, "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                    std::to_string(vocab_size) + ")");
  return id;
}

std::vector<int> parse_eos(const Fields& f, const json::Value* v, int vocab_size) {
  std::vector<int> ids;
  if (!v) return ids;
  if (v->type == json::Type::Array) {
    for (const json::Value& e : v->array) ids.push_back(token_id(f, "eos_token_id", e, vocab_size));
  } else {
    ids.push_back(token_id(f, "eos_token_id", *v, vocab_size));
  }
  return ids;
}

std::string architecture_of(const Fields& f) {
  if (const json::Value* a = f.get("architectures")) {
    if (a->type != json::Type::Array || a->array.empty() ||
        a->array[0].type != json::Type::String)
      f.fail("architectures", "expected a non-empty list of strings");
    return a->array[0].string;
  }
  // Older or hand-written configs name only the model type.
  std::string model_type = f.string("model_type", "");
  if (const ArchSpec* spec = find_arch_by_model_type(model_type)) return spec->hf_name;
  f.fail("architectures", "missing (and no model_type to infer it from)");
}

}  // namespace

ModelConfig ModelConfig::from_json(const std::string& json_text, const std::string& source) {
  json::Value root;
  try {
    root = json::parse(json_text);
  } catch (const json::ParseError& e) {
    throw InvalidCheckpoint(source + ": invalid JSON: " + e.what());
  }
  if (root.type != json::Type::Object)
    throw InvalidCheckpoint(source + ": expected a JSON object, got " + json::type_name(root.type));
  Fields f(root, source);

  ModelConfig c;
  c.architecture = architecture_of(f);
  const ArchSpec* spec = find_arch(c.architecture);
  // An encoder (a BertForX class names no entry, its model_type does) belongs to the embedder.
  const ArchSpec* family = spec ? spec : find_arch_by_model_type(f.string("model_type", ""));
  if (family && family->kind == ArchKind::Encoder)
    f.fail("architectures", "\"" + c.architecture + "\" is an encoder (an embedding model), "
                            "not a decoder: load it with medrt.Embedder or LLM(...).embed");
  if (!spec)
    f.fail("architectures", "unsupported architecture \"" + c.architecture + "\" (medrt runs " +
                                supported_architectures() + ")");
  c.arch = spec->arch;

  c.hidden_size = f.size("hidden_size", kMaxHidden);
  c.intermediate_size = f.size("intermediate_size", kMaxIntermediate);
  c.num_layers = f.size("num_hidden_layers", kMaxLayers);
  c.num_heads = f.size("num_attention_heads", kMaxHeads);
  c.num_kv_heads = f.integer("num_key_value_heads", c.num_heads);
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    f.fail("num_key_value_heads", std::to_string(c.num_kv_heads) +
                                      " does not divide num_attention_heads " +
                                      std::to_string(c.num_heads));
  if (f.get("head_dim")) {
    c.head_dim = f.size("head_dim", kMaxHeadDim);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      f.fail("head_dim", "missing, and hidden_size " + std::to_string(c.hidden_size) +
                             " is not divisible by num_attention_heads " +
                             std::to_string(c.num_heads));
    c.head_dim = c.hidden_size / c.num_heads;
    if (c.head_dim > kMaxHeadDim)
      f.fail("head_dim", "hidden_size / num_attention_heads = " + std::to_string(c.head_dim) +
                             " is larger than medrt supports (at most " +
                             std::to_string(kMaxHeadDim) + ")");
  }
  if (c.head_dim % 2 != 0)
    f.fail("head_dim",
           "rotary embeddings need an even head_dim, got " + std::to_string(c.head_dim));
  c.vocab_size = f.size("vocab_size", kMaxVocab);
  c.max_position_embeddings = f.size("max_position_embeddings", kMaxPositions);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6f);
  if (c.rms_norm_eps <= 0.0f) f.fail("rms_norm_eps", "must be positive");

  const json::Value* rope_params = f.get("rope_parameters");  // transformers >= 5
  const json::Value* rope_scaling = f.get("rope_scaling");
  c.rope_theta = f.number("rope_theta", 10000.0f);
  if (rope_params) {
    c.rope_scaling = parse_rope_scaling(*rope_params, "rope_parameters", source);
    Fields rp(*rope_params, source, "rope_parameters.");
    c.rope_theta = rp.number("rope_theta", c.rope_theta);
  } else if (rope_scaling) {
    c.rope_scaling = parse_rope_scaling(*rope_scaling, "rope_scaling", source);
  }
  if (c.rope_theta <= 0.0f) f.fail("rope_theta", "must be positive");

  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  std::string act = f.string("hidden_act", "silu");
  if (act != "silu") f.fail("hidden_act", "unsupported activation \"" + act + "\" (only silu)");
  if (f.boolean("mlp_bias", false)) f.fail("mlp_bias", "MLP biases are not supported");

  c.attention_bias = spec->qkv_bias_always || f.boolean("attention_bias", false);
  if (spec->unsupported_flag && f.boolean(spec->unsupported_flag, false))
    f.fail(spec->unsupported_flag, "this feature (sliding-window attention) is not supported");
  if (const json::Value* lt = f.get("layer_types")) {
    if (lt->type != json::Type::Array) f.fail("layer_types", "expected a list");
    for (const json::Value& t : lt->array)
      if (t.type != json::Type::String || t.string != "full_attention")
        f.fail("layer_types", "unsupported layer type " + Fields::describe(t) +
                                  " (only full_attention)");
  }

  if (const json::Value* bos = f.get("bos_token_id"))
    c.bos_token_id = token_id(f, "bos_token_id", *bos, c.vocab_size);
  // Some published configs write -1 for "no padding token" (medrt never pads): that is absent,
  // not out of range.
  const json::Value* pad = f.get("pad_token_id");
  if (pad && !(pad->type == json::Type::Number && pad->number == -1))
    c.pad_token_id = token_id(f, "pad_token_id", *pad, c.vocab_size);
  c.eos_token_ids = parse_eos(f, f.get("eos_token_id"), c.vocab_size);
  c.torch_dtype = parse_dtype(f);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  return from_json(io::read_text_file(path), path);
}

}  // namespace medrt
