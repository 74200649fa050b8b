// Paged KV write and paged flash attention on the GPU (cache layout of kernels.h:
// [num_blocks, n_kv_heads, block_size, head_dim], f32 or f16; f16 is written rounded to nearest
// even, as on the CPU, and read back into f32 registers).
//
// Attention: one CTA takes a tile of R consecutive token rows, one kv head and up to kQvMax of
// the query heads that share it (GQA heads packed: each K/V row is read once for all of them),
// and one split of the keys. Rows of the tile that belong to the same sequence (a prefill
// chunk) are processed together as one set of query vectors over that sequence's blocks, each
// row masking the keys after its own position (varlen causal); rows of different sequences
// (a decode batch) are processed one after the other. Within a CTA the softmax is online over
// key blocks (flash attention: no [T, context] score matrix).
//
// Split-KV (flash-decoding): the keys of a row are cut into splits of P keys, one CTA each, so
// a decode step with few rows still fills the GPU; a second kernel merges the splits' partial
// (max, sum, accumulator) triples. The number of splits comes from host-known shapes only
// (T, max_blocks, the scratch size), so a captured graph stays valid when it is replayed with
// other positions and block tables.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/launch.h"
#include "backend/cuda/rope_math.cuh"
#include "medrt/error.h"

namespace medrt::cuda {
namespace {

constexpr int kAttnThreads = 128;     // 4 warps
constexpr int kQvMax = 16;            // query vectors (rows x packed heads) per pass
constexpr int kMaxHeadDim = 256;      // two accumulator dims per thread
constexpr int kDimsPerThread = kMaxHeadDim / kAttnThreads;
constexpr int kTargetCtas = 264;      // about two per SM on an H100/H200 (132 SMs)

// Element i of a cache tensor as f32 (the branch is uniform across the grid).
__device__ __forceinline__ float kv_load(const void* base, int64_t i, bool half) {
  return half ? __half2float(static_cast<const __half*>(base)[i])
              : static_cast<const float*>(base)[i];
}

__global__ void kv_write_kernel(const float* k, const float* v, int64_t T,
                                const int32_t* slot_mapping, cpu::PagedKV cache) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = cache.n_kv_heads * cache.head_dim;
  if (idx >= T * row) return;
  const int64_t t = idx / row, hd = idx % row, h = hd / cache.head_dim, d = hd % cache.head_dim;
  const int32_t slot = slot_mapping[t];
  if (slot < 0) return;
  const int64_t block = slot / cache.block_size, off = slot % cache.block_size;
  const int64_t dst =
      ((block * cache.n_kv_heads + h) * cache.block_size + off) * cache.head_dim + d;
  if (cache.dtype == DType::F16) {
    static_cast<__half*>(cache.k)[dst] = __float2half_rn(k[idx]);
    static_cast<__half*>(cache.v)[dst] = __float2half_rn(v[idx]);
  } else {
    static_cast<float*>(cache.k)[dst] = k[idx];
    static_cast<float*>(cache.v)[dst] = v[idx];
  }
}

// RoPE of q and k and the KV write in one launch: one thread per (row, head, pair i) over the
// query heads then the kv heads; a kv-head thread also writes its two roped keys and the two
// values beside them into the cache (kv_write_kernel's layout and rounding).
__global__ void rope_kv_write_kernel(float* q, float* k, const float* v, int64_t T,
                                     int64_t n_heads, const int32_t* positions,
                                     const float* inv_freq, const int32_t* slot_mapping,
                                     cpu::PagedKV cache) {
  const int64_t hd = cache.head_dim, half = hd / 2, heads = n_heads + cache.n_kv_heads;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * heads * half) return;
  const int64_t t = idx / (heads * half), head = (idx / half) % heads, i = idx % half;
  if (head < n_heads) {
    rope_rotate(q + (t * n_heads + head) * hd, i, half, positions[t], inv_freq[i]);
    return;
  }
  const int64_t h = head - n_heads, src = (t * cache.n_kv_heads + h) * hd;
  rope_rotate(k + src, i, half, positions[t], inv_freq[i]);
  const int32_t slot = slot_mapping[t];
  if (slot < 0) return;
  const int64_t block = slot / cache.block_size, off = slot % cache.block_size;
  const int64_t dst = ((block * cache.n_kv_heads + h) * cache.block_size + off) * hd;
  for (int e = 0; e < 2; ++e) {
    const int64_t d = i + e * half;
    if (cache.dtype == DType::F16) {
      static_cast<__half*>(cache.k)[dst + d] = __float2half_rn(k[src + d]);
      static_cast<__half*>(cache.v)[dst + d] = __float2half_rn(v[src + d]);
    } else {
      static_cast<float*>(cache.k)[dst + d] = k[src + d];
      static_cast<float*>(cache.v)[dst + d] = v[src + d];
    }
  }
}

