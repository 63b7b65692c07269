// Online softmax (and HSTU's silu weights) on the S fragments of the tensor-core attention kernel,
// in registers. Layout of s / o and of the allow word: tc_masking.cuh. A thread holds two rows
// (r = 0, 1: accumulators i = 2 r, 2 r + 1); each row is spread over the 4 lanes of a quad, so row
// maxima and sums are quad reductions.
//
// Softmax works in the log2 domain: x = s * scale * log2(e) (one multiply folds the scale and the
// base change; its sign may be anything), p = exp2(x - m). m is the row's running maximum of x (NaN
// kept, as cuda/common/ieee.h requires), l the thread's share of the row's running sum (reduced
// across the quad once, at the end). Masked elements become x = -inf, hence p = 0 exactly; a row
// whose maximum is still -inf (no allowed key yet, or only -inf scores) uses 0 in place of the
// maximum, so its weights are 0 (not exp2(-inf + inf)) and the NaN / 0 decision waits for the end,
// as in the scalar kernel.
#pragma once
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "tc_fragments.cuh"

namespace lk::cuda {

// s: raw scores in, probabilities out. Rescales the running o and l by exp2(m_old - m_new).
template <int kSTiles, int kOTiles>
__device__ __forceinline__ void tc_online_softmax(float (&s)[kSTiles][4], uint32_t allow, bool masked, float scale_log2, float (&m)[2],
                                                  float (&l)[2], float (&o)[kOTiles][4], int o_tiles) {
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float x = s[nt][i] * scale_log2;
      s[nt][i] = !masked || ((allow >> (4 * nt + i)) & 1u) ? x : -INFINITY;
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) mx = max_keep_nan(mx, max_keep_nan(s[nt][2 * r], s[nt][2 * r + 1]));
    const float m_new = max_keep_nan(m[r], quad_max(mx));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = exp2f(m[r] - m_use);  // 0 while m was -inf; NaN keeps a NaN row NaN
    m[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float p = exp2f(s[nt][2 * r + c] - m_use);
        s[nt][2 * r + c] = p;
        sum += p;
      }
    l[r] = l[r] * alpha + sum;
#pragma unroll
    for (int dn = 0; dn < kOTiles; ++dn)
      if (dn < o_tiles) {
        o[dn][2 * r] *= alpha;
        o[dn][2 * r + 1] *= alpha;
      }
  }
}

// HSTU pointwise weights: p = allowed ? silu(scale s) / divisor : 0 (silu(-inf) is NaN, as the
// reference's). No running state: o accumulates the weighted values directly.
template <int kSTiles>
__device__ __forceinline__ void tc_silu_weights(float (&s)[kSTiles][4], uint32_t allow, bool masked, float scale, float inv_divisor) {
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float x = s[nt][i] * scale;
      s[nt][i] = !masked || ((allow >> (4 * nt + i)) & 1u) ? x / (1.0f + __expf(-x)) * inv_divisor : 0.0f;
    }
}

}  // namespace lk::cuda
