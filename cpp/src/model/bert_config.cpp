// config.json -> EncoderConfig. Kept apart from the decoder's ModelConfig: a BERT directory
// has none of the decoder's fields. The family comes from the architecture registry (arch.h),
// so a decoder directory is refused here by its entry's kind, and named.
#include <climits>
#include <string>

#include "io/json.h"
#include "medrt/arch.h"
#include "medrt/encoder.h"
#include "medrt/error.h"

namespace medrt {
namespace {

[[noreturn]] void fail(const std::string& source, const std::string& key, const std::string& w) {
  throw InvalidCheckpoint(source + ": field '" + key + "': " + w);
}

int positive_int(const json::Value& obj, const std::string& key, const std::string& source,
                 int fallback = -1) {
  const json::Value* v = obj.find(key);
  if (!v || v->is_null()) {
    if (fallback >= 0) return fallback;
    fail(source, key, "missing");
  }
  if (v->type != json::Type::Number || !v->integer)
    fail(source, key, std::string("expected an integer, got ") + json::type_name(v->type));
  if (*v->integer <= 0 || *v->integer > INT_MAX)
    fail(source, key, "must be a positive integer, got " + std::to_string(*v->integer));
  return int(*v->integer);
}

std::string string_field(const json::Value& obj, const std::string& key) {
  const json::Value* v = obj.find(key);
  return v && v->type == json::Type::String ? v->string : std::string();
}

}  // namespace

EncoderConfig EncoderConfig::from_json(const std::string& json_text, const std::string& source) {
  json::Value root;
  try {
    root = json::parse(json_text);
  } catch (const json::ParseError& e) {
    throw InvalidCheckpoint(source + ": not valid JSON at byte " + std::to_string(e.offset()) +
                            ": " + e.what());
  }
  if (root.type != json::Type::Object) throw InvalidCheckpoint(source + ": expected an object");
  EncoderConfig c;
  c.model_type = string_field(root, "model_type");
  std::string hf_name;
  if (const json::Value* a = root.find("architectures");
      a && a->type == json::Type::Array && !a->array.empty() &&
      a->array[0].type == json::Type::String)
    hf_name = a->array[0].string;
  // The registry entry (model_type first: BertForX classes are BERT by their model_type).
  const ArchSpec* spec = find_arch_of(c.model_type, hf_name);
  if (!spec || spec->kind != ArchKind::Encoder) {
    const std::string got = "model_type '" + c.model_type + "'" +
                            (hf_name.empty() ? "" : " (" + hf_name + ")");
    if (spec)  // a decoder: say what it is and where it runs
      throw InvalidCheckpoint(source + ": " + got + " is a " + arch_kind_name(spec->kind) +
                              ", not a BERT encoder; medrt.LLM generates with it, and an "
                              "embedding model needs one of " +
                              architectures_of_kind(ArchKind::Encoder));
    throw InvalidCheckpoint(source + ": " + got +
                            " is not a BERT encoder; an embedding model needs "
                            "\"model_type\": \"bert\" (medrt runs " +
                            supported_architectures() + ")");
  }
  c.arch = spec->arch;
  const std::string act = string_field(root, "hidden_act");
  if (!act.empty() && act != "gelu")
    fail(source, "hidden_act", "'" + act + "' is not supported (only 'gelu', the erf form)");
  const std::string pos = string_field(root, "position_embedding_type");
  if (!pos.empty() && pos != "absolute")
    fail(source, "position_embedding_type", "'" + pos + "' is not supported (only 'absolute')");
  c.hidden_size = positive_int(root, "hidden_size", source);
  c.num_layers = positive_int(root, "num_hidden_layers", source);
  c.num_heads = positive_int(root, "num_attention_heads", source);
  c.intermediate_size = positive_int(root, "intermediate_size", source);
  c.vocab_size = positive_int(root, "vocab_size", source);
  c.max_position_embeddings = positive_int(root, "max_position_embeddings", source);
  c.type_vocab_size = positive_int(root, "type_vocab_size", source, 2);
  if (c.hidden_size % c.num_heads != 0)
    fail(source, "num_attention_heads",
         std::to_string(c.num_heads) + " does not divide hidden_size " +
             std::to_string(c.hidden_size));
  if (const json::Value* e = root.find("layer_norm_eps"); e && !e->is_null()) {
    if (e->type != json::Type::Number || !(e->number >= 0.0))
      fail(source, "layer_norm_eps", "expected a non-negative number");
    c.layer_norm_eps = float(e->number);
  }
  return c;
}

}  // namespace medrt
