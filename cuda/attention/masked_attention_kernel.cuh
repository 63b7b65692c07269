// Tiled masked attention (SPEC §3), FlashAttention-style: one block owns a query tile of one head
// of one sequence, walks only the key tiles the rule can reach, and keeps a running max / sum per
// row (online softmax) so scores never leave shared memory. The block walks its work item's key runs
// (the mask plan, cuda/common/mask_plan.h): fully masked tiles are never visited and full tiles run
// without per-element checks. The grid holds the plan's work items only: empty sequences launch
// nothing. A split-KV item writes its unnormalized (o, m, l) to a partial slot (split_combine_kernel).
// Non-finite values follow IEEE arithmetic over allowed pairs only (SPEC §3, cuda/common/ieee.h):
// a row that may see none of a tile's keys is left untouched, the running max keeps NaN, and when a
// partial tile's V rows hold a NaN / Inf, P V adds each row's allowed keys only (by selection; a
// masked key's 0 weight times its NaN would leak through the plain product).
#pragma once
#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mask_plan.h"
#include "../common/mask_rules.h"
#include "../common/tile_plan.h"
#include "element.cuh"
#include "kernel_traits.cuh"
#include "warp_reduce.cuh"

namespace lk::cuda {

// Grid (work items, heads): block x runs plan.work[x], whose tiles are kBlockM queries x kBlockN keys.
template <typename T, int kCap>
__global__ void __launch_bounds__(AttentionTraits<kCap>::kThreads, 1)
    masked_attention_kernel(AttentionParams p, PlanView plan, SplitPartials part) {
  using Tr = AttentionTraits<kCap>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN;
  static_assert(32 % BN == 0, "a warp's ballot covers whole rows of a score tile");
  constexpr uint32_t kRowBits = BN == 32 ? 0xffffffffu : (1u << (BN % 32)) - 1u;
  const PlanWork item = plan.work[blockIdx.x];
  if (item.seq < 0) return;  // an unused entry of a device-built plan (mask_plan.cuh)
  const int b = item.seq;
  const int q_tile = item.tile;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int64_t q_start = p.q_layout.offsets[b], k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)q_start;
  const int Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int row0 = q_tile * BM;
  const int rows = min(BM, Lq - row0);
  const int align = Lk - Lq;  // bottom-right causal alignment
  const int D = p.head_dim, Dv = p.value_dim, H = p.heads, Hkv = p.kv_heads;
  const int g = h / (H / Hkv);
  const bool softmax = p.normalize == kSoftmax;
  const T* __restrict__ q = static_cast<const T*>(p.q);
  const T* __restrict__ k = static_cast<const T*>(p.k);
  const T* __restrict__ v = static_cast<const T*>(p.v);

  __shared__ float q_s[BM][Tr::kStride];
  __shared__ float kv_s[BN][Tr::kStride];  // K tile, then V tile of the same keys
  __shared__ float s_s[BM][BN + 1];        // scores, then probabilities
  __shared__ float row_m[BM], row_l[BM], row_alpha[BM];
  __shared__ uint32_t allow_s[BM];  // bit j of row r: the row may see key j of the tile
  __shared__ int row_seen[BM];      // the row has met an allowed key
  __shared__ int q_role_s[BM], q_seg_s[BM], k_role_s[BN], k_seg_s[BN];
  __shared__ MaskRule rule;  // indexed by role at run time: shared memory, not a local copy

  if (tid == 0) rule = p.rule;

  for (int i = tid; i < BM * kCap; i += Tr::kThreads) {
    const int r = i / kCap, d = i % kCap;
    q_s[r][d] = (r < rows && d < D) ? to_float(q[((q_start + row0 + r) * H + h) * D + d]) * p.scale : 0.0f;
  }
  for (int r = tid; r < BM; r += Tr::kThreads) {
    const int64_t t = q_start + row0 + (r < rows ? r : 0);
    q_role_s[r] = p.q_layout.roles ? p.q_layout.roles[t] : 0;
    q_seg_s[r] = p.q_layout.segments ? p.q_layout.segments[t] : 0;
    row_m[r] = -INFINITY;
    row_l[r] = 0.0f;
    row_alpha[r] = 1.0f;
    row_seen[r] = 0;
  }
  float acc[Tr::kAccPerThread];
#pragma unroll
  for (int e = 0; e < Tr::kAccPerThread; ++e) acc[e] = 0.0f;

