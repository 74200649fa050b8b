#include "bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

namespace medrt::bench {

namespace {
// Independent accumulators let the loads run back to back instead of waiting on one add chain.
uint64_t sum_range(const uint64_t* p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a + b + c + d;
}
}  // namespace

double read_bandwidth(size_t bytes, int threads, int reps) {
  size_t n = bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i;  // touch every page so reads hit real memory
  std::vector<uint64_t> sums(static_cast<size_t>(threads));
  double best = 0.0;
  for (int r = 0; r <= reps; ++r) {
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        size_t begin = n * size_t(t) / size_t(threads), end = n * size_t(t + 1) / size_t(threads);
        sums[size_t(t)] = sum_range(buf.data() + begin, end - begin);
      });
    for (auto& th : pool) th.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r > 0) best = std::max(best, double(n * sizeof(uint64_t)) / s);
  }
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  // Printing a byte of the result keeps the compiler from discarding the reads.
  std::fprintf(stderr, "bandwidth checksum %u\n", unsigned(total & 0xff));
  return best;
}

}  // namespace medrt::bench
