// config.json parsing: both transformers spellings (v4 rope_theta/rope_scaling/torch_dtype and
// v5 rope_parameters/dtype), defaults, and the values medrt refuses with the field's name.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "check.h"
#include "medrt/config.h"
#include "medrt/error.h"

using medrt::Arch;
using medrt::DType;
using medrt::InvalidCheckpoint;
using medrt::ModelConfig;

namespace {

// SmolLM2-135M-Instruct's config.json (transformers 4.x spelling), abridged.
const std::string kSmol = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
  "is_llama_config": true, "max_position_embeddings": 8192, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
  "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "use_cache": true, "vocab_size": 49152})";

// A Qwen2 config as transformers 5 writes it.
const std::string kQwen = R"({
  "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "dtype": "float16",
  "eos_token_id": [151643, 151645], "hidden_act": "silu", "hidden_size": 1536,
  "intermediate_size": 8960, "layer_types": ["full_attention", "full_attention"],
  "max_position_embeddings": 131072, "max_window_layers": 21, "model_type": "qwen2",
  "num_attention_heads": 12, "num_hidden_layers": 2, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "sliding_window": null, "tie_word_embeddings": false, "use_sliding_window": false,
  "vocab_size": 151936, "quantization": {"format": "medrt"}})";

// kSmol with `key`'s value replaced (or the key added at the end when absent).
std::string with(const std::string& base, const std::string& key, const std::string& value) {
  std::string quoted = "\"" + key + "\":";
  size_t k = base.find(quoted);
  if (k == std::string::npos) return base.substr(0, base.rfind('}')) + ", " + quoted + value + "}";
  size_t start = k + quoted.size();
  int depth = 0;
  size_t end = start;
  for (; end < base.size(); ++end) {
    char c = base[end];
    if (c == '[' || c == '{') ++depth;
    if (c == ']' || c == '}') {
      if (depth == 0) break;
      --depth;
    }
    if (c == ',' && depth == 0) break;
  }
  return base.substr(0, start) + " " + value + base.substr(end);
}

// HF writes null for "not set"; medrt reads it as absent.
std::string without(const std::string& base, const std::string& key) {
  return with(base, key, "null");
}

}  // namespace

TEST(parses_llama_v4_config) {
  ModelConfig c = ModelConfig::from_json(kSmol, "smol/config.json");
  CHECK(c.arch == Arch::Llama && c.architecture == "LlamaForCausalLM");
  CHECK(c.hidden_size == 576 && c.intermediate_size == 1536 && c.num_layers == 30);
  CHECK(c.num_heads == 9 && c.num_kv_heads == 3 && c.head_dim == 64);
  CHECK(c.vocab_size == 49152 && c.max_position_embeddings == 8192);
  CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
  CHECK_NEAR(c.rope_theta, 100000.0, 0.0);
  CHECK(!c.rope_scaling && c.tie_word_embeddings && !c.attention_bias);
  CHECK(c.bos_token_id == 1 && c.eos_token_ids == std::vector<int>{2} && c.pad_token_id == 2);
  CHECK(c.torch_dtype == DType::BF16);
}

TEST(parses_qwen2_v5_config) {
  ModelConfig c = ModelConfig::from_json(kQwen, "qwen/config.json");
  CHECK(c.arch == Arch::Qwen2 && c.attention_bias);
  CHECK(c.head_dim == 128 && c.num_kv_heads == 2);
  CHECK((c.eos_token_ids == std::vector<int>{151643, 151645}));
  CHECK(c.torch_dtype == DType::F16 && !c.rope_scaling);
  CHECK_NEAR(c.rope_theta, 10000.0, 0.0);
}

TEST(applies_defaults) {
  std::string minimal = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "vocab_size": 100, "max_position_embeddings": 256})";
  ModelConfig c = ModelConfig::from_json(minimal, "m");
  CHECK(c.num_kv_heads == 4 && c.head_dim == 16);
  CHECK_NEAR(c.rope_theta, 10000.0, 0.0);
  CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
  CHECK(!c.tie_word_embeddings && !c.attention_bias && c.bos_token_id == -1);
  CHECK(c.eos_token_ids.empty() && c.torch_dtype == DType::F32);
  std::string explicit_head = with(minimal, "head_dim", "32");
  CHECK(ModelConfig::from_json(explicit_head, "m").head_dim == 32);
  // Only model_type, as older hand-written configs have it.
  std::string typed = with(without(minimal, "architectures"), "model_type", "\"qwen2\"");
  CHECK(ModelConfig::from_json(typed, "m").arch == Arch::Qwen2);
}

