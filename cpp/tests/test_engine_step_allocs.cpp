// The decode step allocates nothing in steady state: a counting operator new for this test
// binary, an engine over a tiny checkpoint, and a batch of requests decoding (greedy, sampled,
// nucleus); after warm-up step(StepOutputs&) must not touch the heap, and the background
// loop's hand-off through wait_outputs(StepOutputs&) allocates only for a deeper queue.
// GCC pairs the library's inlined operator new with this file's delete and warns; both are
// this file's malloc/free pair.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include <execinfo.h>

#include "check.h"
#include "isas.h"
#include "medrt/engine.h"
#include "tiny_checkpoint.h"

using namespace medrt;

namespace {
std::atomic<long> g_allocations{0};
// MEDRT_TRACE_ALLOCS=1 prints a backtrace of each allocation inside a measured window
// (resolve the addresses with addr2line -f -C -e test_engine_step_allocs).
std::atomic<bool> g_tracing{false};
bool trace_wanted() { return std::getenv("MEDRT_TRACE_ALLOCS") != nullptr; }
void measure(bool on) {
  if (on) {
    void* warm[2];
    backtrace(warm, 2);  // its own first call allocates
  }
  g_tracing = on && trace_wanted();
}
}  // namespace
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (g_tracing.exchange(false)) {
    void* frames[16];
    backtrace_symbols_fd(frames, backtrace(frames, 16), 2);
    g_tracing = true;
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

struct Fixture {
  medrt_test::TempDir dir{"step_allocs"};
  Fixture() {
    medrt_test::TinyCheckpoint ck;
    ck.fill_random(5);
    ck.write(dir.path);
  }
};

EngineConfig config(const std::string& dir, int threads) {
  EngineConfig c;
  c.model_dir = dir;
  c.block_size = 4;
  c.num_blocks = 1024;  // 8 requests of up to 256 tokens each, without preemption
  c.max_num_batched_tokens = 64;
  c.num_threads = threads;
  return c;
}

// n requests, greedy and sampled, long enough to decode well past the measured steps (the
// tiny model's context, 256 tokens, ends each after about 250).
void add_requests(Engine& e, int n) {
  for (int i = 0; i < n; ++i) {
    SamplingParams p;
    p.max_tokens = 400;
    p.ignore_eos = true;
    p.temperature = i % 2 ? 0.0f : 0.9f;
    p.top_p = i % 4 == 2 ? 0.9f : 1.0f;
    p.seed = 10 + i;
    std::vector<int32_t> prompt;
    for (int t = 0; t < 5 + 3 * (i % 4); ++t) prompt.push_back(int32_t(3 + (7 * t + i) % 50));
    e.add_request(prompt, p);
  }
}

}  // namespace

TEST(synchronous_decode_step_allocates_nothing) {
  for (cpu::Isa isa : isas())
  for (int threads : {1, 2}) {
    cpu::set_isa(isa);
    Fixture f;
    Engine e(config(f.dir.path.string(), threads));
    add_requests(e, 4);
    StepOutputs out;
    // Warm-up: the prompts prefill and every buffer reaches its steady size (KV blocks come
    // from the pool, which is no heap).
    for (int i = 0; i < 12; ++i) e.step(out);
    long tokens = 0;
    measure(true);
    const long before = g_allocations.load();
    for (int i = 0; i < 40; ++i) {
      e.step(out);
      for (const RequestOutput& o : out) tokens += long(o.new_token_ids.size());
    }
    const long allocations = g_allocations.load() - before;
    measure(false);
    if (allocations != 0)
      std::fprintf(stderr, "%s, threads=%d: %ld allocations in 40 steps\n", cpu::isa_name(isa),
                   threads, allocations);
    CHECK(allocations == 0);
    CHECK(tokens == 4 * 40);  // every step decoded one token of each of the four requests
  }
  cpu::set_isa(cpu::detected_isa());
}

TEST(background_loop_hand_off_allocates_only_for_a_deeper_queue) {
  // The loop thread steps and publishes; this thread takes the outputs with wait_outputs.
  // The step allocates nothing; the hand-off allocates only when more outputs wait at once
  // than ever before (a new slot and its token vector), which depends on how promptly this
  // thread is scheduled, not on the number of tokens.
  Fixture f;
  Engine e(config(f.dir.path.string(), 1));
  e.start();
  add_requests(e, 8);
  StepOutputs out;
  long tokens = 0;
  size_t deepest = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  auto collect = [&] {
    e.wait_outputs(out, std::chrono::milliseconds(200));
    deepest = std::max(deepest, out.size());
    for (const RequestOutput& o : out) tokens += long(o.new_token_ids.size());
    return std::chrono::steady_clock::now() < deadline;
  };
  while (tokens < 4 * 60 && collect()) {}  // warm-up (8 requests give about 2,000 tokens)
  const long before = g_allocations.load();
  const long start_tokens = tokens;
  deepest = 0;
  while (tokens < start_tokens + 4 * 120 && collect()) {}
  const long allocations = g_allocations.load() - before;
  std::fprintf(stderr, "background: %ld allocations for %ld tokens, deepest queue %zu outputs\n",
               allocations, tokens - start_tokens, deepest);
  CHECK(tokens >= start_tokens + 4 * 120);
  // Per-token allocations would be at least 480; slots for a deeper queue are at most two
  // allocations each.
  CHECK(allocations <= 2 * long(deepest) + 2);
  e.stop();
}
