// Repacking int8, nf4, int4 and int6 weights at load into the row-group layout of quant_layout.h,
// with the checks a checkpoint's tensors must pass, and the row dequantizer (embedding lookup).
#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/quant_kernels.h"
#include "medrt/error.h"

namespace medrt::cpu::quant {

const float kNf4[16] = {-1.0f,
                        -0.6961928009986877f,
                        -0.5250730514526367f,
                        -0.39491748809814453f,
                        -0.28444138169288635f,
                        -0.18477343022823334f,
                        -0.09105003625154495f,
                        0.0f,
                        0.07958029955625534f,
                        0.16093020141124725f,
                        0.24611230194568634f,
                        0.33791524171829224f,
                        0.44070982933044434f,
                        0.5626170039176941f,
                        0.7229568362236023f,
                        1.0f};
const int8_t kNf4Int8[16] = {-127, -88, -67, -50, -36, -23, -12, 0,
                             10,   20,  31,  43,  56,  71,  92,  127};

const Layout& layout_of(const PackedLinear& p) {
  return *reinterpret_cast<const Layout*>(p.packed.get());
}

namespace {

// File bytes per row and 32-input chunk of 4-bit and of 6-bit codes (docs/quantized-format.md).
constexpr int64_t kChunk4 = 16, kChunk6 = 24;

[[noreturn]] void refuse(const LinearWeight& w, const std::string& what) {
  throw InvalidCheckpoint("'" + w.name + "' (" + weight_type_name(w.type) + "): " + what);
}

std::string shape_of(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void expect(const LinearWeight& w, const TensorView& t, const char* what, DType dtype,
            const std::vector<int64_t>& shape) {
  if (t.data == nullptr) refuse(w, std::string("missing ") + what);
  if (t.dtype != dtype || t.shape != shape)
    refuse(w, std::string(what) + " is " + dtype_name(t.dtype) + " " + t.shape_str() +
                  "; expected " + dtype_name(dtype) + " " + shape_of(shape));
}

Layout make_layout(Kind kind, int64_t in, int64_t group_size) {
  Layout L{};
  L.kind = kind;
  L.nb = (in + kBlock - 1) / kBlock;
  L.gb = kind == Kind::Int8Row ? L.nb : group_size / kBlock;
  L.ngroups = L.gb ? L.nb / L.gb : 0;
  const bool two = kind == Kind::Int4Zero || kind == Kind::Int4Min;
  L.group_header = kind == Kind::Int8Row ? kRows * 4 : two ? 2 * kRows * 2 : kRows * 2;
  L.block_bytes = kind == Kind::Int8Row || kind == Kind::Int8Group ? 8 * 64
                  : kind == Kind::Int6                             ? 6 * 64
                                                                   : 4 * 64;
  L.per_unit = uint32_t(kUnitHeader / L.group_header);
  const int64_t per_unit = L.per_unit;
  L.unit_bytes = kUnitHeader + per_unit * L.gb * L.block_bytes;
  L.rowgroup_bytes = (std::max<int64_t>(L.ngroups, 1) + per_unit - 1) / per_unit * kUnitHeader +
                     L.ngroups * L.gb * L.block_bytes;
  return L;
}

// Group size checks shared by the grouped types.
void check_groups(const LinearWeight& w) {
  if (w.group_size <= 0 || w.group_size % kBlock != 0 || w.in % w.group_size != 0)
    refuse(w, "group size " + std::to_string(w.group_size) +
                  " must be a positive multiple of 32 that divides in = " + std::to_string(w.in));
}

// Code block b of a row group.
template <class Byte>
Byte* block_at(Byte* rg, const Layout& L, int64_t b) {
  return group_codes_at(rg, L, b / L.gb) + (b % L.gb) * L.block_bytes;
}

// A [out, groups] f16 tensor's entry for row r, group g into the scale section.
void put_f16(uint8_t* sec, const Layout& L, int64_t g, int64_t off, int64_t lr,
             const TensorView& t, int64_t r) {
  const auto* src = static_cast<const uint16_t*>(t.data) + r * L.ngroups + g;
  std::memcpy(group_header_at(sec, L, g) + off + lr * 2, src, 2);
}

void pack_rows(const LinearWeight& w, const Layout& L, PackedLinear& p) {
  const int64_t nrg = (w.out + kRows - 1) / kRows;
  p.packed.allocate(size_t(kHeaderBytes + nrg * L.rowgroup_bytes));
  std::memcpy(p.packed.get(), &L, sizeof L);
  uint8_t* base = p.packed.get() + kHeaderBytes;
  const bool four_bit = L.block_bytes == 4 * 64, six_bit = L.kind == Kind::Int6;
  for (int64_t r = 0; r < w.out; ++r) {
    uint8_t* rg = base + (r / kRows) * L.rowgroup_bytes;
    const int64_t lr = r % kRows;
    if (L.kind == Kind::Int8Row) {
      float s;
      if (w.scales.dtype == DType::F32)
        s = static_cast<const float*>(w.scales.data)[r];
      else
        s = f16_to_f32(static_cast<const uint16_t*>(w.scales.data)[r]);
      std::memcpy(rg + lr * 4, &s, 4);
    } else {
      for (int64_t g = 0; g < L.ngroups; ++g) {
        put_f16(rg, L, g, 0, lr, w.scales, r);
        if (L.kind == Kind::Int4Zero) put_f16(rg, L, g, kRows * 2, lr, w.zeros, r);
        if (L.kind == Kind::Int4Min) put_f16(rg, L, g, kRows * 2, lr, w.mins, r);
      }
    }
    const auto* src = static_cast<const uint8_t*>(w.weight.data);
    if (four_bit || six_bit) {
      const int64_t chunk = six_bit ? kChunk6 : kChunk4;
      const uint8_t* row = src + r * (w.in / kBlock) * chunk;
      for (int64_t b = 0; b < L.nb; ++b) {
        uint8_t* blk = block_at(rg, L, b);
        for (int u = 0; u < 4; ++u)
          std::memcpy(blk + u * 64 + lr * 4, row + b * chunk + u * 4, 4);
        if (six_bit)
          for (int v = 0; v < 2; ++v)
            std::memcpy(blk + kHighBits + v * 64 + lr * 4, row + b * chunk + 16 + v * 4, 4);
      }
    } else {
      const uint8_t* row = src + r * w.in;
      for (int64_t i = 0; i < w.in; i += 4) {  // 4 inputs of a row are 4 adjacent bytes
        const int64_t n = w.in - i < 4 ? w.in - i : 4;
        std::memcpy(block_at(rg, L, i / kBlock) + ((i % kBlock) / 4) * 64 + lr * 4, row + i,
                    size_t(n));
      }
    }
  }
}

void pack_int8(const LinearWeight& w, PackedLinear& p) {
  expect(w, w.weight, "qweight", DType::I8, {w.out, w.in});
  Kind kind;
  if (w.group_size == 0) {
    kind = Kind::Int8Row;
    if (w.scales.data && w.scales.dtype == DType::F16)
      expect(w, w.scales, "scales", DType::F16, {w.out});
    else
      expect(w, w.scales, "scales", DType::F32, {w.out});
  } else {
    kind = Kind::Int8Group;
    check_groups(w);
    expect(w, w.scales, "scales", DType::F16, {w.out, w.in / w.group_size});
  }
  pack_rows(w, make_layout(kind, w.in, w.group_size), p);
}

// 4- and 6-bit codes come in 32-input chunks of 16 or 24 bytes per row (kChunk4, kChunk6).
void check_chunked(const LinearWeight& w, int64_t chunk_bytes) {
  if (w.in % kBlock != 0)
    refuse(w, "in = " + std::to_string(w.in) + " is not a multiple of 32 (" +
                  (chunk_bytes == kChunk6 ? "6" : "4") + "-bit chunks)");
  check_groups(w);
  expect(w, w.weight, "qweight", DType::U8, {w.out, w.in / kBlock * chunk_bytes});
  expect(w, w.scales, "scales", DType::F16, {w.out, w.in / w.group_size});
}

void pack_nf4(const LinearWeight& w, PackedLinear& p) {
  check_chunked(w, kChunk4);
  pack_rows(w, make_layout(Kind::Nf4, w.in, w.group_size), p);
}

void pack_int4(const LinearWeight& w, PackedLinear& p) {
  check_chunked(w, kChunk4);
  const bool zeros = w.zeros.data != nullptr, mins = w.mins.data != nullptr;
  if (zeros == mins) refuse(w, "needs exactly one of zeros and mins");
  const std::vector<int64_t> gshape{w.out, w.in / w.group_size};
  expect(w, zeros ? w.zeros : w.mins, zeros ? "zeros" : "mins", DType::F16, gshape);
  pack_rows(w, make_layout(zeros ? Kind::Int4Zero : Kind::Int4Min, w.in, w.group_size), p);
}

void pack_int6(const LinearWeight& w, PackedLinear& p) {
  check_chunked(w, kChunk6);
  pack_rows(w, make_layout(Kind::Int6, w.in, w.group_size), p);
}

}  // namespace

void pack_quant(const LinearWeight& w, PackedLinear& p) {
  switch (w.type) {
    case WeightType::Int8: return pack_int8(w, p);
    case WeightType::Nf4: return pack_nf4(w, p);
    case WeightType::Int4: return pack_int4(w, p);
    case WeightType::Int6: return pack_int6(w, p);
    default: refuse(w, "not a quantized type");
  }
}

// Row r dequantized in f32 with the formulas of docs/quantized-format.md (the exact NF4
// table, not the kernels' int8 one), so the embedding lookup is exact.
void quant_dequant_row(const PackedLinear& p, int64_t r, float* out) {
  const Layout& L = layout_of(p);
  const uint8_t* rg = p.packed.get() + kHeaderBytes + (r / kRows) * L.rowgroup_bytes;
  const int64_t lr = r % kRows;
  auto f16_at = [&](int64_t g, int64_t off) {
    uint16_t h;
    std::memcpy(&h, group_header_at(rg, L, g) + off + lr * 2, 2);
    return f16_to_f32(h);
  };
  for (int64_t i = 0; i < p.in; ++i) {
    const int64_t b = i / kBlock, j = i % kBlock, g = b / L.gb;
    if (L.block_bytes == 8 * 64) {
      const auto code = float(int8_t(block_at(rg, L, b)[(j / 4) * 64 + lr * 4 + j % 4]));
      float s;
      if (L.kind == Kind::Int8Row)
        std::memcpy(&s, rg + lr * 4, 4);
      else
        s = f16_at(g, 0);
      out[i] = code * s;
      continue;
    }
    const int64_t jj = j % 16, u = jj / 4, t = jj % 4;
    const uint8_t* blk = block_at(rg, L, b);
    const uint8_t byte = blk[u * 64 + lr * 4 + t];
    int q = j < 16 ? byte & 15 : byte >> 4;
    if (L.kind == Kind::Int6) {
      const int field = int(u % 2) * 2 + (j < 16 ? 0 : 1);
      q |= ((blk[kHighBits + (u / 2) * 64 + lr * 4 + t] >> (2 * field)) & 3) << 4;
    }
    const float s = f16_at(g, 0);
    switch (L.kind) {
      case Kind::Nf4: out[i] = kNf4[q] * s; break;
      case Kind::Int4Zero: out[i] = (float(q) - f16_at(g, kRows * 2)) * s; break;
      case Kind::Int6: out[i] = float(q - kInt6Zero) * s; break;
      default: {  // Int4Min: q * s, then + m (two roundings, as the format computes it)
        const float qs = float(q) * s;
        out[i] = qs + f16_at(g, kRows * 2);
      }
    }
  }
}

}  // namespace medrt::cpu::quant