TEST(parses_llama3_rope_scaling) {
  const std::string scaling = R"({"factor": 32.0, "high_freq_factor": 4.0,
    "low_freq_factor": 1.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})";
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    ModelConfig c = ModelConfig::from_json(with(kSmol, key, scaling), "c");
    CHECK(c.rope_scaling && c.rope_scaling->type == "llama3");
    CHECK_NEAR(c.rope_scaling->factor, 32.0, 0.0);
    CHECK_NEAR(c.rope_scaling->low_freq_factor, 1.0, 0.0);
    CHECK_NEAR(c.rope_scaling->high_freq_factor, 4.0, 0.0);
    CHECK(c.rope_scaling->original_max_position_embeddings == 8192);
  }
  // v4 spelling "type"; "default" means no scaling.
  ModelConfig d =
      ModelConfig::from_json(with(kSmol, "rope_scaling", R"({"type": "default"})"), "c");
  CHECK(!d.rope_scaling);
  ModelConfig t = ModelConfig::from_json(
      with(kSmol, "rope_parameters", R"({"rope_type": "default", "rope_theta": 500000.0})"), "c");
  CHECK_NEAR(t.rope_theta, 500000.0, 0.0);
}

// -1 is how some published configs say "no padding token": absent, not out of range.
TEST(pad_token_id_minus_one_means_none) {
  CHECK(ModelConfig::from_json(with(kSmol, "pad_token_id", "-1"), "c").pad_token_id == -1);
  CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_json(with(kSmol, "pad_token_id", "-2"), "c"),
               "field 'pad_token_id'");
}

TEST(rejects_unsupported_values) {
  struct Case {
    std::string json;
    std::string needle;
  };
  std::vector<Case> cases = {
      {with(kSmol, "architectures", R"(["MistralForCausalLM"])"),
       "field 'architectures': unsupported architecture \"MistralForCausalLM\""},
      {with(kSmol, "hidden_act", "\"gelu\""),
       "field 'hidden_act': unsupported activation \"gelu\""},
      {with(kSmol, "num_key_value_heads", "2"),
       "field 'num_key_value_heads': 2 does not divide num_attention_heads 9"},
      {with(kSmol, "mlp_bias", "true"), "field 'mlp_bias'"},
      {with(kQwen, "use_sliding_window", "true"), "field 'use_sliding_window'"},
      {with(kQwen, "layer_types", R"(["sliding_attention"])"), "field 'layer_types'"},
      {with(kSmol, "rope_scaling", R"({"rope_type": "yarn", "factor": 4.0})"),
       "field 'rope_scaling.rope_type': unsupported rope scaling type \"yarn\""},
      {with(kSmol, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})"),
       "field 'rope_scaling.low_freq_factor': missing"},
      {with(kSmol, "rope_scaling", R"({"factor": 8.0})"),
       "field 'rope_scaling.rope_type': missing"},
      {with(kSmol, "torch_dtype", "\"float64\""),
       "field 'torch_dtype': unsupported dtype \"float64\""},
      {with(kQwen, "dtype", "\"int8\""), "field 'dtype': unsupported dtype \"int8\""},
      {without(kSmol, "hidden_size"), "field 'hidden_size': missing"},
      {with(kSmol, "hidden_size", "\"576\""),
       "field 'hidden_size': expected an integer, got \"576\""},
      {with(kSmol, "num_hidden_layers", "30.5"), "field 'num_hidden_layers': expected an integer"},
      {with(kSmol, "vocab_size", "0"), "field 'vocab_size': must be positive"},
      {with(kSmol, "hidden_size", "577"), "field 'head_dim': missing, and hidden_size 577"},
      {with(kSmol, "tie_word_embeddings", "1"),
       "field 'tie_word_embeddings': expected a boolean"},
      {with(kSmol, "eos_token_id", "[2, \"x\"]"), "field 'eos_token_id': expected an integer"},
      {with(kSmol, "eos_token_id", "49152"),
       "field 'eos_token_id': token id 49152 is outside the vocabulary [0, 49152)"},
      {with(kSmol, "eos_token_id", "[2, 70000]"), "field 'eos_token_id': token id 70000"},
      {with(kSmol, "eos_token_id", "-1"), "field 'eos_token_id': token id -1 is outside"},
      {with(kSmol, "bos_token_id", "49152"), "field 'bos_token_id': token id 49152 is outside"},
      {with(kSmol, "bos_token_id", "-5"), "field 'bos_token_id': token id -5 is outside"},
      {with(kSmol, "pad_token_id", "100000"), "field 'pad_token_id': token id 100000 is outside"},
      {with(kSmol, "num_hidden_layers", "1000000"),
       "field 'num_hidden_layers': 1000000 is larger than medrt supports (at most 1024)"},
      {with(kSmol, "vocab_size", "2000000000"), "field 'vocab_size': 2000000000 is larger"},
      {with(kSmol, "hidden_size", "2147483647"), "field 'hidden_size': 2147483647 is larger"},
      {with(kSmol, "intermediate_size", "2000000000"), "field 'intermediate_size'"},
      {with(kSmol, "max_position_embeddings", "2147483647"), "field 'max_position_embeddings'"},
      {with(kSmol, "head_dim", "1000000"), "field 'head_dim': 1000000 is larger"},
      {with(kSmol, "num_attention_heads", "100000"), "field 'num_attention_heads'"},
      {with(kSmol, "head_dim", "63"), "field 'head_dim': rotary embeddings need an even head_dim"},
      {without(without(kSmol, "architectures"), "model_type"), "field 'architectures': missing"},
      {"[1, 2]", "expected a JSON object"},
      {"{\"hidden_size\": 5,}", "invalid JSON: expected a string key in object at byte 18"},
  };
  for (const Case& c : cases) {
    CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_json(c.json, "/m/config.json"), c.needle);
    CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_json(c.json, "/m/config.json"),
                 "/m/config.json: ");
  }
}

