// The in-memory form of the quantized weight types (int8, nf4, int4, int6) and of the activations
// their kernels read; shared by the packer (quant_pack.cpp), the activation quantizer
// (quant_act.cpp), the driver (quant_linear.cpp) and the per-ISA row-group kernels
// (quant_portable.cpp, quant_avx2.cpp, quant_avx512vnni.cpp). This header holds only plain
// structs, constants and declarations, so the ISA files can include it without emitting an
// inline function compiled with their instruction set (ODR: the linker could keep that copy).
//
// PackedLinear::packed = [64-byte header: a Layout][row group 0][row group 1]...
// A row group is kRows = 16 consecutive output rows (the last one padded with zero rows) and
// holds, for those rows, its scale groups in units of P = 64 / group_header groups (2 for
// 32-byte headers, else 1): a unit is the P groups' headers (64 bytes, the last unit's padded)
// followed by their code blocks, so a row group is one sequential stream and every 64-byte code
// unit starts a cache line. (With a 32-byte header before each group's blocks, every load of
// nf4 and Q8_0 codes straddled two lines, and their decode ran up to 1.7x slower than int4's
// on large layers; with all headers first and all blocks after, the two streams made every
// type slower on machines whose prefetchers want one stream.)
//   [hdr g0][hdr g1][blocks of g0][blocks of g1][hdr g2][hdr g3][blocks of g2][blocks of g3]...
// group_header_at / group_codes_at below compute where group g's header and first block lie.
// Group header (Layout::group_header bytes):
//   Int8Row    16 x f32 scale (one group: the whole row)               64 bytes
//   Int8Group  16 x f16 scale                (GGUF Q8_0, groups of 32)  32 bytes
//   Nf4        16 x f16 scale (group absmax)                            32 bytes
//   Int4Zero   16 x f16 scale, then 16 x f16 zero      w = (q - z) * s  64 bytes
//   Int4Min    16 x f16 scale, then 16 x f16 min       w = q * s + m    64 bytes (GGUF Q4_1)
//   Int6       16 x f16 scale                          w = (q - 32) * s 32 bytes
// entry r of each array is row r of the group. Scales, zeros and mins are the file's values,
// unchanged (no rounding is added at load), and nothing is padded inside a row group, so the
// packed weight is as large as the file's tensors (up to the row and the end padding).
// Code block b (inputs 32b .. 32b+31), rows interleaved so that one 32-bit lane holds 4
// consecutive inputs of one row and a 64-byte unit holds the same 4 inputs of all 16 rows:
//   int8:  8 units q = 0..7; byte [64 q + 4 r + t] = code[r, 32b + 4q + t]        (512 bytes)
//   4-bit: 4 units u = 0..3; byte [64 u + 4 r + t] = byte 4u + t of row r's 16-byte chunk:
//          low nibble = code[r, 32b + 4u + t], high nibble = code[r, 32b + 16 + 4u + t]
//          (the file's nibble order, so packing only moves whole bytes)       (256 bytes)
//   6-bit: the 4-bit block of the codes' low 4 bits (units 0..3), then 2 units v = 0..1 of
//          their high 2 bits: byte [256 + 64 v + 4 r + t] = byte 16 + 4v + t of row r's
//          24-byte chunk, whose bits 2f..2f+1 are the high bits of the code in nibble f of
//          unit 2v + f / 2 (f = 0: low nibble of unit 2v, 1: its high nibble, 2 and 3: those of
//          unit 2v + 1); again the file's order, so packing moves whole bytes    (384 bytes)
// Int8 rows whose length is not a multiple of 32 are padded with zero codes.
//
// Activations (ActFormat::Q8Block32): each row of x is cut into blocks of 32 (zero-padded) and
// quantized once per linear call: d = amax / 127, a = round_half_even(x * (127 / amax)) in
// [-127, 127] (all zero when amax = 0). Row-local, so a row's codes never depend on the batch.
// ActPrecision::Int8x2 (quant_kernels.h quantize_act_split) makes two such rows of each input
// row, its codes and those of its residual x - d * a; the kernels see them as two rows.
//
// Arithmetic, identical in every ISA so that all paths give bit-identical results: per output
// row and activation block b, isum = sum_i w_i * a_i over the 32 inputs in exact int32 (w_i the
// integer code; nf4 codes map to kNf4Int8; int6 codes are the raw 0..63), then in f32 with
// fused multiply-adds, blocks in increasing order:
//   Int8Row:           acc = fma(isum, d, acc)
//   Int8Group, Nf4:    acc = fma(isum, s * d, acc)
//   Int4Zero:          acc = fma(fma(-z, asum, isum), s * d, acc)
//   Int6:              acc = fma(fma(-32, asum, isum), s * d, acc)   (Int4Zero with z = 32)
//   Int4Min:           acc = fma(m, d * asum, fma(isum, s * d, acc))
// and y = acc * post (+ bias as fma(acc, post, bias)), post = the row's f32 scale for Int8Row,
// 1/127 for Nf4 (its table is scaled by 127), none otherwise (y = acc (+ bias)).
#pragma once
#include <cstdint>

