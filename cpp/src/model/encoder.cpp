// Encoder::open: config.json names the architecture, the registry (arch.h) says it is an
// encoder, and the entry picks the forward. A decoder directory is refused by
// EncoderConfig::from_json, naming what it is.
#include <filesystem>

#include "io/read_file.h"
#include "medrt/encoder.h"
#include "medrt/error.h"
#include "model/bert_encoder.h"

namespace medrt {

std::unique_ptr<Encoder> Encoder::open(const std::string& dir, const EncoderOptions& options) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw InvalidCheckpoint(dir + ": not a directory (expected a BERT model directory)");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  EncoderConfig config = EncoderConfig::from_json(io::read_text_file(config_path), config_path);
  switch (config.arch) {
    case Arch::Bert:
      return std::make_unique<model::BertEncoder>(dir, std::move(config), options);
    case Arch::Llama:
    case Arch::Qwen2: break;  // decoders: from_json has refused them
  }
  throw InvalidCheckpoint(config_path + ": " + arch_spec(config.arch).hf_name +
                          " has no encoder forward");
}

std::vector<float> Encoder::embed(const std::vector<std::vector<int32_t>>& rows) {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};
  for (const auto& r : rows) {
    tokens.insert(tokens.end(), r.begin(), r.end());
    offsets.push_back(int64_t(tokens.size()));
  }
  std::vector<float> out(rows.size() * size_t(dim()));
  embed(tokens.data(), offsets.data(), int64_t(rows.size()), out.data());
  return out;
}

}  // namespace medrt