TEST(the_registry_tells_decoders_from_encoders) {
  using medrt::ArchKind;
  CHECK(medrt::find_arch("BertModel")->kind == ArchKind::Encoder);
  CHECK(medrt::find_arch("LlamaForCausalLM")->kind == ArchKind::Decoder);
  CHECK(medrt::find_arch_of("bert", "BertForMaskedLM")->arch == Arch::Bert);
  CHECK(medrt::find_arch_of("", "Qwen2ForCausalLM")->arch == Arch::Qwen2);
  CHECK(medrt::find_arch_of("gpt2", "GPT2LMHeadModel") == nullptr);
  CHECK(medrt::supported_architectures() ==
        "decoders: LlamaForCausalLM, Qwen2ForCausalLM; encoders: BertModel");
  // An encoder given to the decoder's parser is named and sent to the embedder, whether
  // its class is an entry (BertModel), its model_type is (BertForMaskedLM), or only the
  // model_type is written.
  const std::string to_embedder =
      "is an encoder (an embedding model), not a decoder: load it with medrt.Embedder or "
      "LLM(...).embed";
  CHECK_THROWS(InvalidCheckpoint,
               ModelConfig::from_json(with(kSmol, "architectures", R"(["BertModel"])"), "c"),
               "c: field 'architectures': \"BertModel\" " + to_embedder);
  CHECK_THROWS(InvalidCheckpoint,
               ModelConfig::from_json(with(with(kSmol, "architectures", R"(["BertForMaskedLM"])"),
                                           "model_type", "\"bert\""),
                                      "c"),
               "\"BertForMaskedLM\" " + to_embedder);
  CHECK_THROWS(InvalidCheckpoint,
               ModelConfig::from_json(with(without(kSmol, "architectures"), "model_type",
                                           "\"bert\""),
                                      "c"),
               "\"BertModel\" " + to_embedder);
  CHECK_THROWS(InvalidCheckpoint,
               ModelConfig::from_json(with(kSmol, "architectures", R"(["GPT2LMHeadModel"])"), "c"),
               "(medrt runs decoders: LlamaForCausalLM, Qwen2ForCausalLM; encoders: BertModel)");
}

TEST(reads_config_file) {
  auto dir = std::filesystem::temp_directory_path() /
             ("medrt_test_cfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / "config.json").string();
  std::ofstream(path) << kQwen;
  CHECK(ModelConfig::from_file(path).vocab_size == 151936);
  std::ofstream(path) << with(kQwen, "architectures", R"(["GPT2LMHeadModel"])");
  CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_file(path), path + ": field 'architectures'");
  std::filesystem::remove_all(dir);
  CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_file(path), path + ": no such file");
}

TEST(huge_config_file_is_refused_before_reading) {
  // A 65 MiB config.json (sparse: no disk used) is not a checkpoint file; it is refused by
  // its size, before it is read into memory.
  auto dir = std::filesystem::temp_directory_path() /
             ("medrt_test_bigcfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = (dir / "config.json").string();
  std::ofstream(path) << kQwen;
  std::filesystem::resize_file(path, 65ull << 20);
  CHECK_THROWS(InvalidCheckpoint, ModelConfig::from_file(path), "more than the 64 MiB");
  std::filesystem::remove_all(dir);
}
