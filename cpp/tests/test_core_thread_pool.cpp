#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <climits>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "medrt/dtype.h"
#include "medrt/error.h"
#include "medrt/thread_pool.h"

using namespace medrt;

// A counting allocator for this test binary: every operator new bumps the counter.
namespace {
std::atomic<long> g_allocations{0};
}
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

TEST(parallel_for_allocates_nothing) {
  // The callable is referenced, not copied into a std::function: even a lambda with a large
  // capture costs no heap allocation per parallel region.
  ThreadPool pool(3);
  std::atomic<int64_t> sum{0};
  int64_t a = 1, b = 2, c = 3, d = 4;  // a capture larger than std::function's inline buffer
  auto body = [&sum, a, b, c, d](int, int64_t lo, int64_t hi) { sum += (hi - lo) * (a + b + c + d) / 10; };
  pool.parallel_for(64, body);  // warm-up
  const long before = g_allocations.load();
  for (int rep = 0; rep < 1000; ++rep) pool.parallel_for(64, body);
  CHECK(g_allocations.load() - before == 0);
  CHECK(sum.load() == 64 * 1001);
}

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

TEST(worker_exception_reaches_the_caller) {
  // Every chunk throws, so workers throw too: before, that terminated the process.
  ThreadPool pool(3);
  for (int rep = 0; rep < 200; ++rep) {
    bool caught = false;
    try {
      pool.parallel_for(300, [&](int, int64_t b, int64_t) {
        throw std::runtime_error("chunk " + std::to_string(b));
      });
    } catch (const std::runtime_error& e) {
      caught = std::string(e.what()).rfind("chunk ", 0) == 0;
    }
    CHECK(caught);
  }
}

TEST(bad_alloc_reaches_the_caller_and_the_pool_still_works) {
  ThreadPool pool(4);
  bool caught = false;
  try {
    pool.parallel_for(4, [&](int, int64_t b, int64_t) {
      if (b == 2) throw std::bad_alloc();
    });
  } catch (const std::bad_alloc&) {
    caught = true;
  }
  CHECK(caught);
  std::vector<std::atomic<int>> hits(100);
  pool.parallel_for(100, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (auto& h : hits) CHECK(h.load() == 1);
}

TEST(error_waits_for_every_running_chunk) {
  // The first chunk throws at once while the others are still running: parallel_for must not
  // return (destroying the callable they use) before they finish.
  ThreadPool pool(4);
  for (int rep = 0; rep < 20; ++rep) {
    std::atomic<int> started{0}, finished{0};
    bool caught = false;
    try {
      pool.parallel_for(4, [&](int, int64_t b, int64_t) {
        if (b == 0) throw std::runtime_error("first");
        started++;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        finished++;
      });
    } catch (const std::runtime_error&) {
      caught = true;
    }
    CHECK(caught);
    CHECK(started.load() == finished.load());
  }
}

TEST(failed_thread_creation_leaves_no_thread_behind) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  std::printf("skipped: sanitizers reserve address space beyond any RLIMIT_AS\n");
#else
  // In a child: cap the address space so that only a few 8 MiB thread stacks fit, then ask
  // for 64 threads. The pool must throw CapacityError and join what it started; a joinable
  // std::thread left behind would abort the child.
  pid_t pid = fork();
  if (pid == 0) {
    long pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    rlimit lim{};
    lim.rlim_cur = lim.rlim_max = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (24u << 20);
    setrlimit(RLIMIT_AS, &lim);
    try {
      ThreadPool pool(64);
      _exit(2);  // every thread started: the limit did not bite
    } catch (const medrt::CapacityError& e) {
      _exit(std::string(e.what()).find("of 64 for the thread pool") != std::string::npos ? 0 : 3);
    }
    _exit(4);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
#endif
}

TEST(idle_workers_sleep) {
  // After a burst of work the workers spin briefly, then block: an idle pool costs no CPU.
  ThreadPool pool(std::max(2, ThreadPool::usable_cpus()));
  std::atomic<int64_t> sum{0};
  for (int rep = 0; rep < 100; ++rep)
    pool.parallel_for(64, [&](int, int64_t b, int64_t e) { sum += e - b; });
  CHECK(sum.load() == 6400);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the spin phase
  auto cpu = [] {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  };
  const double c0 = cpu();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  const double used = cpu() - c0;
  std::printf("idle pool of %d threads: %.3f ms CPU in 1 s\n", pool.size(), used * 1e3);
  CHECK(used < 0.01);  // below 1% of one core
}

TEST(physical_cores_matches_sysfs_topology) {
  // An independent count: distinct thread-sibling sets under /sys (one per physical core).
  const int n = ThreadPool::physical_cores();
  CHECK(n >= 1 && n <= int(std::max(1u, std::thread::hardware_concurrency())));
  std::set<std::string> cores;
  for (int cpu = 0;; ++cpu) {
    std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(cpu) +
                    "/topology/thread_siblings_list");
    if (!f) break;
    std::string siblings;
    std::getline(f, siblings);
    cores.insert(siblings);
  }
  if (!cores.empty()) CHECK(n == int(cores.size()));
}

TEST(num_threads_fit_the_cpus_this_process_may_use) {
  const int usable = ThreadPool::usable_cpus();
  CHECK(usable >= 1 && usable <= int(std::max(1u, std::thread::hardware_concurrency())));
  const int dflt = ThreadPool::resolve_num_threads(0);
  CHECK(dflt >= 1 && dflt <= usable && dflt <= ThreadPool::physical_cores());
  CHECK(ThreadPool::resolve_num_threads(usable) == usable);
  CHECK(ThreadPool::resolve_num_threads(1) == 1);
  CHECK_THROWS(medrt::InvalidRequest, ThreadPool::resolve_num_threads(usable + 1),
               "may run on at most " + std::to_string(usable) + " CPUs");
  CHECK_THROWS(medrt::InvalidRequest, ThreadPool::resolve_num_threads(1000),
               "num_threads = 1000");
  CHECK_THROWS(medrt::InvalidRequest, ThreadPool::resolve_num_threads(-3),
               "num_threads = -3: must be 0");
}

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