  KeyTileCursor cursor;  // the item's listed key tiles, in order (the same in every thread)
  cursor.start(plan.runs, item);
  __syncthreads();

  int kt = 0, cls = kTileSkip;
  while (cursor.next(&kt, &cls)) {
    const int col0 = kt * BN;
    const int cols = min(BN, Lk - col0);

    for (int i = tid; i < BN * kCap; i += Tr::kThreads) {
      const int j = i / kCap, d = i % kCap;
      kv_s[j][d] = (j < cols && d < D) ? to_float(k[((k_start + col0 + j) * Hkv + g) * D + d]) : 0.0f;
    }
    if (cls == kTilePartial) {
      for (int j = tid; j < BN; j += Tr::kThreads) {
        const int64_t t = k_start + col0 + (j < cols ? j : 0);
        k_role_s[j] = p.kv_layout.roles ? p.kv_layout.roles[t] : 0;
        k_seg_s[j] = p.kv_layout.segments ? p.kv_layout.segments[t] : 0;
      }
    }
    __syncthreads();

    // Scores of allowed pairs; masked (and padding) entries become -inf (softmax) or 0 (silu). A
    // warp's lanes cover whole rows (BN divides 32), so one ballot gives each row's allowed keys.
#pragma unroll 1
    for (int e = 0; e < Tr::kScoresPerThread; ++e) {
      const int idx = tid + e * Tr::kThreads;
      const int r = idx / BN, j = idx % BN;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot = fmaf(q_s[r][d], kv_s[j][d], dot);
      bool ok = j < cols && r < rows;
      if (ok && cls == kTilePartial)
        ok = pair_allowed(rule, q_role_s[r], k_role_s[j], q_seg_s[r], k_seg_s[j], row0 + r + align, col0 + j);
      const unsigned ballot = __ballot_sync(0xffffffffu, ok);
      if (j == 0) allow_s[r] = (ballot >> lane) & kRowBits;  // this lane starts row r's bits
      if (softmax) {
        s_s[r][j] = ok ? dot : -INFINITY;
      } else {
        // HSTU pointwise attention: silu(score) / divisor (silu(-inf) is NaN, as the reference's).
        s_s[r][j] = ok ? dot / (1.0f + __expf(-dot)) * p.silu_inv_divisor : 0.0f;
      }
    }
    __syncthreads();

    if (softmax) {
      // One warp per row: rescale factor for the old accumulators, probabilities for this tile.
      // m_old is -inf (and l 0) until the row met an allowed score above -inf; an allowed +inf or
      // NaN then makes the row NaN through exp(inf - inf) or the NaN max, as in the reference.
      // While every allowed score is -inf the weights are 0 (NaN at the end if it stays so).
      // Masked entries weigh exactly 0 by selection.
      for (int r = warp; r < BM; r += Tr::kWarps) {
        const uint32_t allow = allow_s[r];
        const bool mine = lane < BN && ((allow >> lane) & 1u);
        float prob = 0.0f, alpha = 1.0f;
        if (allow != 0u) {  // the same in every lane of the warp
          const float x = mine ? s_s[r][lane] : -INFINITY;
          const float m_old = row_m[r];
          const float m_new = max_keep_nan(m_old, warp_max(x));
          if (m_new != -INFINITY) {  // warp-uniform too
            prob = mine ? __expf(x - m_new) : 0.0f;
            alpha = __expf(m_old - m_new);
            const float sum = warp_sum(prob);
            if (lane == 0) {
              row_l[r] = row_l[r] * alpha + sum;
              row_m[r] = m_new;
            }
          }
          if (lane == 0) row_seen[r] = 1;
        }
        if (lane < BN) s_s[r][lane] = prob;
        if (lane == 0) row_alpha[r] = alpha;
      }
    }
    bool nonfinite = false;
    for (int i = tid; i < BN * kCap; i += Tr::kThreads) {
      const int j = i / kCap, c = i % kCap;
      const float x = (j < cols && c < Dv) ? to_float(v[((k_start + col0 + j) * Hkv + g) * Dv + c]) : 0.0f;
      kv_s[j][c] = x;
      nonfinite = nonfinite || !is_finite_f32(x);
    }
    // Full tiles have every (row, key) pair allowed: only partial ones need the exact product.
    const bool exact = __syncthreads_or(nonfinite && cls == kTilePartial);

    // acc = acc * alpha + P V. Keys outermost: each thread's column index repeats across its
    // accumulators, so one V element feeds several of them and registers stay few.
#pragma unroll
    for (int e = 0; e < Tr::kAccPerThread; ++e) acc[e] *= row_alpha[(tid + e * Tr::kThreads) / kCap];
    if (!exact) {
#pragma unroll 2
      for (int j = 0; j < BN; ++j) {
#pragma unroll
        for (int e = 0; e < Tr::kAccPerThread; ++e) {
          const int idx = tid + e * Tr::kThreads;
          acc[e] = fmaf(s_s[idx / kCap][j], kv_s[j][idx % kCap], acc[e]);
        }
      }
    } else {
#pragma unroll 1
      for (int j = 0; j < BN; ++j) {
#pragma unroll
        for (int e = 0; e < Tr::kAccPerThread; ++e) {
          const int idx = tid + e * Tr::kThreads;
          if ((allow_s[idx / kCap] >> j) & 1u) acc[e] = fmaf(s_s[idx / kCap][j], kv_s[j][idx % kCap], acc[e]);
        }
      }
    }
    __syncthreads();
  }

