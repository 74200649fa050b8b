// Streaming read bandwidth of this machine: the roofline for batch-1 decode, which reads every
// weight once per token.
#pragma once
#include <cstddef>

namespace medrt::bench {

// Bytes/s reading a buffer of `bytes` (much larger than the caches) with `threads` threads,
// best of `reps` passes after one warm-up pass.
double read_bandwidth(size_t bytes, int threads, int reps);

}  // namespace medrt::bench
