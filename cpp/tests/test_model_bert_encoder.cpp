// The BERT encoder (medrt/encoder.h) on a tiny random checkpoint against a double-precision
// reference written out from the math (embeddings + LayerNorm, post-LN layers with GELU,
// mean pooling, L2 normalisation), plus its config checks and input errors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "isas.h"
#include "medrt/encoder.h"
#include "medrt/error.h"
#include "medrt/kernels.h"
#include "tiny_checkpoint.h"

using namespace medrt;
using medrt_test::TempDir;
using medrt_test::TinyCheckpoint;
using medrt_test::TinyTensor;

namespace {

constexpr int kVocab = 50, kHidden = 24, kHeads = 3, kInter = 40, kLayers = 2, kMaxPos = 16;

const char* kBertConfig = R"({"model_type": "bert", "architectures": ["BertModel"],
  "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
  "intermediate_size": 40, "vocab_size": 50, "max_position_embeddings": 16,
  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"})";

using Mat = std::vector<double>;

struct Bert {
  std::map<std::string, std::vector<float>> w;

  void add(TinyCheckpoint& ck, std::mt19937& rng, const std::string& name,
           std::vector<int64_t> shape, float scale, float offset = 0.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::uniform_real_distribution<float> u(-scale, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = offset + u(rng);
    TinyTensor t;
    t.shape = shape;
    t.bytes.resize(v.size() * 4);
    std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
    ck.tensors[name] = t;
    w[name] = v;
  }

  void make(TinyCheckpoint& ck, uint32_t seed) {
    std::mt19937 rng(seed);
    add(ck, rng, "embeddings.word_embeddings.weight", {kVocab, kHidden}, 1.0f);
    add(ck, rng, "embeddings.position_embeddings.weight", {kMaxPos, kHidden}, 0.5f);
    add(ck, rng, "embeddings.token_type_embeddings.weight", {2, kHidden}, 0.5f);
    add(ck, rng, "embeddings.LayerNorm.weight", {kHidden}, 0.2f, 1.0f);
    add(ck, rng, "embeddings.LayerNorm.bias", {kHidden}, 0.2f);
    const float s = 1.0f / std::sqrt(float(kHidden)), si = 1.0f / std::sqrt(float(kInter));
    for (int i = 0; i < kLayers; ++i) {
      const std::string p = "encoder.layer." + std::to_string(i) + ".";
      for (const char* m : {"attention.self.query", "attention.self.key", "attention.self.value",
                            "attention.output.dense"}) {
        add(ck, rng, p + m + ".weight", {kHidden, kHidden}, s);
        add(ck, rng, p + m + ".bias", {kHidden}, 0.1f);
      }
      add(ck, rng, p + "intermediate.dense.weight", {kInter, kHidden}, s);
      add(ck, rng, p + "intermediate.dense.bias", {kInter}, 0.1f);
      add(ck, rng, p + "output.dense.weight", {kHidden, kInter}, si);
      add(ck, rng, p + "output.dense.bias", {kHidden}, 0.1f);
      for (const char* ln : {"attention.output.LayerNorm", "output.LayerNorm"}) {
        add(ck, rng, p + ln + ".weight", {kHidden}, 0.2f, 1.0f);
        add(ck, rng, p + ln + ".bias", {kHidden}, 0.2f);
      }
    }
  }

  // The same model with every linear weight (not the tables, norms or biases) rounded to
  // `to`, as the encoder holds them with EncoderOptions::weight_dtype = to.
  Bert rounded(DType to) const {
    Bert r = *this;
    for (auto& [name, v] : r.w) {
      const bool linear = name.find("encoder.layer.") == 0 && name.size() > 12 &&
                          name.compare(name.size() - 12, 12, "dense.weight") == 0;
      const bool qkv = name.find("attention.self.") != std::string::npos &&
                       name.compare(name.size() - 7, 7, ".weight") == 0;
      if (!linear && !qkv) continue;
      for (float& x : v)
        x = to == DType::F16 ? f16_to_f32(f32_to_f16(x))
            : to == DType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x;
    }
    return r;
  }

  Mat linear(const Mat& x, int64_t T, const std::string& name, int64_t out, int64_t in) const {
    const auto& W = w.at(name + ".weight");
    const auto& b = w.at(name + ".bias");
    Mat y(size_t(T * out));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < out; ++o) {
        double acc = b[size_t(o)];
        for (int64_t i = 0; i < in; ++i) acc += x[size_t(t * in + i)] * W[size_t(o * in + i)];
        y[size_t(t * out + o)] = acc;
      }
    return y;
  }

