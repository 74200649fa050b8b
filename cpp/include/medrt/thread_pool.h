// One persistent pool of worker threads shared by all kernels. parallel_for splits a range
// statically into one contiguous chunk per thread, so which thread computes an element never
// changes its result (each element is reduced in a fixed order by whichever thread owns it).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace medrt {

// A non-owning reference to a callable fn(thread_index, begin, end). parallel_for runs the
// callable only while the call lasts, so a pointer to it is enough: no copy, no heap
// allocation per parallel region (a std::function may allocate for a capturing lambda).
class ChunkFn {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, ChunkFn> &&
             std::is_invocable_v<F&, int, int64_t, int64_t>)
  ChunkFn(F&& f)  // NOLINT: implicit, so a lambda passes straight to parallel_for
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* obj, int t, int64_t b, int64_t e) {
          (*static_cast<std::remove_reference_t<F>*>(obj))(t, b, e);
        }) {}

  void operator()(int t, int64_t b, int64_t e) const { call_(obj_, t, b, e); }

 private:
  void* obj_;
  void (*call_)(void*, int, int64_t, int64_t);
};

class ThreadPool {
 public:
  // n_threads <= 0: the number of physical cores. The pool runs exactly n_threads threads
  // (the caller plus n_threads - 1 workers); user-facing settings go through
  // resolve_num_threads first. Throws CapacityError, with no thread left running, when the
  // OS refuses to create a worker.
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
  // An exception thrown by fn (std::bad_alloc included) on any thread is rethrown here, on the
  // calling thread, after every chunk has finished or been skipped; the first one wins and
  // chunks not yet started when it was thrown are skipped.
  void parallel_for(int64_t n, ChunkFn fn, int64_t grain = 1);

  static int physical_cores();
  // The CPUs this process may run on: its CPU affinity mask, capped by the cgroup CPU quota
  // (a container limited to 2 CPUs on a 64-core host gets 2). Always >= 1.
  static int usable_cpus();
  // A user's thread setting -> the pool size. 0: min(physical cores, usable CPUs). Negative,
  // or more than usable_cpus(), is refused with an InvalidRequest that names the limit: more
  // threads than CPUs only time-slice, and each parallel region then waits for descheduled
  // threads (docs/reliability.md).
  static int resolve_num_threads(int requested);

 private:
  void worker(int index);
  void run_chunks(int thread_index, uint64_t generation);
  void record_error() noexcept;
  void shutdown() noexcept;

  int n_threads_;
  std::vector<std::thread> workers_;
  // The current parallel_for; valid while one of its chunks is claimed and not done.
  const ChunkFn* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1, units_ = 0;
  // low 32 bits of the generation << 32 | chunk count << 16 | next unclaimed chunk.
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> done_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  // The first exception of the current parallel_for (written under error_mu_, read by the
  // caller after every chunk is done); failed_ lets the other chunks skip their work.
  std::mutex error_mu_;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace medrt
