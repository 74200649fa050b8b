// Safetensors checkpoints read over mmap and validated before any tensor is used.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "medrt/config.h"
#include "medrt/tensor.h"

namespace medrt {

// One .safetensors file, memory-mapped read-only. open() validates the header (length within
// the file, well-formed JSON, known dtypes, shape x dtype size == byte span, spans inside the
// data area and not overlapping) and throws InvalidCheckpoint naming the file and tensor.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops the mapped pages that lie wholly inside t's bytes from this process's memory (they
  // are read again from the file if touched); false when t is not in this file's mapping.
  bool release_pages(const TensorView& t) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model directory: config.json plus model.safetensors or sharded files listed in
// model.safetensors.index.json.
class Checkpoint {
 public:
  static std::unique_ptr<Checkpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  bool has(const std::string& name) const;
  // The tensor as stored, or nullptr when absent (for inspection; loaders use get()).
  const TensorView* find(const std::string& name) const;
  // The tensor, checked against the expected shape; throws InvalidCheckpoint naming the
  // tensor and its file when it is missing or shaped otherwise.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  std::vector<std::string> names() const;
  size_t total_bytes() const;  // bytes of all tensors (weights) in the mapping
  // SafetensorsFile::release_pages for the file holding t: once a backend has its own copy of
  // a weight, the mapped pages would only double its resident memory. No-op for other memory.
  void release_pages(const TensorView& t) const;

 private:
  std::string dir_;
  ModelConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const TensorView*, const SafetensorsFile*>> index_;
};

}  // namespace medrt
