// Safetensors files and checkpoint directories: crafted files for each way a file can be
// malformed, and a good sharded checkpoint whose tensors are read in place from the mapping.
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "check.h"
#include "medrt/checkpoint.h"
#include "medrt/error.h"

namespace fs = std::filesystem;
using medrt::Checkpoint;
using medrt::DType;
using medrt::InvalidCheckpoint;
using medrt::SafetensorsFile;

namespace {

fs::path temp_dir() {
  static int counter = 0;
  fs::path d = fs::temp_directory_path() /
               ("medrt_test_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(d);
  return d;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// A safetensors file: little-endian header length, header JSON, then the data bytes.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

const char* kConfig = R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 4,
  "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
  "num_key_value_heads": 1, "vocab_size": 3, "max_position_embeddings": 16,
  "rms_norm_eps": 1e-5})";

}  // namespace

TEST(opens_good_file_in_place) {
  fs::path d = temp_dir();
  fs::path p = d / "model.safetensors";
  // A 3-byte gap before "b" keeps its data unaligned, which the format allows.
  std::string header =
      R"({"__metadata__": {"format": "pt"},
          "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
          "b": {"dtype": "F16", "shape": [1], "data_offsets": [19, 21]},
          "empty": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [21, 21]}})";
  std::string data = floats({1.f, 2.f, 3.f, 4.f}) + std::string("\0\0\0\x00\x3c", 5);
  write_bytes(p, safetensors_bytes(header, data));
  auto f = SafetensorsFile::open(p.string());
  CHECK(f->path() == p.string());
  CHECK(f->tensors().size() == 3);
  CHECK(f->metadata().at("format") == "pt");
  const auto& a = f->tensors().at("a");
  CHECK(a.dtype == DType::F32 && a.shape_str() == "[2, 2]" && a.nbytes == 16);
  float a3;
  std::memcpy(&a3, static_cast<const char*>(a.data) + 12, 4);
  CHECK(a3 == 4.f);
  const auto& b = f->tensors().at("b");
  uint16_t h;
  std::memcpy(&h, b.data, 2);
  CHECK(b.dtype == DType::F16 && medrt::f16_to_f32(h) == 1.0f);
  CHECK(static_cast<const char*>(b.data) - static_cast<const char*>(a.data) == 19);
  CHECK(f->tensors().at("empty").nbytes == 0);
  fs::remove_all(d);
}

TEST(rejects_malformed_files) {
  fs::path d = temp_dir();
  struct Case {
    const char* what;
    std::string bytes;
    std::string needle;  // besides the file path, which every message names
  };
  std::string ok_data = floats({1.f, 2.f});
  std::vector<Case> cases = {
      {"short", "abc", "shorter than the 8-byte"},
      {"header_past_end", safetensors_bytes("{}", "").substr(0, 8) + "{", "runs past the end"},
      {"invalid_json",
       safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})",
                         ok_data),
       "invalid JSON header"},
      {"not_object", safetensors_bytes("[1]", ""), "expected an object"},
      {"unknown_dtype",
       safetensors_bytes(R"({"w.weight": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}})",
                         ok_data),
       "tensor 'w.weight': unknown dtype \"F99\""},
      {"size_mismatch",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
                         ok_data),
       "tensor 'w.weight': shape [3] x F32 is 12 bytes"},
      {"outside",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                         ok_data),
       "tensor 'w.weight': data_offsets [4, 12) lie outside"},
      {"reversed",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})",
                         ok_data),
       "tensor 'w.weight'"},
      {"overlap",
       safetensors_bytes(R"({"x.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "y.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                         ok_data),
       "tensor 'y.weight': data overlaps tensor 'x.weight'"},
      {"duplicate",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "w.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                         ok_data),
       "duplicate key \"w.weight\""},
      {"bad_shape",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})",
                         ok_data),
       "tensor 'w.weight': shape entries"},
      {"huge_shape",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32",
                             "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
                         ok_data),
       "tensor 'w.weight': shape [4294967296, 4294967296] is too large"},
      {"missing_offsets",
       safetensors_bytes(R"({"w.weight": {"dtype": "F32", "shape": [2]}})", ok_data),
       "tensor 'w.weight': missing 'data_offsets'"},
  };
  for (const Case& c : cases) {
    fs::path p = d / (std::string(c.what) + ".safetensors");
    write_bytes(p, c.bytes);
    CHECK_THROWS(InvalidCheckpoint, SafetensorsFile::open(p.string()), p.string());
    CHECK_THROWS(InvalidCheckpoint, SafetensorsFile::open(p.string()), c.needle);
  }
  CHECK_THROWS(InvalidCheckpoint, SafetensorsFile::open((d / "absent").string()), "cannot open");
  CHECK_THROWS(InvalidCheckpoint, SafetensorsFile::open(d.string()), "not a regular file");
  fs::remove_all(d);
}

namespace {
// A two-shard checkpoint: embed in shard 1, norm and lm_head in shard 2.
fs::path write_sharded(const std::string& index_json) {
  fs::path d = temp_dir();
  write_bytes(d / "config.json", kConfig);
  write_bytes(d / "model-00001-of-00002.safetensors",
              safetensors_bytes(R"({"model.embed_tokens.weight": {"dtype": "F32",
                                    "shape": [1, 2], "data_offsets": [0, 8]}})",
                                floats({1.f, 2.f})));
  write_bytes(d / "model-00002-of-00002.safetensors",
              safetensors_bytes(
                  R"({"model.norm.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "lm_head.weight": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                  floats({3.f, 4.f, 5.f})));
  write_bytes(d / "model.safetensors.index.json", index_json);
  return d;
}