  void layernorm(Mat& x, int64_t T, const std::string& name) const {
    const auto& g = w.at(name + ".weight");
    const auto& b = w.at(name + ".bias");
    for (int64_t t = 0; t < T; ++t) {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < kHidden; ++i) mean += x[size_t(t * kHidden + i)];
      mean /= kHidden;
      for (int64_t i = 0; i < kHidden; ++i) var += std::pow(x[size_t(t * kHidden + i)] - mean, 2);
      var /= kHidden;
      for (int64_t i = 0; i < kHidden; ++i) {
        double& v = x[size_t(t * kHidden + i)];
        v = (v - mean) / std::sqrt(var + 1e-12) * g[size_t(i)] + b[size_t(i)];
      }
    }
  }

  // One row alone, the way the model card describes BERT.
  std::vector<double> embed(const std::vector<int32_t>& tok) const {
    const int64_t T = int64_t(tok.size()), H = kHidden, hd = H / kHeads;
    Mat x(size_t(T * H));
    const auto& word = w.at("embeddings.word_embeddings.weight");
    const auto& pos = w.at("embeddings.position_embeddings.weight");
    const auto& type = w.at("embeddings.token_type_embeddings.weight");
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i)
        x[size_t(t * H + i)] =
            word[size_t(tok[size_t(t)] * H + i)] + pos[size_t(t * H + i)] + type[size_t(i)];
    layernorm(x, T, "embeddings.LayerNorm");
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = "encoder.layer." + std::to_string(l) + ".";
      Mat q = linear(x, T, p + "attention.self.query", H, H);
      Mat k = linear(x, T, p + "attention.self.key", H, H);
      Mat v = linear(x, T, p + "attention.self.value", H, H);
      Mat ctx(size_t(T * H), 0.0);
      for (int64_t h = 0; h < kHeads; ++h)
        for (int64_t i = 0; i < T; ++i) {
          std::vector<double> s(static_cast<size_t>(T));
          double mx = -1e300, sum = 0;
          for (int64_t j = 0; j < T; ++j) {
            double d = 0;
            for (int64_t c = 0; c < hd; ++c)
              d += q[size_t(i * H + h * hd + c)] * k[size_t(j * H + h * hd + c)];
            s[size_t(j)] = d / std::sqrt(double(hd));
            mx = std::max(mx, s[size_t(j)]);
          }
          for (auto& e : s) sum += (e = std::exp(e - mx));
          for (int64_t j = 0; j < T; ++j)
            for (int64_t c = 0; c < hd; ++c)
              ctx[size_t(i * H + h * hd + c)] += s[size_t(j)] / sum * v[size_t(j * H + h * hd + c)];
        }
      Mat a = linear(ctx, T, p + "attention.output.dense", H, H);
      for (size_t i = 0; i < x.size(); ++i) x[i] += a[i];
      layernorm(x, T, p + "attention.output.LayerNorm");
      Mat f = linear(x, T, p + "intermediate.dense", kInter, H);
      for (auto& e : f) e = 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
      Mat o = linear(f, T, p + "output.dense", H, kInter);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      layernorm(x, T, p + "output.LayerNorm");
    }
    std::vector<double> e(size_t(H), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) e[size_t(i)] += x[size_t(t * H + i)] / double(T);
    double n = 0;
    for (double v : e) n += v * v;
    for (double& v : e) v /= std::sqrt(n);
    return e;
  }
};

void write_bert(const std::filesystem::path& dir, Bert& bert) {
  TinyCheckpoint ck;
  ck.tensors.clear();
  bert.make(ck, 11);
  ck.write(dir);
  std::ofstream(dir / "config.json") << kBertConfig;  // replaces the decoder config
}

}  // namespace

TEST(config_refuses_a_decoder_and_bad_fields) {
  CHECK_THROWS(InvalidCheckpoint,
               EncoderConfig::from_json(R"({"model_type": "llama",
                   "architectures": ["LlamaForCausalLM"]})", "x/config.json"),
               "x/config.json: model_type 'llama' (LlamaForCausalLM) is a decoder, not a BERT "
               "encoder; medrt.LLM generates with it, and an embedding model needs one of "
               "BertModel");
  // No entry at all: named, with what medrt runs.
  CHECK_THROWS(InvalidCheckpoint,
               EncoderConfig::from_json(R"({"model_type": "gpt2",
                   "architectures": ["GPT2Model"]})", "x/config.json"),
               "model_type 'gpt2' (GPT2Model) is not a BERT encoder; an embedding model needs "
               "\"model_type\": \"bert\" (medrt runs decoders: LlamaForCausalLM");
  // A BertForX class is found by its model_type.
  std::string masked = kBertConfig;
  masked.replace(masked.find("BertModel"), 9, "BertForMaskedLM");
  CHECK(EncoderConfig::from_json(masked, "c").arch == medrt::Arch::Bert);
  CHECK_THROWS(InvalidCheckpoint,
               EncoderConfig::from_json(R"({"model_type": "bert", "hidden_size": 24})", "c"),
               "field 'num_hidden_layers': missing");
  std::string cfg = kBertConfig;
  CHECK_THROWS(InvalidCheckpoint,
               EncoderConfig::from_json(cfg.replace(cfg.find("\"gelu\""), 6, "\"relu\""), "c"),
               "hidden_act");
  CHECK_THROWS(InvalidCheckpoint, EncoderConfig::from_json("{not json", "c"), "not valid JSON");
  const EncoderConfig c = EncoderConfig::from_json(kBertConfig, "c");
  CHECK(c.hidden_size == 24 && c.num_layers == 2 && c.num_heads == 3 && c.vocab_size == 50);
}

