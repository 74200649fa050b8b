// `medrt-bench linear`: one linear layer per weight type through the CPU traits table
// (weight_kernels.h), against the f16 path on the same shape: weight GB/s at M = 1 (decode
// reads every weight byte once per token) and GFLOP/s at M = 512 (prefill).
#pragma once

namespace medrt::bench {

// argv[0] is "linear"; returns the process exit code.
int linear_main(int argc, char** argv);

}  // namespace medrt::bench
