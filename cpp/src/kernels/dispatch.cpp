// The public ops: argument checks, dtype normalisation of small vectors (bias, norm weight),
// then the instruction set chosen by cpu_features.
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernels_impl.h"
#include "medrt/error.h"

namespace medrt::cpu {
namespace {

// AVX-512 machines run the AVX2 kernels for every op but linear (kernels.h).
bool simd() { return active_isa() != Isa::Portable; }

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

void convert(const void* src, DType dtype, int64_t n, float* dst) {
  if (simd())
    avx2::to_f32(src, dtype, n, dst);
  else
    portable::to_f32(src, dtype, n, dst);
}

// A [n] float vector as f32: the tensor itself when it already is, else a converted copy.
const float* as_f32(const TensorView& t, int64_t n, const char* what, std::vector<float>& buf) {
  if (!is_float(t.dtype) || t.numel() != n || t.data == nullptr)
    throw Error(std::string(what) + ": expected a float tensor of " + std::to_string(n) +
                " elements, got " + dtype_name(t.dtype) + " " + t.shape_str());
  if (t.dtype == DType::F32) return static_cast<const float*>(t.data);
  buf.resize(size_t(n));
  convert(t.data, t.dtype, n, buf.data());
  return buf.data();
}

}  // namespace

void linear(const float* x, int64_t M, int64_t K, const TensorView& W, const TensorView* bias,
            float* y, ThreadPool& pool) {
  if (W.shape.size() != 2 || W.shape[1] != K || !is_float(W.dtype) || W.data == nullptr)
    throw Error("linear: weight " + W.shape_str() + " " + dtype_name(W.dtype) +
                " does not match input width " + std::to_string(K));
  if (M <= 0 || W.shape[0] == 0) return;
  std::vector<float> bias_buf;
  const float* b = bias ? as_f32(*bias, W.shape[0], "linear bias", bias_buf) : nullptr;
  if (K == 0) {  // an empty sum: the bias alone
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < W.shape[0]; ++n) y[m * W.shape[0] + n] = b ? b[n] : 0.0f;
    return;
  }
  switch (active_isa()) {
    case Isa::Avx512: return avx512::linear(x, M, K, W, b, y, pool);
    case Isa::Avx2: return avx2::linear(x, M, K, W, b, y, pool);
    case Isa::Portable: return portable::linear(x, M, K, W, b, y, pool);
  }
}

void embedding(const int32_t* tokens, int64_t T, const TensorView& table, float* out) {
  if (table.shape.size() != 2 || !is_float(table.dtype) || table.data == nullptr)
    throw Error("embedding: table must be a 2-d float tensor, got " + table.shape_str());
  const int64_t V = table.shape[0], D = table.shape[1];
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= V)
      throw InvalidRequest("token id " + std::to_string(tokens[t]) +
                           " is outside the vocabulary [0, " + std::to_string(V) + ")");
  const size_t row_bytes = size_t(D) * dtype_size(table.dtype);
  for (int64_t t = 0; t < T; ++t)
    convert(static_cast<const char*>(table.data) + size_t(tokens[t]) * row_bytes, table.dtype, D,
            out + t * D);
}

void rmsnorm(const float* x, int64_t T, int64_t D, const TensorView& w, float eps, float* y) {
  std::vector<float> buf;
  const float* wf = as_f32(w, D, "rmsnorm weight", buf);
  if (simd())
    avx2::rmsnorm(x, T, D, wf, eps, y);
  else
    portable::rmsnorm(x, T, D, wf, eps, y);
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq) {
  if (head_dim % 2 != 0)
    throw Error("rope: head_dim must be even, got " + std::to_string(head_dim));
  if (simd())
    avx2::rope(x, T, n_heads, head_dim, positions, inv_freq);
  else
    portable::rope(x, T, n_heads, head_dim, positions, inv_freq);
}

void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, int64_t stride,
              float* out) {
  if (simd())
    avx2::silu_mul(gate, up, T, F, stride, out);
  else
    portable::silu_mul(gate, up, T, F, stride, out);
}

void add_inplace(float* x, const float* y, int64_t n) {
  if (simd())
    avx2::add_inplace(x, y, n);
  else
    portable::add_inplace(x, y, n);
}

void check_kv_dtype(DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F16)
    throw InvalidRequest(std::string("KV cache dtype ") + dtype_name(dtype) +
                         " is not supported (f32 or f16)");
}