namespace medrt::cpu::quant {

inline constexpr int kRows = 16;   // output rows per row group: 16 f32 lanes of AVX-512
inline constexpr int kBlock = 32;  // inputs per activation block and per 4-bit chunk

enum class Kind : uint32_t { Int8Row, Int8Group, Nf4, Int4Zero, Int4Min, Int6 };

struct Layout {
  Kind kind;
  uint32_t per_unit;       // P: groups per unit, 64 / group_header: 1 or 2
  int64_t nb;              // 32-input blocks per row (in rounded up to 32)
  int64_t gb;              // blocks per scale group (nb for Int8Row)
  int64_t ngroups;         // nb / gb
  int64_t group_header;    // bytes of a group's scales (and zeros or mins)
  int64_t block_bytes;     // one code block of 16 rows: 512 (int8), 256 (4-bit), 384 (6-bit)
  int64_t unit_bytes;      // 64 + P * gb * block_bytes
  int64_t rowgroup_bytes;  // ceil(ngroups / P) * 64 + ngroups * gb * block_bytes
};
inline constexpr int64_t kHeaderBytes = 64;
inline constexpr int64_t kUnitHeader = 64;  // the headers of a unit of groups (above)
static_assert(sizeof(Layout) <= kHeaderBytes);

// Group g's header and its first code block (the group's blocks follow one another) in the row
// group at rg. `static`: every kernel file gets its own copy, so no ISA file emits a weak
// symbol that portable code could end up calling (isa_prelude.h).
// P is 1 or 2, so g / P and g % P are a shift and a mask: no 64-bit division in the kernels'
// group loops (a Q4_0 or Q8_0 group is one block, so it would be one division per block).
template <class Byte>
static inline Byte* group_header_at(Byte* rg, const Layout& L, int64_t g) {
  const int64_t unit = g >> (L.per_unit / 2), in_unit = g & int64_t(L.per_unit - 1);
  return rg + unit * L.unit_bytes + in_unit * L.group_header;
}
template <class Byte>
static inline Byte* group_codes_at(Byte* rg, const Layout& L, int64_t g) {
  const int64_t unit = g >> (L.per_unit / 2), in_unit = g & int64_t(L.per_unit - 1);
  return rg + unit * L.unit_bytes + kUnitHeader + in_unit * L.gb * L.block_bytes;
}

// One quantized activation block: scale d, sum of its codes (as f32 and int32; exact), and
// d * sum (the Int4Min term).
struct ActBlock {
  float d;
  float sum;
  float dsum;
  int32_t qsum;
};

// The quantized rows of x: codes [M, nb * 32] and blocks [M, nb].
struct Act {
  const int8_t* codes;
  const ActBlock* blocks;
  int64_t nb;
};

// NF4 (bitsandbytes) in f32, and round(127 * NF4) as the kernels' int8 table: the largest
// difference |kNf4Int8[c] / 127 - kNf4[c]| is 0.00367 (code 5), in units of the group absmax.
extern const float kNf4[16];
extern const int8_t kNf4Int8[16];
inline constexpr float kInv127 = 1.0f / 127.0f;
inline constexpr int kInt6Zero = 32;     // int6: w = (q - 32) * s
inline constexpr int64_t kHighBits = 256;  // int6: offset of the high-bit units in a block

// Rows [m0, m1) of y for the nrg consecutive row groups that start at `rg`: y[m, n] for
// n < min(nrows, 16 nrg), nrows being the layer's output rows from rg's first one on (ldy
// floats between rows of y); bias: from rg's first row, or nullptr.
using RowGroupFn = void (*)(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a,
                            int64_t m0, int64_t m1, float* y, int64_t ldy, int64_t nrows,
                            const float* bias);

// One row of x [K] into its nb blocks (quant_act.cpp; the AVX2 one gives the same bits).
namespace portable {
void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias);
void quantize_row(const float* x, int64_t K, int64_t nb, int8_t* codes, ActBlock* blocks);
}
#if MEDRT_PORTABLE_ONLY
namespace avx2 = portable;  // not an x86 build: see kernels_impl.h
namespace avx512vnni = portable;
#else
namespace avx2 {
void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias);
void quantize_row(const float* x, int64_t K, int64_t nb, int8_t* codes, ActBlock* blocks);
}
namespace avx512vnni {
void quant_rowgroups(const Layout& L, const uint8_t* rg, int64_t nrg, const Act& a, int64_t m0,
                     int64_t m1, float* y, int64_t ldy, int64_t nrows, const float* bias);
}
#endif

}  // namespace medrt::cpu::quant
