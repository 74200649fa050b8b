// The in-memory form of f16 and bf16 linear weights on AVX2 and AVX-512 (PackedLinear::packed),
// shared by the packer (half_pack.cpp) and the kernels (gemm_avx2.cpp, gemm_avx512.cpp). Plain
// constants only, so the ISA files can include it (isa_prelude.h).
//
// Why repack: batch-1 decode is a stream of every weight byte from memory. Read as stored, a
// tile of 4-8 rows is 4-8 concurrent streams, which on some machines (the AMD EPYC VMs of
// docs/benchmarks.md run 4) reach a fraction of the bandwidth one sequential stream does. In
// this layout the rows a tile multiplies are one sequential stream.
//
//   row group  = R consecutive output rows (R = kHalfRows<ISA>; the last group padded with zero
//                rows), stored one after the other;
//   in a group = chunk c = 0 .. ceil(in / 16) - 1 in turn, each holding the 16 inputs
//                16c .. 16c+15 of row 0, then of row 1, ... row R-1 (zeros past `in`).
//
// Element (n, k) is at ((n / R) * chunks + k / 16) * R * 16 + (n % R) * 16 + k % 16 (uint16,
// the file's bits unchanged), chunks = ceil(in / 16). The packed weight is as large as the
// file's (up to the padding). The kernels' arithmetic is that of the stored layout (same
// k-blocks, lanes and reduction order), so packed and stored weights give bit-identical rows.
#pragma once

namespace medrt::cpu {

inline constexpr int kHalfChunk = 16;       // inputs per chunk
inline constexpr int kHalfRowsAvx512 = 16;  // rows per group: the M = 1 tile's 16 accumulators
inline constexpr int kHalfRowsAvx2 = 8;     // 8 of 16 ymm registers; the rest hold x and w

}  // namespace medrt::cpu
