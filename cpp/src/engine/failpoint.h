// A fault-injection point for the tests: the next `n` engine steps fail with an Error before
// they touch the model, so the tests can check what a failed step does to its requests
// (out-of-memory or a kernel error mid-step cannot be provoked on demand). Unset (0) in
// normal runs, where checking it costs one relaxed atomic load per step.
#pragma once
#include <atomic>

namespace medrt::engine::failpoint {

inline std::atomic<int> failing_steps{0};

inline bool take_step_failure() {
  int n = failing_steps.load(std::memory_order_relaxed);
  while (n > 0)
    if (failing_steps.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
  return false;
}

}  // namespace medrt::engine::failpoint