struct AttnParams {
  const float* q;
  float* out;
  float* part_acc;  // [T, n_heads, n_splits, head_dim] (n_splits > 1)
  float* part_ml;   // [T, n_heads, n_splits, 2]
  cpu::PagedKV cache;
  cpu::AttentionBatch batch;
  int64_t n_heads, group;  // group: query heads per kv head
  int rows_per_tile, heads_per_cta, head_chunks;
  int64_t split_keys;      // P, a multiple of block_size
  int n_splits;
  float scale;
};

__global__ void __launch_bounds__(kAttnThreads) paged_attention_kernel(AttnParams p) {
  extern __shared__ float smem[];
  const int64_t hd = p.cache.head_dim, bs = p.cache.block_size, H = p.cache.n_kv_heads;
  float* sq = smem;                          // [kQvMax][hd] queries
  float* ss = sq + kQvMax * hd;              // [kQvMax][bs] scores, then probabilities
  float* sm = ss + kQvMax * bs;              // [kQvMax] running max
  float* sl = sm + kQvMax;                   // [kQvMax] running sum
  float* salpha = sl + kQvMax;               // [kQvMax] rescale of this block
  int* srow = reinterpret_cast<int*>(salpha + kQvMax);  // [kQvMax] token row of each vector
  int* shead = srow + kQvMax;                           // [kQvMax] query head of each vector

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t t0 = int64_t(blockIdx.x) * p.rows_per_tile;
  const int rows = int(min(int64_t(p.rows_per_tile), p.batch.T - t0));
  const int64_t kvh = blockIdx.y / p.head_chunks;
  const int g0 = int(blockIdx.y % p.head_chunks) * p.heads_per_cta;
  const int gc = int(min(int64_t(p.heads_per_cta), p.group - g0));
  const int split = int(blockIdx.z);
  const int64_t key_lo = int64_t(split) * p.split_keys;

  int seg = 0;
  while (seg < rows) {
    const int32_t seq = p.batch.token_seq[t0 + seg];
    int seg_end = seg + 1;
    while (seg_end < rows && p.batch.token_seq[t0 + seg_end] == seq) ++seg_end;
    // This pass: rows seg..seg_end-1 x heads g0..g0+gc-1, at most kQvMax vectors.
    const int rows_per_pass = max(1, kQvMax / gc);
    for (int r0 = seg; r0 < seg_end; r0 += rows_per_pass) {
      const int nrow = min(rows_per_pass, seg_end - r0);
      const int nq = nrow * gc;
      int64_t max_pos = 0;
      for (int r = 0; r < nrow; ++r)
        max_pos = max(max_pos, int64_t(p.batch.positions[t0 + r0 + r]));
      const int64_t key_hi = min(max_pos + 1, key_lo + p.split_keys);
      if (tid < kQvMax) {
        srow[tid] = int(t0 + r0 + tid / gc);
        shead[tid] = int(kvh * p.group + g0 + tid % gc);
        sm[tid] = -INFINITY;
        sl[tid] = 0.0f;
      }
      __syncthreads();
      for (int64_t e = tid; e < int64_t(nq) * hd; e += kAttnThreads) {
        const int qi = int(e / hd);
        sq[e] = p.q[(int64_t(srow[qi]) * p.n_heads + shead[qi]) * hd + e % hd];
      }
      float acc[kQvMax][kDimsPerThread];
#pragma unroll
      for (int qi = 0; qi < kQvMax; ++qi)
#pragma unroll
        for (int u = 0; u < kDimsPerThread; ++u) acc[qi][u] = 0.0f;
      __syncthreads();

      const int32_t* table = p.batch.block_tables + int64_t(seq) * p.batch.max_blocks;
      for (int64_t b = key_lo / bs; b * bs < key_hi; ++b) {
        const int64_t nk = min(bs, key_hi - b * bs);
        const int64_t base = ((int64_t(table[b]) * H + kvh) * bs) * hd;
        const bool half = p.cache.dtype == DType::F16;
        // Scores: warp w takes keys w, w + 4, ...; lanes split head_dim; fixed shuffle tree.
        for (int64_t j = warp; j < nk; j += kAttnThreads / 32) {
          float kreg[kMaxHeadDim / 32];
#pragma unroll
          for (int u = 0; u < kMaxHeadDim / 32; ++u)
            kreg[u] = lane + 32 * u < hd ? kv_load(p.cache.k, base + j * hd + lane + 32 * u, half)
                                         : 0.0f;
          const int64_t key_pos = b * bs + j;
          for (int qi = 0; qi < nq; ++qi) {
            float d = 0.0f;
#pragma unroll
            for (int u = 0; u < kMaxHeadDim / 32; ++u)
              if (lane + 32 * u < hd) d = fmaf(sq[qi * hd + lane + 32 * u], kreg[u], d);
#pragma unroll
            for (int off = 16; off > 0; off /= 2) d += __shfl_xor_sync(0xffffffffu, d, off);
            if (lane == 0)
              ss[qi * bs + j] = key_pos <= p.batch.positions[srow[qi]] ? d * p.scale : -INFINITY;
          }
        }
        __syncthreads();
        if (tid < nq) {  // online softmax update of vector tid over this block
          float mx = -INFINITY;
          for (int64_t j = 0; j < nk; ++j) mx = fmaxf(mx, ss[tid * bs + j]);
          const float m_old = sm[tid], m_new = fmaxf(m_old, mx);
          float alpha = 1.0f, sum = 0.0f;
          if (m_new == -INFINITY) {
            for (int64_t j = 0; j < nk; ++j) ss[tid * bs + j] = 0.0f;
          } else {
            alpha = expf(m_old - m_new);
            for (int64_t j = 0; j < nk; ++j) {
              const float e = expf(ss[tid * bs + j] - m_new);
              ss[tid * bs + j] = e;
              sum += e;
            }
          }
          sm[tid] = m_new;
          sl[tid] = sl[tid] * alpha + sum;
          salpha[tid] = alpha;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < kDimsPerThread; ++u) {
          const int64_t d = tid + int64_t(kAttnThreads) * u;
          if (d >= hd) continue;
#pragma unroll
          for (int qi = 0; qi < kQvMax; ++qi)
            if (qi < nq) acc[qi][u] *= salpha[qi];
          for (int64_t j = 0; j < nk; ++j) {
            const float vj = kv_load(p.cache.v, base + j * hd + d, half);
            // A masked key (p = 0) may sit in a slot never written (device KV memory is not
            // cleared): skip it rather than multiply 0 by whatever bits are there.
#pragma unroll
            for (int qi = 0; qi < kQvMax; ++qi) {
              const float pj = qi < nq ? ss[qi * bs + j] : 0.0f;
              if (pj != 0.0f) acc[qi][u] = fmaf(pj, vj, acc[qi][u]);
            }
          }
        }
        __syncthreads();
      }

#pragma unroll
      for (int u = 0; u < kDimsPerThread; ++u) {
        const int64_t d = tid + int64_t(kAttnThreads) * u;
        if (d >= hd) continue;
#pragma unroll
        for (int qi = 0; qi < kQvMax; ++qi) {
          if (qi >= nq) continue;
          const int64_t rh = int64_t(srow[qi]) * p.n_heads + shead[qi];
          if (p.n_splits == 1) {
            p.out[rh * hd + d] = sl[qi] > 0.0f ? acc[qi][u] / sl[qi] : 0.0f;
          } else {
            const int64_t slot = rh * p.n_splits + split;
            p.part_acc[slot * hd + d] = acc[qi][u];
            if (d == 0) p.part_ml[slot * 2] = sm[qi], p.part_ml[slot * 2 + 1] = sl[qi];
          }
        }
      }
      __syncthreads();  // shared state is reused by the next pass
    }
    seg = seg_end;
  }
}

