// Split-KV (flash-decoding) second pass: the work items of a split query tile (mask_plan.h) each
// wrote an unnormalized partial (o, m, l) over their window of key tiles; this kernel merges them
// through their log-sum-exp into the output rows (and lse).
#pragma once
#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mask_plan.h"
#include "element.cuh"

namespace lk::cuda {

// Split-KV combine. Grid (combine groups, heads); the block's threads cover the group's rows x Dv.
// Softmax: M = max over slots that met an allowed key (NaN kept), L = sum l_s w_s, o = sum o_s w_s / L
// with w_s = exp(m_s - M), exactly 1 when m_s == M (so a row whose allowed scores are all -inf has
// L = 0 and becomes NaN, as in the single-pass kernels). No slot met an allowed key: 0, lse -inf.
// silu: the plain sum of the slots.
template <typename T>
__global__ void split_combine_kernel(AttentionParams p, const PlanCombine* groups, SplitPartials part) {
  const PlanCombine g = groups[blockIdx.x];
  if (g.seq < 0) return;  // an unused entry of a device-built plan (mask_plan.cuh)
  const int h = blockIdx.y, H = p.heads, Dv = p.value_dim;
  const int64_t q0 = p.q_layout.offsets[g.seq];
  const int rows = p.q_layout.offsets[g.seq + 1] - (int)q0;  // <= kSplitRows (one query tile)
  const bool softmax = p.normalize == kSoftmax;
  T* const out = static_cast<T*>(p.out);
  for (int i = threadIdx.x; i < rows * Dv; i += blockDim.x) {
    const int r = i / Dv, c = i % Dv;
    float M = -INFINITY;
    bool any = false;
    for (int s = 0; s < g.slots; ++s) {
      const int64_t at = split_row_index(g.first_slot + s, H, h, r);
      if (part.seen[at]) {
        any = true;
        M = max_keep_nan(M, part.m[at]);
      }
    }
    float L = 0.0f, acc = 0.0f;
    for (int s = 0; s < g.slots; ++s) {
      const int64_t at = split_row_index(g.first_slot + s, H, h, r);
      if (!softmax) {
        acc += part.o[at * Dv + c];
        continue;
      }
      if (!part.seen[at]) continue;
      const float m = part.m[at];
      const float w = m == M ? 1.0f : __expf(m - M);
      L = fmaf(part.l[at], w, L);
      acc = fmaf(part.o[at * Dv + c], w, acc);
    }
    const float value = !softmax ? acc : !any ? 0.0f : L == 0.0f ? quiet_nan() : acc / L;
    out[((q0 + r) * H + h) * Dv + c] = from_float<T>(value);
    if (p.lse && c == 0)
      p.lse[(q0 + r) * H + h] = !any ? -INFINITY : L == 0.0f ? quiet_nan() : M + logf(L);
  }
}

}  // namespace lk::cuda
