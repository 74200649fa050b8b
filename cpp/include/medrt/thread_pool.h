// One persistent pool of worker threads shared by all kernels. parallel_for splits a range
// statically into one contiguous chunk per thread, so which thread computes an element never
// changes its result (each element is reduced in a fixed order by whichever thread owns it).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace medrt {

class ThreadPool {
 public:
  // n_threads <= 0: the number of physical cores.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // fn(thread_index, begin, end) over [0, n), split into size() contiguous chunks
  // (chunk boundaries rounded to `grain`). Runs on the caller plus the workers; returns when
  // all chunks are done. Not reentrant: call from one thread at a time.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn,
                    int64_t grain = 1);

  // Runs fn(thread_index) once on every thread.
  void run_on_all(const std::function<void(int)>& fn);

  static int physical_cores();

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace medrt