const char* kGoodIndex = R"({"metadata": {"total_size": 20}, "weight_map": {
  "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
  "model.norm.weight": "model-00002-of-00002.safetensors",
  "lm_head.weight": "model-00002-of-00002.safetensors"}})";
}  // namespace

TEST(opens_sharded_checkpoint) {
  fs::path d = write_sharded(kGoodIndex);
  auto ck = Checkpoint::open(d.string());
  CHECK(ck->config().hidden_size == 4);
  CHECK(ck->names().size() == 3);
  CHECK(ck->has("lm_head.weight") && !ck->has("nope"));
  CHECK(ck->find("nope") == nullptr && ck->find("lm_head.weight")->shape_str() == "[1]");
  CHECK(ck->total_bytes() == 20);
  const auto& norm = ck->get("model.norm.weight", {2});
  float v;
  std::memcpy(&v, static_cast<const char*>(norm.data) + 4, 4);
  CHECK(v == 4.f);
  CHECK_THROWS(InvalidCheckpoint, ck->get("model.layers.0.mlp.up_proj.weight", {8, 4}),
               "tensor 'model.layers.0.mlp.up_proj.weight' is missing");
  CHECK_THROWS(InvalidCheckpoint, ck->get("x", {1}), "model-00002-of-00002.safetensors)");
  CHECK_THROWS(InvalidCheckpoint, ck->get("model.norm.weight", {4}),
               "model-00002-of-00002.safetensors: tensor 'model.norm.weight' has shape [2], "
               "expected [4]");
  fs::remove_all(d);
}

TEST(opens_single_file_checkpoint) {
  fs::path d = temp_dir();
  write_bytes(d / "config.json", kConfig);
  write_bytes(d / "model.safetensors",
              safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                floats({1.f, 2.f})));
  auto ck = Checkpoint::open(d.string());
  CHECK(ck->names() == std::vector<std::string>{"w"});
  fs::remove_all(d);
}

TEST(rejects_bad_checkpoints) {
  {
    fs::path d = write_sharded(R"({"weight_map": {
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.norm.weight": "model-00003-of-00003.safetensors"}})");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()),
                 "tensor 'model.norm.weight': shard file");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()),
                 "model-00003-of-00003.safetensors does not exist");
    fs::remove_all(d);
  }
  {
    fs::path d = write_sharded(R"({"weight_map": {
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
      "model.norm.weight": "model-00002-of-00002.safetensors"}})");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()),
                 "tensor 'model.layers.0.self_attn.q_proj.weight' is listed in");
    fs::remove_all(d);
  }
  {
    fs::path d = write_sharded(R"({"weight_map": {
      "model.embed_tokens.weight": "model-00002-of-00002.safetensors",
      "model.norm.weight": "model-00002-of-00002.safetensors"}})");
    write_bytes(d / "model-00002-of-00002.safetensors",
                safetensors_bytes(R"({"model.embed_tokens.weight": {"dtype": "F32",
                                      "shape": [1], "data_offsets": [0, 4]}})",
                                  floats({1.f})));
    // Index and files disagree, and the tensor now lives in two shards.
    write_bytes(d / "model.safetensors.index.json", R"({"weight_map": {
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "x": "model-00002-of-00002.safetensors"}})");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()),
                 "tensor 'model.embed_tokens.weight' appears in both");
    fs::remove_all(d);
  }
  {
    fs::path d = write_sharded(R"({"weight_map": {"w": "../model.safetensors"}})");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()), "tensor 'w': shard name");
    fs::remove_all(d);
  }
  {
    fs::path d = write_sharded(R"({"weight_map": [}})");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()), "invalid JSON");
    fs::remove_all(d);
  }
  {
    fs::path d = temp_dir();
    write_bytes(d / "config.json", kConfig);
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()), "no model.safetensors");
    fs::remove(d / "config.json");
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()), "config.json: no such file");
    fs::remove_all(d);
    CHECK_THROWS(InvalidCheckpoint, Checkpoint::open(d.string()), "not a directory");
  }
}

TEST(huge_array_header_is_refused_without_gigabytes) {
  // A 100 MiB header of [0,0,0,...] (the largest size allowed) holds 52 million values: parsed
  // whole it would take ~6 GB. The value limit stops it after kMaxValues.
  fs::path d = temp_dir();
  std::string header(100u << 20, '0');
  header[0] = '[';
  for (size_t i = 2; i + 1 < header.size(); i += 2) header[i] = ',';
  header.back() = ']';
  write_bytes(d / "big.safetensors", safetensors_bytes(header, ""));
  header = std::string();
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  CHECK_THROWS(InvalidCheckpoint, SafetensorsFile::open((d / "big.safetensors").string()),
               "more than 2000000 values");
  getrusage(RUSAGE_SELF, &after);
  const long grew_mib = (after.ru_maxrss - before.ru_maxrss) / 1024;
  std::printf("peak RSS grew by %ld MiB\n", grew_mib);
  CHECK(grew_mib < 1024);
  fs::remove_all(d);
}
