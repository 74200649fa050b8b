// A sentence encoder: token rows in, one L2-normalised embedding per row out. Today the one
// architecture is BERT (all-MiniLM-L6-v2 and its kin): a Hugging Face directory whose
// config.json says "model_type": "bert", weights in model.safetensors. Embeddings are the mean
// of the last hidden states over each row's tokens, divided by their L2 norm (what
// sentence-transformers' Pooling(mean) + Normalize compute).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "medrt/arch.h"
#include "medrt/dtype.h"

namespace medrt {

struct EncoderConfig {
  Arch arch = Arch::Bert;  // its registry entry (arch.h), of kind ArchKind::Encoder
  std::string model_type;  // "bert"
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int intermediate_size = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  int type_vocab_size = 0;
  float layer_norm_eps = 1e-12f;

  // Parses config.json text; throws InvalidCheckpoint naming `source` and the field, and for
  // a model whose registry entry is not an encoder (a decoder's config.json names what it
  // is) or that has no entry.
  static EncoderConfig from_json(const std::string& json_text, const std::string& source);
};

struct EncoderOptions {
  // Through ThreadPool::resolve_num_threads (0: the physical cores this process may use; more
  // than the usable CPUs is refused with InvalidRequest).
  int n_threads = 0;
  // The type the linear weights are held in (F32, F16 or BF16), converted at load; the
  // embedding tables, norms and biases stay as stored and activations are f32 throughout.
  // nullopt is "auto", as vLLM's dtype="auto": an F32 checkpoint runs with F16 weights (half
  // the bytes per forward and within 1e-6 cosine of F32 on all-MiniLM-L6-v2, docs/semantic-
  // cache.md), an F16 or BF16 one as stored.
  std::optional<DType> weight_dtype;
};

class Encoder {
 public:
  // Loads <dir>/config.json and <dir>/model.safetensors; throws InvalidCheckpoint naming the
  // file (and tensor) that is missing or malformed, InvalidRequest for a weight_dtype that is
  // not a float type.
  static std::unique_ptr<Encoder> open(const std::string& dir, const EncoderOptions& options);
  static std::unique_ptr<Encoder> open(const std::string& dir, int n_threads = 0) {
    return open(dir, EncoderOptions{n_threads, std::nullopt});
  }
  virtual ~Encoder() = default;

  virtual const EncoderConfig& config() const = 0;
  int dim() const { return config().hidden_size; }
  // The type the linear weights are held in (EncoderOptions::weight_dtype, "auto" resolved).
  virtual DType weight_dtype() const = 0;

  // Embeds n_rows rows given packed: row r is tokens[offsets[r], offsets[r + 1]) (token type
  // 0, positions from 0). out: [n_rows, dim()]. A row's embedding does not depend on the other
  // rows. Throws InvalidRequest for an empty row, a row longer than max_position_embeddings or
  // a token outside the vocabulary. Not reentrant: one call at a time.
  virtual void embed(const int32_t* tokens, const int64_t* offsets, int64_t n_rows,
                     float* out) = 0;

  std::vector<float> embed(const std::vector<std::vector<int32_t>>& rows);
};

}  // namespace medrt
