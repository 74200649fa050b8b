#include <atomic>
#include <vector>

#include "check.h"
#include "medrt/dtype.h"
#include "medrt/thread_pool.h"

using namespace medrt;

TEST(parallel_for_covers_range_once) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 7, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    for (int rep = 0; rep < 50; ++rep)
      pool.parallel_for(n, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      }, 4);
    for (auto& h : hits) CHECK(h.load() == 50);
  }
}

TEST(parallel_for_back_to_back_jobs_each_run_once) {
  // Thousands of short jobs in a row: a worker waking late must never run a chunk of a job
  // that is already over, and the caller must never return before every chunk is done.
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    std::vector<int> hits(64, 0);
    int64_t total = 0;
    for (int rep = 0; rep < 3000; ++rep) {
      const int64_t n = 1 + rep % 64;
      pool.parallel_for(n, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      });
      total += n;
    }
    int64_t sum = 0;
    for (int h : hits) sum += h;
    CHECK(sum == total);
  }
}

TEST(physical_cores_positive) { CHECK(ThreadPool::physical_cores() >= 1); }

TEST(f16_roundtrip_exact) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t x = uint16_t(h);
    if ((x & 0x7c00) == 0x7c00 && (x & 0x3ff)) continue;  // NaN payloads
    CHECK(f32_to_f16(f16_to_f32(x)) == x);
  }
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);
  CHECK(f32_to_f16(1.0f + 1.0f / 4096) == 0x3c00);  // ties to even
}

TEST(bf16_rounding) {
  CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
  CHECK(f32_to_bf16(1.00390625f) == 0x3f80);  // halfway -> even
}
