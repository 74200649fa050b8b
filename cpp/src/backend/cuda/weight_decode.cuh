// Device-side decoding of the weight types (cuda_weight.h layout; math of linear.h):
// weight_at() reads one element (embedding rows, GEMM tiles), decode16() turns one 16-byte
// load of a row into its E consecutive inputs with group scales applied (GEMV). A per-row int8
// scale is applied by the caller after the row's sum.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "backend/cuda/cuda_weight.h"

namespace medrt::cuda {

// bitsandbytes' NF4 code book (docs/quantized-format.md).
static __constant__ float kNf4Table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// Inputs covered by one 16-byte load of a row.
template <WeightType T>
struct Elems16;
template <> struct Elems16<WeightType::F32> { static constexpr int value = 4; };
template <> struct Elems16<WeightType::F16> { static constexpr int value = 8; };
template <> struct Elems16<WeightType::BF16> { static constexpr int value = 8; };
template <> struct Elems16<WeightType::Int8> { static constexpr int value = 16; };
template <> struct Elems16<WeightType::Nf4> { static constexpr int value = 32; };
template <> struct Elems16<WeightType::Int4> { static constexpr int value = 32; };

__host__ __device__ inline int64_t row_bytes(WeightType t, int64_t in) {
  switch (t) {
    case WeightType::F32: return in * 4;
    case WeightType::F16:
    case WeightType::BF16: return in * 2;
    case WeightType::Int8: return in;
    default: return in / 2;
  }
}

__device__ __forceinline__ float int4_value(const WeightView& w, int code, __half2 p) {
  const float s = __low2float(p), z = __high2float(p);
  return w.has_mins ? float(code) * s + z : (float(code) - z) * s;
}

// 4-bit code of input i of row r (32-input chunks: byte j low nibble = input j, high = j + 16).
__device__ __forceinline__ int nibble_at(const WeightView& w, int64_t r, int64_t i) {
  const auto* row = static_cast<const uint8_t*>(w.data) + r * (w.in / 2);
  const int j = int(i & 31);
  const uint8_t b = row[(i >> 5) * 16 + (j & 15)];
  return j < 16 ? (b & 0x0F) : (b >> 4);
}

__device__ __forceinline__ float weight_at(const WeightView& w, int64_t r, int64_t i) {
  switch (w.type) {
    case WeightType::F32: return static_cast<const float*>(w.data)[r * w.in + i];
    case WeightType::F16: return __half2float(static_cast<const __half*>(w.data)[r * w.in + i]);
    case WeightType::BF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(w.data)[r * w.in + i]);
    case WeightType::Int8: {
      const float c = float(static_cast<const int8_t*>(w.data)[r * w.in + i]);
      return w.group_size > 0
                 ? c * __half2float(w.scales[r * w.groups_per_row() + i / w.group_size])
                 : c * w.row_scales[r];
    }
    case WeightType::Nf4:
      return kNf4Table[nibble_at(w, r, i)] *
             __half2float(w.scales[r * w.groups_per_row() + i / w.group_size]);
    case WeightType::Int4:
      return int4_value(w, nibble_at(w, r, i),
                        w.params[r * w.groups_per_row() + i / w.group_size]);
    case WeightType::Int6: break;  // CudaBackend::prepare_linear refuses int6
  }
  return 0.0f;
}

// The E inputs v*E .. v*E+E-1 of row r from their 16 bytes `raw`. nf4: the code book in
// shared memory (constant memory serialises when lanes read different entries).
template <WeightType T>
__device__ __forceinline__ void decode16(const WeightView& w, int64_t r, int64_t v, uint4 raw,
                                         const float* nf4, float* out) {
  if constexpr (T == WeightType::F32) {
    out[0] = __uint_as_float(raw.x), out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z), out[3] = __uint_as_float(raw.w);
  } else if constexpr (T == WeightType::F16 || T == WeightType::BF16) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint16_t lo = uint16_t(words[k] & 0xFFFF), hi = uint16_t(words[k] >> 16);
      if constexpr (T == WeightType::F16) {
        out[2 * k] = __half2float(__ushort_as_half(lo));
        out[2 * k + 1] = __half2float(__ushort_as_half(hi));
      } else {
        out[2 * k] = __uint_as_float(uint32_t(lo) << 16);
        out[2 * k + 1] = __uint_as_float(uint32_t(hi) << 16);
      }
    }
  } else if constexpr (T == WeightType::Int8) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    const float s = w.group_size > 0
                        ? __half2float(w.scales[r * w.groups_per_row() + (v * 16) / w.group_size])
                        : 1.0f;  // per-row scale: applied after the row's sum
#pragma unroll
    for (int k = 0; k < 16; ++k)
      out[k] = float(int8_t((words[k / 4] >> (8 * (k % 4))) & 0xFF)) * s;
  } else {
    // One 32-input chunk; a group holds whole chunks, so one group parameter covers it.
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    const int64_t g = r * w.groups_per_row() + (v * 32) / w.group_size;
    __half2 p{};
    if constexpr (T == WeightType::Int4) p = w.params[g];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const uint32_t b = (words[j / 4] >> (8 * (j % 4))) & 0xFF;
      const int lo = int(b & 0x0F), hi = int(b >> 4);
      if constexpr (T == WeightType::Nf4) {
        out[j] = nf4[lo], out[j + 16] = nf4[hi];
      } else {
        out[j] = int4_value(w, lo, p), out[j + 16] = int4_value(w, hi, p);
      }
    }
    if constexpr (T == WeightType::Nf4) {
      const float s = __half2float(w.scales[g]);
#pragma unroll
      for (int j = 0; j < 32; ++j) out[j] *= s;
    }
  }
}

}  // namespace medrt::cuda
