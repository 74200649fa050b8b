// The adapters loaded in adapter mode and the per-row delta after each base projection.
//
// Per forward, the rows of the batch are grouped by adapter (LoraRows: row indices sorted by
// adapter, base rows left out); after a base linear y = x W^T, every adapted row r gets
//     y[r, :] += scale * (x[r, :] A^T) B^T
// with its adapter's A and B. Each row's delta is computed on its own, in a fixed order (the
// shrink as a dot product per rank, the expand adding rank by rank), so a row's result does not
// depend on which other rows or adapters share the batch (batch invariance). Host backends only.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "medrt/config.h"
#include "medrt/lora.h"
#include "medrt/thread_pool.h"

namespace medrt::model {

enum class LoraProj : int { Q, K, V, O, Gate, Up, Down };
constexpr int kLoraProjs = 7;

class LoraSet;

// The adapted rows of one set of activations, grouped by adapter.
struct LoraRows {
  std::vector<int32_t> rows;       // row indices, adapter by adapter
  std::vector<const void*> owner;  // the adapter of each entry of `rows`
  bool empty() const { return rows.empty(); }
};

class LoraSet {
 public:
  LoraSet(const ModelConfig& cfg, ThreadPool& pool);
  ~LoraSet();

  // Loads adapter `id` (> 0). Throws InvalidRequest for an id in use or <= 0, and
  // InvalidCheckpoint naming the module for a name that is not a projection of this model or a
  // shape that does not match it.
  void add(int32_t id, const LoraAdapterWeights& w);
  bool remove(int32_t id);  // false when not loaded
  bool has(int32_t id) const { return adapters_.count(id) != 0; }
  bool empty() const { return adapters_.empty(); }

  // Groups the rows whose adapter (row_adapter[i], 0: base) is loaded; `pick` (optional, n
  // entries) maps output row i to the index into row_adapter. Unknown ids throw InvalidRequest.
  void group(const std::vector<int32_t>& row_adapter, const int32_t* pick, int64_t n,
             LoraRows& out) const;

  // y[r, :] += delta of row r for every row in `rows` (x [*, in], y [*, out] of the projection).
  void apply(int64_t layer, LoraProj p, const LoraRows& rows, const float* x, float* y) const;

  struct Module;
  struct Adapter;

 private:
  const ModelConfig& cfg_;
  ThreadPool& pool_;
  std::map<int32_t, std::unique_ptr<Adapter>> adapters_;
};

}  // namespace medrt::model
