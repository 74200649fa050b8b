#include "medrt/thread_pool.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include "medrt/error.h"

namespace medrt {

namespace {
// Workers spin this many iterations before sleeping: a decode step issues hundreds of small
// parallel regions, and a condition-variable wake-up per region would cost more than the work.
constexpr int kSpinIterations = 20000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

int ThreadPool::physical_cores() {
  // Count distinct (physical id, core id) pairs; hyper-threads share one core's FMA units.
  std::ifstream f("/proc/cpuinfo");
  std::set<std::pair<int, int>> cores;
  std::string line;
  int phys = 0;
  while (std::getline(f, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    int value = std::atoi(line.c_str() + colon + 1);
    if (key == "physical id") phys = value;
    if (key == "core id") cores.insert({phys, value});
  }
  int n = int(cores.size());
  if (n <= 0) n = int(std::thread::hardware_concurrency());
  return std::max(1, n);
}

ThreadPool::ThreadPool(int n_threads) {
  n_threads_ = n_threads > 0 ? n_threads : physical_cores();
  workers_.reserve(size_t(n_threads_));
  try {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  } catch (const std::system_error& e) {
    // The workers already started must be joined: a joinable std::thread destroyed during
    // unwinding would terminate the process.
    const size_t started = workers_.size();
    shutdown();
    throw CapacityError("could not start thread " + std::to_string(started + 1) + " of " +
                        std::to_string(n_threads_) + " for the thread pool: " + e.what());
  }
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::record_error() noexcept {
  std::lock_guard<std::mutex> lock(error_mu_);
  if (!error_) error_ = std::current_exception();
  failed_.store(true, std::memory_order_relaxed);
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  while (true) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      cpu_relax();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load()) return;
    run_chunks(index, gen);
  }
}

// Claims chunks of job `generation` until none is left. The job's fields are read only after
// a chunk is claimed: the caller cannot finish (and reuse them) before that chunk is done,
// while a late worker whose claim fails never touches them.
void ThreadPool::run_chunks(int thread_index, uint64_t generation) {
  uint64_t c = claim_.load(std::memory_order_acquire);
  while (true) {
    const int64_t next = int64_t(c & 0xffff), used = int64_t((c >> 16) & 0xffff);
    if ((c >> 32) != (generation & 0xffffffffu) || next >= used) return;
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
      continue;
    const int64_t u0 = units_ * next / used, u1 = units_ * (next + 1) / used;
    const int64_t b = u0 * grain_, e = std::min(n_, u1 * grain_);
    if (b < e && !failed_.load(std::memory_order_relaxed)) {
      try {
        (*fn_)(thread_index, b, e);
      } catch (...) {
        record_error();  // a throw must not escape a worker: that would terminate the process
      }
    }
    done_.fetch_add(1, std::memory_order_release);
    c = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::parallel_for(int64_t n, ChunkFn fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t units = (n + grain - 1) / grain;
  const int used = int(std::min<int64_t>({n_threads_, units, 0xffff}));
  if (used == 1) {
    fn(0, 0, n);
    return;
  }
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  units_ = units;
  done_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
  claim_.store((gen & 0xffffffffu) << 32 | uint64_t(used) << 16, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation_.store(gen, std::memory_order_release);
  }
  cv_.notify_all();
  run_chunks(0, gen);
  // Spin briefly (a worker usually finishes within microseconds of the caller), then yield: on
  // an oversubscribed machine a spinning caller would keep a worker descheduled mid-chunk off
  // the core it needs to finish.
  for (int spin = 0; done_.load(std::memory_order_acquire) != used; ++spin) {
    if (spin < kSpinIterations) cpu_relax();
    else std::this_thread::yield();
  }
  // Every chunk is done, so no thread touches fn any more: the error can leave this frame.
  if (failed_.load(std::memory_order_relaxed)) {
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(error_mu_);
      error = std::exchange(error_, nullptr);
    }
    std::rethrow_exception(error);
  }
}

}  // namespace medrt
