// The decoder on the CUDA backend against the CPU backend on hand-written checkpoints: logits
// within bf16-level tolerance, the same greedy tokens, layers mapped across CPU and GPU giving
// the all-GPU tokens, and device memory flat over 1,000 requests.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "check.h"
#include "cuda_skip.h"
#include "medrt/cuda.h"
#include "medrt/kv_cache.h"
#include "medrt/model.h"
#include "tiny_checkpoint.h"

using namespace medrt;
using medrt_test::TempDir;
using medrt_test::TinyCheckpoint;

namespace {

constexpr int64_t kBlock = 16;

// Greedy decoding of `steps` tokens after `prompt` (one sequence, blocks 0, 1, ...).
std::vector<int32_t> greedy(Model& m, KVCache& kv, std::vector<int32_t> prompt, int steps,
                            std::vector<float>* first_logits = nullptr) {
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> out;
  std::vector<float> logits(static_cast<size_t>(V));
  int32_t done = 0;
  for (int s = 0; s <= steps; ++s) {
    ForwardBatch b;
    const int32_t end = int32_t(prompt.size());
    for (int32_t p = done; p < end; ++p) {
      b.tokens.push_back(prompt[size_t(p)]);
      b.positions.push_back(p);
      b.token_seq.push_back(0);
      b.slot_mapping.push_back(p);  // block p / 16 = physical block p / 16
    }
    b.logit_rows.push_back(int32_t(b.tokens.size()) - 1);
    b.n_seqs = 1;
    b.max_blocks = (end + kBlock - 1) / kBlock;
    for (int32_t i = 0; i < b.max_blocks; ++i) b.block_tables.push_back(i);
    m.forward(b, kv, logits.data());
    if (s == 0 && first_logits) *first_logits = logits;
    done = end;
    if (s == steps) break;
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    prompt.push_back(next);
  }
  return out;
}

struct Fixture {
  TempDir dir{"cuda_model"};
  ThreadPool pool{2};
  std::unique_ptr<Backend> gpu = make_cuda_backend();
  explicit Fixture(TinyCheckpoint ck) {
    ck.fill_random(11);
    ck.write(dir.path);
  }
};

TinyCheckpoint wide() {  // head_dim 64, GQA 2:1, large enough for the tiled paths
  TinyCheckpoint ck;
  ck.vocab = 300, ck.hidden = 256, ck.intermediate = 512, ck.layers = 3;
  ck.heads = 4, ck.kv_heads = 2, ck.head_dim = 64, ck.max_pos = 512;
  return ck;
}

}  // namespace

TEST(logits_and_greedy_tokens_match_the_cpu_backend) {
  for (TinyCheckpoint ck : {TinyCheckpoint{}, wide()}) {
    Fixture f(ck);
    auto cpu = Model::load(f.dir.path.string(), f.pool);
    auto gpu = Model::load(f.dir.path.string(), ModelPlacement{f.gpu.get(), {}});
    KVCache kv_cpu(cpu->config(), 16, kBlock);
    KVCache kv_gpu(gpu->config(), 16, kBlock, gpu->layer_backends());
    std::vector<int32_t> prompt;
    for (int i = 0; i < 70; ++i) prompt.push_back((i * 7 + 3) % int(cpu->config().vocab_size));
    std::vector<float> lc, lg;
    const std::vector<int32_t> tc = greedy(*cpu, kv_cpu, prompt, 12, &lc);
    const std::vector<int32_t> tg = greedy(*gpu, kv_gpu, prompt, 12, &lg);
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < lc.size(); ++i)
      max_err = std::max(max_err, double(std::fabs(lc[i] - lg[i]))),
      max_ref = std::max(max_ref, double(std::fabs(lc[i])));
    std::printf("hidden %d: prefill logits max |cpu - gpu| = %g (max |logit| %g)\n", ck.hidden,
                max_err, max_ref);
    CHECK(max_err <= 2e-2 * (1.0 + max_ref));  // prefill runs the bf16-operand GEMM
    CHECK(tc == tg);
  }
}

TEST(layers_mapped_across_cpu_and_gpu_give_the_all_gpu_tokens) {
  Fixture f(wide());
  std::unique_ptr<Backend> cpu = make_cpu_backend(f.pool);
  auto all = Model::load(f.dir.path.string(), ModelPlacement{f.gpu.get(), {}});
  ModelPlacement mixed{f.gpu.get(), {f.gpu.get(), cpu.get(), f.gpu.get()}};
  auto split = Model::load(f.dir.path.string(), mixed);
  KVCache kv_all(all->config(), 16, kBlock, all->layer_backends());
  KVCache kv_split(split->config(), 16, kBlock, split->layer_backends());
  const std::vector<int32_t> prompt = {5, 9, 3, 17, 40, 2, 33, 101, 7};
  CHECK(greedy(*all, kv_all, prompt, 16) == greedy(*split, kv_split, prompt, 16));
}

TEST(device_memory_is_flat_over_a_thousand_requests) {
  Fixture f(TinyCheckpoint{});
  auto gpu = Model::load(f.dir.path.string(), ModelPlacement{f.gpu.get(), {}});
  KVCache kv(gpu->config(), 16, kBlock, gpu->layer_backends());
  cudaMemPool_t pool;
  CHECK(cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess);
  auto used = [&] {
    f.gpu->synchronize();
    uint64_t v = 0;
    cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v);
    return v;
  };
  greedy(*gpu, kv, {1, 2, 3}, 4);
  const uint64_t before = used();
  for (int r = 0; r < 1000; ++r) greedy(*gpu, kv, {int32_t(r % 60), 2, 3}, 2);
  CHECK(used() == before);
}
