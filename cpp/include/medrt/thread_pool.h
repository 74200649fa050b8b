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
  // (chunk boundaries rounded to `grain`; they depend only on n, grain and size()). The caller
  // and the workers claim chunks, so a worker the OS has not scheduled yet never holds the
  // caller up: its chunk runs on whichever thread gets there first, and thread_index names
  // that thread. Returns when all chunks are done. Not reentrant: call from one thread at a time.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn,
                    int64_t grain = 1);

  static int physical_cores();

 private:
  void worker(int index);
  void run_chunks(int thread_index, uint64_t generation);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current parallel_for; valid while one of its chunks is claimed and not done.
  const std::function<void(int, int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1, units_ = 0;
  // low 32 bits of the generation << 32 | chunk count << 16 | next unclaimed chunk.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> done_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace medrt
