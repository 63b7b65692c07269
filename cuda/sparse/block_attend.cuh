// Softmax attention of one query row (every head) over a list of selected keys, by one block:
// a thread per selected key for the scores, block reductions for max and sum, then threads across
// the value dimension for the weighted sum. Entries of -1 are skipped (their rows are never read).
// IEEE over the selected keys, as the reference (cuda/common/ieee.h): the max keeps NaN, a +inf
// score or scores all -inf make the row NaN; a row with nothing selected gives zeros and lse -inf.
// While every score met is -inf (a chunk of them before a larger one) their weights are 0.
#pragma once
#include "../attention/element.cuh"
#include "../attention/warp_reduce.cuh"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/sparse_params.h"
#include "block_select.cuh"

namespace lk::cuda {

constexpr int kAttendChunk = kSelectThreads;  // keys scored per pass

struct AttendShared {
  float prob[kAttendChunk];
  int key[kAttendChunk];
  float reduce[kSelectThreads / 32];
  float row_m, row_l, alpha;
};

__device__ __forceinline__ float block_max(float x, AttendShared& sh) {
  x = warp_max(x);
  if ((threadIdx.x & 31) == 0) sh.reduce[threadIdx.x >> 5] = x;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < kSelectThreads / 32; ++w) m = max_keep_nan(m, sh.reduce[w]);
  __syncthreads();
  return m;
}

__device__ __forceinline__ float block_sum(float x, AttendShared& sh) {
  x = warp_sum(x);
  if ((threadIdx.x & 31) == 0) sh.reduce[threadIdx.x >> 5] = x;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < kSelectThreads / 32; ++w) s += sh.reduce[w];
  __syncthreads();
  return s;
}

// selected(i) gives the i-th selected key position (inside the sequence) or -1.
template <typename T, typename Selected>
__device__ void block_attend(const SparseParams& p, int64_t row, int64_t key_start, int count, Selected selected, AttendShared& sh) {
  const T* __restrict__ q = static_cast<const T*>(p.q);
  const T* __restrict__ k = static_cast<const T*>(p.k);
  const T* __restrict__ v = static_cast<const T*>(p.v);
  T* __restrict__ out = static_cast<T*>(p.out);
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, tid = threadIdx.x;
  for (int h = 0; h < H; ++h) {
    const int g = h / (H / Hkv);
    const T* qh = q + (row * H + h) * D;
    // Each thread owns value columns c = tid, tid + 256 (Dv <= 256 => one).
    float acc = 0.0f;
    bool seen = false;  // a key was selected (the same in every thread)
    if (tid == 0) { sh.row_m = -INFINITY; sh.row_l = 0.0f; }
    __syncthreads();
    for (int base = 0; base < count; base += kAttendChunk) {
      const int i = base + tid;
      const int key = i < count ? selected(i) : -1;
      float s = -INFINITY;
      if (key >= 0) {
        const T* kr = k + ((key_start + key) * Hkv + g) * D;
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot = fmaf(to_float(qh[d]), to_float(kr[d]), dot);
        s = dot * p.scale;
      }
      // A chunk with nothing selected leaves the row as it is.
      if (!__syncthreads_or(key >= 0)) continue;
      seen = true;
      const float m_old = sh.row_m;  // -inf (and l 0) until a score above -inf was met
      const float m_new = max_keep_nan(m_old, block_max(s, sh));
      const bool live = m_new != -INFINITY;  // else every score so far is -inf: weights 0 for now
      const float prob = live && key >= 0 ? __expf(s - m_new) : 0.0f;
      sh.prob[tid] = prob;
      sh.key[tid] = key;
      const float sum = block_sum(prob, sh);
      const float alpha = live ? __expf(m_old - m_new) : 1.0f;
      if (tid == 0) { sh.row_l = sh.row_l * alpha + sum; sh.row_m = m_new; }
      if (tid < Dv) {
        float a = acc * alpha;
        const int n = count - base < kAttendChunk ? count - base : kAttendChunk;
        for (int j = 0; j < n; ++j)
          if (sh.key[j] >= 0) a = fmaf(sh.prob[j], to_float(v[((key_start + sh.key[j]) * Hkv + g) * Dv + tid]), a);
        acc = a;
      }
      __syncthreads();
    }
    // Nothing selected: 0, lse -inf. Scores all -inf: l 0, NaN. Else l >= 1 (the max's term) or NaN.
    const float l = sh.row_l;
    const float value = !seen ? 0.0f : l == 0.0f ? quiet_nan() : acc / l;
    if (tid < Dv) out[(row * H + h) * Dv + tid] = from_float<T>(value);
    if (p.lse && tid == 0) p.lse[row * H + h] = !seen ? -INFINITY : l == 0.0f ? quiet_nan() : sh.row_m + logf(l);
    __syncthreads();
  }
}

}  // namespace lk::cuda