TEST(embeddings_match_the_reference_on_every_isa) {
  TempDir dir("bert");
  Bert bert;
  write_bert(dir.path, bert);
  const std::vector<std::vector<int32_t>> rows{{1, 7, 3, 9, 2}, {4}, {5, 6, 7, 8, 9, 10, 11, 12,
                                                                       13, 14, 15, 16, 17}};
  for (cpu::Isa isa : isas())
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      cpu::set_isa(isa);
      auto enc = Encoder::open(dir.path.string(), EncoderOptions{2, dt});
      CHECK(enc->dim() == kHidden);
      CHECK(enc->weight_dtype() == dt);
      const Bert held = bert.rounded(dt);
      const std::vector<float> got = enc->embed(rows);
      for (size_t r = 0; r < rows.size(); ++r) {
        const auto ref = held.embed(rows[r]);
        for (int i = 0; i < kHidden; ++i)
          CHECK_NEAR(got[r * kHidden + size_t(i)], ref[size_t(i)], 2e-5);
        // A row alone is bit-identical to the same row in a batch.
        const std::vector<float> alone = enc->embed({rows[r]});
        for (int i = 0; i < kHidden; ++i) CHECK(alone[size_t(i)] == got[r * kHidden + size_t(i)]);
      }
    }
  cpu::set_isa(cpu::detected_isa());
}

TEST(weights_are_held_as_f16_by_default_for_an_f32_checkpoint) {
  TempDir dir("bert_auto");
  Bert bert;
  write_bert(dir.path, bert);
  auto enc = Encoder::open(dir.path.string(), 1);
  CHECK(enc->weight_dtype() == DType::F16);
  const std::vector<int32_t> row{1, 7, 3, 9, 2};
  const std::vector<float> got = enc->embed({row});
  const auto held = bert.rounded(DType::F16).embed(row), stored = bert.embed(row);
  double off = 0;
  for (int i = 0; i < kHidden; ++i) {
    CHECK_NEAR(got[size_t(i)], held[size_t(i)], 2e-5);
    off = std::max(off, std::abs(held[size_t(i)] - stored[size_t(i)]));
  }
  CHECK(off > 2e-5);  // the rounding is visible: the reference above is not the f32 one
  CHECK_THROWS(InvalidRequest, Encoder::open(dir.path.string(), EncoderOptions{1, DType::I8}),
               "encoder weight dtype I8: expected F32, F16 or BF16");
}

TEST(bad_rows_and_missing_tensors_are_named) {
  TempDir dir("bert_bad");
  Bert bert;
  write_bert(dir.path, bert);
  auto enc = Encoder::open(dir.path.string(), 1);
  CHECK_THROWS(InvalidRequest, enc->embed({{1, 2}, {}}), "row 1 has no tokens");
  CHECK_THROWS(InvalidRequest, enc->embed({std::vector<int32_t>(17, 1)}), "at most 16");
  CHECK_THROWS(InvalidRequest, enc->embed({{1, 50}}), "outside the vocabulary");

  TinyCheckpoint ck;
  ck.tensors.clear();
  Bert partial;
  partial.make(ck, 12);
  ck.tensors.erase("encoder.layer.1.output.dense.bias");
  TempDir dir2("bert_missing");
  ck.write(dir2.path);
  std::ofstream(dir2.path / "config.json") << kBertConfig;
  CHECK_THROWS(InvalidCheckpoint, Encoder::open(dir2.path.string(), 1),
               "tensor 'encoder.layer.1.output.dense.bias' is missing");
  CHECK_THROWS(InvalidCheckpoint, Encoder::open((dir2.path / "nope").string(), 1),
               "not a directory");
}