// out[row, head] = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s over the splits, in split
// order (a split past the row's keys has m = -inf and l = 0 and adds nothing).
__global__ void combine_splits_kernel(const float* part_acc, const float* part_ml, int n_splits,
                                      int64_t hd, float* out) {
  const int64_t rh = blockIdx.x;
  float M = -INFINITY;
  for (int s = 0; s < n_splits; ++s) M = fmaxf(M, part_ml[(rh * n_splits + s) * 2]);
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    if (M != -INFINITY) {
      for (int s = 0; s < n_splits; ++s) {
        const int64_t slot = rh * n_splits + s;
        const float m = part_ml[slot * 2];
        if (m == -INFINITY) continue;
        const float w = expf(m - M);
        num = fmaf(w, part_acc[slot * hd + d], num);
        den = fmaf(w, part_ml[slot * 2 + 1], den);
      }
    }
    out[rh * hd + d] = den > 0.0f ? num / den : 0.0f;
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void kv_write(const float* k, const float* v, int64_t T, const int32_t* slot_mapping,
              const cpu::PagedKV& cache, cudaStream_t stream) {
  const int64_t n = T * cache.n_kv_heads * cache.head_dim;
  if (n <= 0) return;
  cpu::check_kv_dtype(cache.dtype);
  kv_write_kernel<<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(k, v, T, slot_mapping, cache);
  check_launch("kv_write_kernel");
}

void rope_kv_write(float* q, float* k, const float* v, int64_t T, int64_t n_heads,
                   const int32_t* positions, const float* inv_freq, const int32_t* slot_mapping,
                   const cpu::PagedKV& cache, cudaStream_t stream) {
  const int64_t n = T * (n_heads + cache.n_kv_heads) * (cache.head_dim / 2);
  if (n <= 0) return;
  cpu::check_kv_dtype(cache.dtype);
  rope_kv_write_kernel<<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(
      q, k, v, T, n_heads, positions, inv_freq, slot_mapping, cache);
  check_launch("rope_kv_write_kernel");
}

void paged_attention(const float* q, int64_t n_heads, const cpu::PagedKV& cache,
                     const cpu::AttentionBatch& batch, float scale, float* out,
                     const AttentionScratch& scratch, cudaStream_t stream) {
  const int64_t T = batch.T, H = cache.n_kv_heads, hd = cache.head_dim, bs = cache.block_size;
  if (T <= 0) return;
  cpu::check_kv_dtype(cache.dtype);
  if (H <= 0 || n_heads % H != 0)
    throw InvalidRequest("paged_attention: " + std::to_string(n_heads) +
                         " query heads are not a multiple of " + std::to_string(H) + " kv heads");
  if (hd <= 0 || hd > kMaxHeadDim)
    throw InvalidRequest("paged_attention on CUDA needs head_dim up to " +
                         std::to_string(kMaxHeadDim) + ", got " + std::to_string(hd));
  if (bs <= 0 || bs > 256)
    throw InvalidRequest("paged_attention on CUDA needs block_size 1..256, got " +
                         std::to_string(bs));
  AttnParams p{};
  p.q = q, p.out = out, p.cache = cache, p.batch = batch, p.scale = scale;
  p.n_heads = n_heads, p.group = n_heads / H;
  p.heads_per_cta = int(std::min<int64_t>(p.group, kQvMax));
  p.head_chunks = int(ceil_div(p.group, p.heads_per_cta));
  // Small batches (decode) give each row its own CTA; long ones (prefill) tile rows so one
  // K/V read serves several query rows of the same sequence.
  p.rows_per_tile = T > 64 ? std::max(1, kQvMax / p.heads_per_cta) : 1;
  const int64_t tiles = ceil_div(T, p.rows_per_tile);
  const int64_t ctas = tiles * H * p.head_chunks;
  int64_t splits = std::clamp<int64_t>(ceil_div(kTargetCtas, ctas), 1,
                                        std::max<int64_t>(1, batch.max_blocks));
  const int64_t per_split_floats = T * n_heads * (hd + 2);
  if (splits > 1) splits = std::min<int64_t>(splits, scratch.floats / per_split_floats);
  splits = std::max<int64_t>(splits, 1);
  const int64_t blocks_per_split = ceil_div(std::max<int64_t>(batch.max_blocks, 1), splits);
  p.n_splits = int(ceil_div(std::max<int64_t>(batch.max_blocks, 1), blocks_per_split));
  p.split_keys = p.n_splits == 1 ? batch.max_blocks * bs + 1 : blocks_per_split * bs;
  p.part_acc = scratch.data;
  p.part_ml = scratch.data + T * n_heads * p.n_splits * hd;

  const size_t shmem = sizeof(float) * size_t(kQvMax * hd + kQvMax * bs + 3 * kQvMax) +
                       sizeof(int) * 2 * kQvMax;
  const dim3 grid(unsigned(tiles), unsigned(H * p.head_chunks), unsigned(p.n_splits));
  paged_attention_kernel<<<grid, kAttnThreads, shmem, stream>>>(p);
  check_launch("paged_attention_kernel");
  if (p.n_splits > 1) {
    combine_splits_kernel<<<unsigned(T * n_heads), kAttnThreads, 0, stream>>>(
        p.part_acc, p.part_ml, p.n_splits, hd, out);
    check_launch("combine_splits_kernel");
  }
}

}  // namespace medrt::cuda
