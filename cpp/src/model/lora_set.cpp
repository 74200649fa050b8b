#include "model/lora_set.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "medrt/error.h"

namespace medrt::model {

struct LoraSet::Module {
  int64_t rank = 0, in = 0, out = 0;
  std::vector<float> a;   // [rank, in]
  std::vector<float> bt;  // B transposed, [rank, out]: the expand adds one contiguous row per rank
};

struct LoraSet::Adapter {
  float scale = 1.0f;
  std::vector<Module> modules;  // [layer * kLoraProjs + proj]; rank 0: not adapted
};

namespace {

const char* const kProjNames[kLoraProjs] = {"self_attn.q_proj", "self_attn.k_proj",
                                            "self_attn.v_proj", "self_attn.o_proj",
                                            "mlp.gate_proj",    "mlp.up_proj",
                                            "mlp.down_proj"};

// [out, in] of each projection.
std::pair<int64_t, int64_t> proj_shape(const ModelConfig& c, int p) {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  const int64_t q = int64_t(c.num_heads) * c.head_dim, kv = int64_t(c.num_kv_heads) * c.head_dim;
  switch (LoraProj(p)) {
    case LoraProj::Q: return {q, D};
    case LoraProj::K:
    case LoraProj::V: return {kv, D};
    case LoraProj::O: return {D, q};
    case LoraProj::Gate:
    case LoraProj::Up: return {F, D};
    case LoraProj::Down: return {D, F};
  }
  return {0, 0};
}

// "model.layers.<i>.<proj>" -> (i, proj); false when it is not such a name.
bool parse_module(const std::string& name, int64_t n_layers, int64_t& layer, int& proj) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  const std::string idx = name.substr(prefix.size(), dot - prefix.size());
  if (!std::all_of(idx.begin(), idx.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) ||
      idx.size() > 6)
    return false;
  layer = std::stoll(idx);
  if (layer >= n_layers) return false;
  const std::string rest = name.substr(dot + 1);
  for (int p = 0; p < kLoraProjs; ++p)
    if (rest == kProjNames[p]) return proj = p, true;
  return false;
}

// A dot product with eight independent partial sums (vectorisable without reassociation),
// combined in a fixed order: the same result for a row whatever else is in the batch.
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

}  // namespace

LoraSet::LoraSet(const ModelConfig& cfg, ThreadPool& pool) : cfg_(cfg), pool_(pool) {}
LoraSet::~LoraSet() = default;

void LoraSet::add(int32_t id, const LoraAdapterWeights& w) {
  if (id <= 0) throw InvalidRequest("LoRA adapter id " + std::to_string(id) + ": must be > 0");
  if (adapters_.count(id)) throw InvalidRequest("LoRA adapter id " + std::to_string(id) + " is already loaded");
  if (w.modules.empty()) throw InvalidCheckpoint("LoRA adapter " + std::to_string(id) + ": no modules");
  auto ad = std::make_unique<Adapter>();
  ad->scale = w.scale;
  ad->modules.resize(size_t(cfg_.num_layers) * kLoraProjs);
  for (const LoraModuleWeights& m : w.modules) {
    int64_t layer = 0;
    int p = 0;
    const std::string what = "LoRA adapter " + std::to_string(id) + ": module '" + m.module + "'";
    if (!parse_module(m.module, cfg_.num_layers, layer, p))
      throw InvalidCheckpoint(what + " is not a projection of this model (model.layers.<0.." +
                              std::to_string(cfg_.num_layers - 1) +
                              ">.self_attn.{q,k,v,o}_proj or .mlp.{gate,up,down}_proj)");
    auto [out, in] = proj_shape(cfg_, p);
    if (m.rank <= 0 || m.in != in || m.out != out ||
        int64_t(m.a.size()) != m.rank * in || int64_t(m.b.size()) != out * m.rank)
      throw InvalidCheckpoint(what + ": lora_A [" + std::to_string(m.rank) + ", " +
                              std::to_string(m.in) + "] / lora_B [" + std::to_string(m.out) +
                              ", " + std::to_string(m.rank) + "] do not fit the base [" +
                              std::to_string(out) + ", " + std::to_string(in) + "]");
    Module& mod = ad->modules[size_t(layer * kLoraProjs + p)];
    if (mod.rank) throw InvalidCheckpoint(what + " appears twice");
    mod.rank = m.rank, mod.in = in, mod.out = out;
    mod.a = m.a;
    mod.bt.resize(size_t(m.rank * out));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < m.rank; ++k) mod.bt[size_t(k * out + o)] = m.b[size_t(o * m.rank + k)];
  }
  adapters_.emplace(id, std::move(ad));
}

bool LoraSet::remove(int32_t id) { return adapters_.erase(id) != 0; }

void LoraSet::group(const std::vector<int32_t>& row_adapter, const int32_t* pick, int64_t n,
                    LoraRows& out) const {
  out.rows.clear();
  out.owner.clear();
  if (row_adapter.empty() || adapters_.empty()) {
    for (int32_t id : row_adapter)
      if (id != 0) throw InvalidRequest("LoRA adapter id " + std::to_string(id) + " is not loaded");
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = row_adapter[size_t(pick ? pick[i] : i)];
    if (id == 0) continue;
    if (!adapters_.count(id))
      throw InvalidRequest("LoRA adapter id " + std::to_string(id) + " is not loaded");
    out.rows.push_back(int32_t(i));
  }
  // Adapter by adapter (then row order): a thread's contiguous chunk mostly reads one A and B.
  auto id_of = [&](int32_t r) { return row_adapter[size_t(pick ? pick[r] : r)]; };
  std::stable_sort(out.rows.begin(), out.rows.end(),
                   [&](int32_t x, int32_t y) { return id_of(x) < id_of(y); });
  out.owner.reserve(out.rows.size());
  for (int32_t r : out.rows) out.owner.push_back(adapters_.at(id_of(r)).get());
}

void LoraSet::apply(int64_t layer, LoraProj p, const LoraRows& rows, const float* x,
                    float* y) const {
  if (rows.empty()) return;
  const size_t slot = size_t(layer * kLoraProjs + int(p));
  auto [out, in] = proj_shape(cfg_, int(p));
  pool_.parallel_for(int64_t(rows.rows.size()), [&](int, int64_t begin, int64_t end) {
    std::vector<float> z;
    for (int64_t i = begin; i < end; ++i) {
      const Adapter& ad = *static_cast<const Adapter*>(rows.owner[size_t(i)]);
      const Module& m = ad.modules[slot];
      if (m.rank == 0) continue;
      const int64_t r = rows.rows[size_t(i)];
      const float* xr = x + r * in;
      float* yr = y + r * out;
      z.resize(size_t(m.rank));
      for (int64_t k = 0; k < m.rank; ++k) z[size_t(k)] = ad.scale * dot(m.a.data() + k * in, xr, in);
      for (int64_t k = 0; k < m.rank; ++k) {
        const float zk = z[size_t(k)];
        const float* b = m.bt.data() + k * out;
        for (int64_t o = 0; o < out; ++o) yr[o] += zk * b[o];
      }
    }
  });
}

}  // namespace medrt::model
