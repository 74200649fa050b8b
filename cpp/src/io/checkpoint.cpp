// A Hugging Face model directory: config.json and either model.safetensors or the shards named
// by model.safetensors.index.json {"weight_map": {tensor: file}}.
#include <filesystem>
#include <set>

#include "io/json.h"
#include "io/read_file.h"
#include "medrt/checkpoint.h"
#include "medrt/error.h"

namespace medrt {

namespace fs = std::filesystem;

namespace {

// tensor -> shard file name, as the index lists it.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  json::Value index;
  try {
    index = json::parse(io::read_text_file(index_path));
  } catch (const json::ParseError& e) {
    throw InvalidCheckpoint(index_path + ": invalid JSON: " + e.what());
  }
  const json::Value* wm = index.find("weight_map");
  if (!wm || wm->type != json::Type::Object)
    throw InvalidCheckpoint(index_path + ": missing object 'weight_map'");
  std::map<std::string, std::string> out;
  for (const auto& [tensor, file] : wm->object) {
    if (file.type != json::Type::String)
      throw InvalidCheckpoint(index_path + ": tensor '" + tensor + "': file name is not a string");
    // Shards live beside the index; a path out of the directory is not a shard.
    fs::path p(file.string);
    if (file.string.empty() || p.has_parent_path() || p.is_absolute() || file.string == ".." ||
        file.string == ".")
      throw InvalidCheckpoint(index_path + ": tensor '" + tensor + "': shard name \"" +
                              file.string + "\" is not a file name in the checkpoint directory");
    out[tensor] = file.string;
  }
  return out;
}

}  // namespace

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InvalidCheckpoint(dir + ": not a directory");
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  ck->config_ = ModelConfig::from_file((fs::path(dir) / "config.json").string());

  std::string single = (fs::path(dir) / "model.safetensors").string();
  std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shard_paths;
  if (fs::exists(index_path, ec)) {
    weight_map = read_weight_map(index_path);
    std::set<std::string> shards;
    for (const auto& [tensor, file] : weight_map) {
      std::string path = (fs::path(dir) / file).string();
      if (shards.insert(file).second && !fs::is_regular_file(path, ec))
        throw InvalidCheckpoint(index_path + ": tensor '" + tensor + "': shard file " + path +
                                " does not exist");
    }
    for (const std::string& file : shards) shard_paths.push_back((fs::path(dir) / file).string());
  } else if (fs::exists(single, ec)) {
    shard_paths.push_back(single);
  } else {
    throw InvalidCheckpoint(dir + ": no model.safetensors or model.safetensors.index.json");
  }

  for (const std::string& path : shard_paths) {
    ck->files_.push_back(SafetensorsFile::open(path));
    const SafetensorsFile* f = ck->files_.back().get();
    for (const auto& [name, view] : f->tensors()) {
      auto [it, inserted] = ck->index_.emplace(name, std::make_pair(&view, f));
      if (!inserted)
        throw InvalidCheckpoint(dir + ": tensor '" + name + "' appears in both " +
                                it->second.second->path() + " and " + path);
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    std::string path = (fs::path(dir) / file).string();
    auto it = ck->index_.find(tensor);
    if (it == ck->index_.end())
      throw InvalidCheckpoint(index_path + ": tensor '" + tensor + "' is listed in " + path +
                              " but that file does not contain it");
    if (it->second.second->path() != path)
      throw InvalidCheckpoint(index_path + ": tensor '" + tensor + "' is listed in " + path +
                              " but stored in " + it->second.second->path());
  }
  return ck;
}

bool Checkpoint::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.first;
}

const TensorView& Checkpoint::get(const std::string& name,
                                  const std::vector<int64_t>& expected_shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::string searched;
    for (const auto& f : files_) searched += (searched.empty() ? "" : ", ") + f->path();
    throw InvalidCheckpoint(dir_ + ": tensor '" + name + "' is missing from the checkpoint (" +
                            searched + ")");
  }
  const TensorView& t = *it->second.first;
  if (t.shape != expected_shape) {
    TensorView expected;
    expected.shape = expected_shape;
    throw InvalidCheckpoint(it->second.second->path() + ": tensor '" + name + "' has shape " +
                            t.shape_str() + ", expected " + expected.shape_str());
  }
  return t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, entry] : index_) out.push_back(name);
  return out;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, entry] : index_) n += entry.first->nbytes;
  return n;
}

void Checkpoint::release_pages(const TensorView& t) const {
  if (!t.data || !t.nbytes) return;
  for (const auto& f : files_)
    if (f->release_pages(t)) return;
}

}  // namespace medrt
