// Writes a small Llama-style checkpoint (config.json + model.safetensors) with random weights,
// byte by byte, so that the model tests need neither Python nor files from elsewhere.
#pragma once
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace medrt_test {

struct TinyTensor {
  std::string dtype = "F32";  // safetensors spelling
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

struct TinyCheckpoint {
  int vocab = 64, hidden = 32, intermediate = 48, layers = 2, heads = 4, kv_heads = 2;
  int head_dim = 8, max_pos = 256;
  bool tie = false;
  bool attention_bias = true;  // exercises the q/k/v/o bias path of Llama
  std::map<std::string, TinyTensor> tensors;

  // Random f32 weights with the shapes the config implies; std ~ 1/sqrt(fan_in) keeps the
  // activations O(1) through the layers.
  void fill_random(uint32_t seed) {
    std::mt19937 rng(seed);
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale,
                   float offset = 0.0f) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::uniform_real_distribution<float> u(-scale, scale);
      std::vector<float> v(static_cast<size_t>(n));
      for (float& x : v) x = offset + u(rng);
      TinyTensor t;
      t.shape = shape;
      t.bytes.resize(v.size() * 4);
      std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
      tensors[name] = t;
    };
    const int64_t D = hidden, F = intermediate, Q = heads * head_dim, KV = kv_heads * head_dim;
    auto fan = [](int64_t in) { return std::sqrt(3.0f / float(in)); };
    add("model.embed_tokens.weight", {vocab, D}, 1.0f);
    for (int i = 0; i < layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      add(p + "input_layernorm.weight", {D}, 0.2f, 1.0f);
      add(p + "post_attention_layernorm.weight", {D}, 0.2f, 1.0f);
      add(p + "self_attn.q_proj.weight", {Q, D}, fan(D));
      add(p + "self_attn.k_proj.weight", {KV, D}, fan(D));
      add(p + "self_attn.v_proj.weight", {KV, D}, fan(D));
      add(p + "self_attn.o_proj.weight", {D, Q}, fan(Q));
      if (attention_bias) {
        add(p + "self_attn.q_proj.bias", {Q}, 0.3f);
        add(p + "self_attn.k_proj.bias", {KV}, 0.3f);
        add(p + "self_attn.v_proj.bias", {KV}, 0.3f);
        add(p + "self_attn.o_proj.bias", {D}, 0.3f);
      }
      add(p + "mlp.gate_proj.weight", {F, D}, fan(D));
      add(p + "mlp.up_proj.weight", {F, D}, fan(D));
      add(p + "mlp.down_proj.weight", {D, F}, fan(F));
    }
    add("model.norm.weight", {D}, 0.2f, 1.0f);
    if (!tie) add("lm_head.weight", {vocab, D}, fan(D));
  }

  std::string config_json() const {
    auto b = [](bool x) { return x ? "true" : "false"; };
    return "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
           "\"hidden_size\": " + std::to_string(hidden) +
           ", \"intermediate_size\": " + std::to_string(intermediate) +
           ", \"num_hidden_layers\": " + std::to_string(layers) +
           ", \"num_attention_heads\": " + std::to_string(heads) +
           ", \"num_key_value_heads\": " + std::to_string(kv_heads) +
           ", \"head_dim\": " + std::to_string(head_dim) +
           ", \"vocab_size\": " + std::to_string(vocab) +
           ", \"max_position_embeddings\": " + std::to_string(max_pos) +
           ", \"rms_norm_eps\": 1e-05, \"hidden_act\": \"silu\", \"attention_bias\": " +
           b(attention_bias) + ", \"tie_word_embeddings\": " + b(tie) +
           ", \"bos_token_id\": 1, \"eos_token_id\": 2, \"dtype\": \"float32\", "
           "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 10000.0, "
           "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
           "\"original_max_position_embeddings\": 32}}";
  }

  // Safetensors: u64 header length, JSON header (padded to 8 bytes), then the data.
  void write(const std::filesystem::path& dir) const {
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << config_json();
    std::string header = "{";
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      if (header.size() > 1) header += ",";
      header += "\"" + name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
      for (size_t i = 0; i < t.shape.size(); ++i) {
        if (i) header += ",";
        header += std::to_string(t.shape[i]);
      }
      header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
                std::to_string(offset + t.bytes.size()) + "]}";
      offset += t.bytes.size();
    }
    header += "}";
    while (header.size() % 8) header += " ";
    std::ofstream f(dir / "model.safetensors", std::ios::binary);
    uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), std::streamsize(header.size()));
    for (const auto& [name, t] : tensors)
      f.write(reinterpret_cast<const char*>(t.bytes.data()), std::streamsize(t.bytes.size()));
  }
};

// A fresh directory under the system temp dir, removed when the object goes.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    path = std::filesystem::temp_directory_path() /
           ("medrt_" + tag + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace medrt_test