  if (item.slot >= 0) {
    // Split-KV: this item's share of the rows (at most kSplitRows), unnormalized, for split_combine_kernel.
#pragma unroll
    for (int e = 0; e < Tr::kAccPerThread; ++e) {
      const int idx = tid + e * Tr::kThreads;
      const int r = idx / kCap, c = idx % kCap;
      if (r < rows && c < Dv) part.o[split_row_index(item.slot, H, h, r) * Dv + c] = acc[e];
    }
    for (int r = tid; r < rows; r += Tr::kThreads) {
      const int64_t at = split_row_index(item.slot, H, h, r);
      part.m[at] = row_m[r];
      part.l[at] = row_l[r];
      part.seen[at] = row_seen[r];
    }
    return;
  }
  T* __restrict__ out = static_cast<T*>(p.out);
#pragma unroll
  for (int e = 0; e < Tr::kAccPerThread; ++e) {
    const int idx = tid + e * Tr::kThreads;
    const int r = idx / kCap, c = idx % kCap;
    if (r < rows && c < Dv) {
      // No allowed key: 0. Allowed keys whose scores are all -inf: l is 0, the row NaN (the
      // reference's exp(-inf + inf)). Else l >= 1 (the max's own term) or NaN.
      const float l = row_l[r];
      const float value = !softmax ? acc[e] : !row_seen[r] ? 0.0f : l == 0.0f ? quiet_nan() : acc[e] / l;
      out[((q_start + row0 + r) * H + h) * Dv + c] = from_float<T>(value);
    }
  }
  if (p.lse) {
    for (int r = tid; r < rows; r += Tr::kThreads) {
      const float l = row_l[r];
      p.lse[(q_start + row0 + r) * H + h] = !row_seen[r] ? -INFINITY : l == 0.0f ? quiet_nan() : row_m[r] + logf(l);
    }
  }
}

}  // namespace lk::cuda