void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
              const PagedKV& cache) {
  check_kv_dtype(cache.dtype);
  const int64_t hd = cache.head_dim, H = cache.n_kv_heads, bs = cache.block_size;
  const bool half = cache.dtype == DType::F16;
  const auto store = [&](void* base, int64_t dst, const float* src) {
    if (!half)
      std::memcpy(static_cast<float*>(base) + dst, src, size_t(hd) * sizeof(float));
    else if (simd())
      avx2::to_f16(src, hd, static_cast<uint16_t*>(base) + dst);
    else
      portable::to_f16(src, hd, static_cast<uint16_t*>(base) + dst);
  };
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    if (slot >= cache.num_blocks * bs)
      throw Error("kv_write: slot " + std::to_string(slot) + " is outside the cache of " +
                  std::to_string(cache.num_blocks * bs) + " slots");
    const int64_t block = slot / bs, off = slot % bs;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t dst = ((block * H + h) * bs + off) * hd;
      store(cache.k, dst, k + (t * H + h) * hd);
      store(cache.v, dst, v + (t * H + h) * hd);
    }
  }
}

namespace {

// Attention's work items are w = t * H + kv head in order, and an item of row t reads
// positions[t] + 1 keys. parallel_for's even split by count would give the thread holding a
// long prompt's last rows three times the keys of the one holding its first rows (the other
// waits); so the items are split into one contiguous range per thread of about equal keys,
// each item still computed whole by one thread (the results do not depend on the split).
constexpr int64_t kItemOverheadKeys = 16;  // an item's fixed work, in keys

int64_t item_keys(const AttentionBatch& b, int64_t t) {
  return int64_t(b.positions[t]) + 1 + kItemOverheadKeys;
}

// The first item whose cumulative keys before it reach `target` (T * H when none does).
int64_t first_item_from(const AttentionBatch& b, int64_t H, int64_t target) {
  int64_t start = 0;  // keys before row t's first item
  for (int64_t t = 0; t < b.T; ++t) {
    const int64_t c = item_keys(b, t);
    if (start + H * c > target) {
      const int64_t k = target <= start ? 0 : (target - start + c - 1) / c;
      if (k < H) return t * H + k;
    }
    start += H * c;
  }
  return b.T * H;
}

template <class Items>
void for_balanced_items(const AttentionBatch& b, int64_t H, ThreadPool& pool, const Items& fn) {
  int64_t total = 0;
  for (int64_t t = 0; t < b.T; ++t) total += H * item_keys(b, t);
  const int64_t parts = pool.size();
  pool.parallel_for(parts, [&](int, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t w0 = first_item_from(b, H, total * p / parts);
      const int64_t w1 = p + 1 == parts ? b.T * H : first_item_from(b, H, total * (p + 1) / parts);
      if (w0 < w1) fn(w0, w1);
    }
  });
}

}  // namespace

void paged_attention(const float* q, int64_t n_heads, const PagedKV& cache,
                     const AttentionBatch& batch, float scale, float* out, ThreadPool& pool) {
  if (cache.n_kv_heads <= 0 || n_heads % cache.n_kv_heads != 0)
    throw Error("paged_attention: " + std::to_string(n_heads) +
                " query heads are not a multiple of " + std::to_string(cache.n_kv_heads) +
                " kv heads");
  for (int64_t t = 0; t < batch.T; ++t) {
    const int64_t pos = batch.positions[t];
    if (pos < 0 || pos >= batch.max_blocks * cache.block_size)
      throw Error("paged_attention: position " + std::to_string(pos) +
                  " is beyond the block table");
    const int32_t* table = batch.block_tables + int64_t(batch.token_seq[t]) * batch.max_blocks;
    for (int64_t b = 0; b <= pos / cache.block_size; ++b)
      if (table[b] < 0 || table[b] >= cache.num_blocks)
        throw Error("paged_attention: block table entry " + std::to_string(table[b]) +
                    " is outside the cache of " + std::to_string(cache.num_blocks) + " blocks");
  }
  check_kv_dtype(cache.dtype);
  const bool use_avx2 =
      simd() && avx2_attention_fits(n_heads / cache.n_kv_heads, cache.head_dim, cache.block_size);
  for_balanced_items(batch, cache.n_kv_heads, pool, [&](int64_t w0, int64_t w1) {
    (use_avx2 ? avx2::attention_items : portable::attention_items)(q, n_heads, cache, batch,
                                                                   scale, out, w0, w1);
  });
}

}  // namespace medrt::cpu
