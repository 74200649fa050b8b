// The rotate-half rotary embedding of one pair (kernels.h cpu::rope), shared by the RoPE kernel
// and the fused RoPE + KV write so both give the same bits.
#pragma once
#include <cstdint>

namespace medrt::cuda {

// Rotates inputs i and i + half of the head vector xh by position * inv_freq.
__device__ __forceinline__ void rope_rotate(float* xh, int64_t i, int64_t half, int32_t position,
                                            float inv_freq) {
  float sn, cs;
  sincosf(float(position) * inv_freq, &sn, &cs);
  const float a = xh[i], b = xh[i + half];
  xh[i] = a * cs - b * sn;
  xh[i + half] = b * cs + a * sn;
}

}  // namespace medrt::cuda
