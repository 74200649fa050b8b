// CpuBackend: the Backend interface over the CPU kernels (kernels.h, weight_kernels.h,
// encoder_kernels.h). Memory
// is host memory, ops run synchronously on the calling thread and the shared thread pool, and
// weights are repacked once at load by the weight type's table entry.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/encoder_kernels.h"
#include "kernels/weight_kernels.h"
#include "medrt/backend.h"
#include "medrt/error.h"

namespace medrt {
namespace {

struct CpuLinear : BackendWeight {
  cpu::PackedLinear p;
};

struct CpuVector : BackendWeight {
  std::vector<float> v;
  TensorView view;  // `v` as the kernels take it, built once at load (no per-call allocation)
};

const CpuLinear& as_linear(const BackendWeight& w) { return static_cast<const CpuLinear&>(w); }
const CpuVector& as_vector(const BackendWeight& w) { return static_cast<const CpuVector&>(w); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(ThreadPool& pool, ActPrecision act) : pool_(pool), act_(act) {}

  std::string name() const override {
    return std::string("cpu (") + cpu::isa_name(cpu::active_isa()) + ", " +
           std::to_string(pool_.size()) + " threads" +
           (act_ == ActPrecision::Int8 ? "" : std::string(", ") + act_precision_name(act_) +
                                                  " activations") +
           ")";
  }
  bool is_host() const override { return true; }

  void* alloc(size_t bytes) override {
    const size_t padded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, padded ? padded : 64);
    if (!p) throw CapacityError("out of host memory allocating " + std::to_string(bytes) + " bytes");
    return p;
  }
  void free(void* p) noexcept override { std::free(p); }
  void to_device(void* dst, const void* src, size_t bytes) override {
    if (dst != src && bytes) std::memcpy(dst, src, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    if (dst != src && bytes) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}

  std::unique_ptr<BackendWeight> prepare_linear(const LinearWeight& w) override {
    auto out = std::make_unique<CpuLinear>();
    out->p = cpu::pack_linear(w, act_);
    out->type = w.type;
    out->rows = w.out;
    out->cols = w.in;
    const bool repacked = out->p.packed.size > 0;
    out->bytes = repacked ? int64_t(out->p.packed.size) : int64_t(w.weight.nbytes);
    out->holds_copy = repacked;
    out->bytes += int64_t(out->p.bias.size() * sizeof(float));
    return out;
  }

  std::unique_ptr<BackendWeight> prepare_vector(const TensorView& t,
                                                const std::string& name) override {
    auto out = std::make_unique<CpuVector>();
    const int64_t n = t.numel();
    out->v.resize(size_t(n));
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw InvalidCheckpoint("'" + name + "' is " + dtype_name(t.dtype) +
                              "; expected F32, F16 or BF16");
    for (int64_t i = 0; i < n; ++i) out->v[size_t(i)] = t.f32_at(i);
    out->view.dtype = DType::F32;
    out->view.shape = {n};
    out->view.data = out->v.data();
    out->view.nbytes = size_t(n) * sizeof(float);
    out->type = WeightType::F32;
    out->rows = 1;
    out->cols = n;
    out->bytes = n * int64_t(sizeof(float));
    return out;
  }

  void embedding(const BackendWeight& table, const int32_t* tokens, int64_t T,
                 float* out) override {
    const cpu::PackedLinear& p = as_linear(table).p;
    for (int64_t t = 0; t < T; ++t)
      if (tokens[t] < 0 || tokens[t] >= p.out)
        throw InvalidRequest("token id " + std::to_string(tokens[t]) +
                             " is outside the vocabulary [0, " + std::to_string(p.out) + ")");
    if (p.packed.size == 0) return cpu::embedding(tokens, T, p.weight, out);
    for (int64_t t = 0; t < T; ++t) p.kernels->dequant_row(p, tokens[t], out + t * p.in);
  }

  void rmsnorm(const float* x, int64_t T, int64_t D, const BackendWeight& w, float eps,
               float* y) override {
    cpu::rmsnorm(x, T, D, as_vector(w).view, eps, y);
  }

  void linear(const BackendWeight& w, const float* x, int64_t M, float* y) override {
    cpu::linear(as_linear(w).p, x, M, y, pool_);
  }

  void linear_shared(const BackendWeight* const* ws, float* const* ys, int n, const float* x,
                     int64_t M) override {
    if (n > cpu::kMaxShared) return Backend::linear_shared(ws, ys, n, x, M);
    const cpu::PackedLinear* ps[cpu::kMaxShared];
    for (int i = 0; i < n; ++i) ps[i] = &as_linear(*ws[i]).p;
    cpu::linear_shared(ps, ys, n, x, M, pool_);
  }

  void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* positions,
            const float* inv_freq) override {
    cpu::rope(x, T, n_heads, head_dim, positions, inv_freq);
  }

  void silu_mul(const float* gate, const float* up, int64_t T, int64_t F, float* out) override {
    cpu::silu_mul(gate, up, T, F, F, out);
  }

  void add(float* x, const float* y, int64_t n) override { cpu::add_inplace(x, y, n); }

  void gather_rows(const float* src, int64_t width, const int32_t* rows, int64_t n,
                   float* dst) override {
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(dst + r * width, src + int64_t(rows[r]) * width, size_t(width) * sizeof(float));
  }

  void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
                const cpu::PagedKV& cache) override {
    cpu::kv_write(k, v, T, slot_mapping, cache);
  }

  void paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                       const cpu::AttentionBatch& batch, float scale, float* out) override {
    cpu::paged_attention(q, n_heads, cache, batch, scale, out, pool_);
  }

  void layernorm(const float* x, int64_t T, int64_t D, const BackendWeight& w,
                 const BackendWeight& b, float eps, float* y) override {
    cpu::layernorm(x, T, D, as_vector(w).v.data(), as_vector(b).v.data(), eps, y);
  }

  void gelu(float* x, int64_t n) override { cpu::gelu_erf(x, n); }

  void encoder_attention(const float* q, const float* k, const float* v, int64_t stride,
                         int64_t n_heads, int64_t head_dim, const int64_t* offsets,
                         int64_t n_seqs, float scale, float* out) override {
    cpu::encoder_attention(q, k, v, stride, n_heads, head_dim, cpu::PackedRows{n_seqs, offsets},
                           scale, out, pool_);
  }

  void mean_pool_l2(const float* x, int64_t D, const int64_t* offsets, int64_t n_seqs,
                    float* out) override {
    cpu::mean_pool_l2(x, D, offsets, n_seqs, out);
  }

 private:
  ThreadPool& pool_;
  ActPrecision act_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(ThreadPool& pool, ActPrecision act) {
  return std::make_unique<CpuBackend>(pool, act);
}

}  // namespace medrt
