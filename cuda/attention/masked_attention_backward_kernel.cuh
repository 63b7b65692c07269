// maskedAttentionBackward on CUDA (SPEC §9), scalar FP32 arithmetic, FlashAttention-2 recomputation:
// each block of (query tile x key tile) pairs recomputes its scores from q, k and the forward's lse
// (no [L, L] matrix exists anywhere). dq is accumulated WITHOUT atomics by a separate pass:
//   masked_attention_dkdv_kernel: one block per (real key tile, kv head) owns the dk / dv rows of its
//     keys, summed over the group's query heads (GQA) and every query tile that may see them;
//   masked_attention_dq_kernel:   one block per (real query tile, head) owns its dq rows.
// The second pass recomputes the pairs' weights once more (about 1.4x the arithmetic of an atomic dq)
// and buys deterministic gradients, no float atomics on dq's dtype, and no zero-filled float32
// workspace (FlashAttention-2's choice is atomics; at recommender head sizes the extra pass is cheap).
// Blocks are classified with the forward's shared rule table (skip / partial / full), from summaries
// of the same tiles; a masked pair contributes by selection, so a masked key's NaN / Inf never
// reaches a gradient, and a key nobody may see gets exactly 0.
#pragma once
#include "../common/backward_params.h"
#include "../common/compat.cuh"
#include "../common/mask_rules.h"
#include "../common/tile_plan.h"
#include "element.cuh"

namespace lk::cuda {

struct BackwardTraits {
  static constexpr int kBlockM = 16;   // query rows per tile
  static constexpr int kBlockN = 16;   // keys per tile
  static constexpr int kThreads = 128;
};

// The device addresses of the plan: real tiles of both layouts, their summaries and work lists.
struct BackwardPlan {
  const TileSummary* q_tiles;
  const int32_t* q_base;
  const TileSummary* k_tiles;
  const int32_t* k_base;
  const TileRef* q_work;  // every real query tile
  const TileRef* k_work;  // every real key tile
  const float* delta;     // [tq, heads] = dO · O (softmax)
};

// delta[row, head] = dO · O over the value dim (softmax's row term).
template <typename T>
__global__ void attention_delta_kernel(AttentionBackwardParams p, float* delta) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t rows = p.fwd.tq * p.fwd.heads;
  if (i >= rows) return;
  const int Dv = p.fwd.value_dim;
  const T* o = static_cast<const T*>(p.fwd.out) + i * Dv;
  const T* d = static_cast<const T*>(p.d_out) + i * Dv;
  float acc = 0.0f;
  for (int c = 0; c < Dv; ++c) acc += to_float(o[c]) * to_float(d[c]);
  delta[i] = acc;
}

// One query tile (rows r0 .. r0 + nr of sequence b) meets one key tile (keys c0 .. c0 + nc): the
// weights p and the scaled score gradients scale · dS of its pairs into p_s / ds_s (0 for masked and
// padding pairs). Every thread of the block takes part; the caller synchronizes afterwards.
template <typename T>
__device__ void block_pair_grads(const AttentionBackwardParams& p, const MaskRule& rule, const BackwardPlan& plan, int h,
                                 int64_t q_start, int r0, int nr, int align, int64_t k_start, int c0, int nc, int cls,
                                 float (*p_s)[BackwardTraits::kBlockN + 1], float (*ds_s)[BackwardTraits::kBlockN + 1]) {
  constexpr int BM = BackwardTraits::kBlockM, BN = BackwardTraits::kBlockN;
  const AttentionParams& f = p.fwd;
  const int D = f.head_dim, Dv = f.value_dim, H = f.heads, Hkv = f.kv_heads;
  const int g = h / (H / Hkv);
  const T* q = static_cast<const T*>(f.q);
  const T* k = static_cast<const T*>(f.k);
  const T* v = static_cast<const T*>(f.v);
  const T* dout = static_cast<const T*>(p.d_out);
  const bool softmax = f.normalize == kSoftmax;
  for (int idx = threadIdx.x; idx < BM * BN; idx += blockDim.x) {
    const int r = idx / BN, c = idx % BN;
    float weight = 0.0f, dscore = 0.0f;
    if (r < nr && c < nc) {
      const int64_t qi = q_start + r0 + r, ki = k_start + c0 + c;
      bool allowed = true;
      if (cls != kTileFull)
        allowed = pair_allowed(rule, f.q_layout.roles ? f.q_layout.roles[qi] : 0, f.kv_layout.roles ? f.kv_layout.roles[ki] : 0,
                               f.q_layout.segments ? f.q_layout.segments[qi] : 0, f.kv_layout.segments ? f.kv_layout.segments[ki] : 0,
                               r0 + r + align, c0 + c);
      if (allowed) {
        const T* qrow = q + (qi * H + h) * D;
        const T* krow = k + (ki * Hkv + g) * D;
        const T* vrow = v + (ki * Hkv + g) * Dv;
        const T* drow = dout + (qi * H + h) * Dv;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; ++d) s += to_float(qrow[d]) * to_float(krow[d]);
        for (int d = 0; d < Dv; ++d) dp += to_float(drow[d]) * to_float(vrow[d]);
        pair_weight_dscore(s, dp, softmax, f.scale, softmax ? f.lse[qi * H + h] : 0.0f, softmax ? plan.delta[qi * H + h] : 0.0f,
                           f.silu_inv_divisor, &weight, &dscore);
      }
    }
    p_s[r][c] = weight;
    ds_s[r][c] = dscore;
  }
}

// Grid (real key tiles, kv heads).
template <typename T, int kCap>
__global__ void __launch_bounds__(BackwardTraits::kThreads)
    masked_attention_dkdv_kernel(AttentionBackwardParams p, BackwardPlan plan) {
  constexpr int BM = BackwardTraits::kBlockM, BN = BackwardTraits::kBlockN;
  const AttentionParams& f = p.fwd;
  const TileRef item = plan.k_work[blockIdx.x];
  const int b = item.seq, g = blockIdx.y;
  const int D = f.head_dim, Dv = f.value_dim, H = f.heads, Hkv = f.kv_heads, group = H / Hkv;
  const int64_t q_start = f.q_layout.offsets[b], k_start = f.kv_layout.offsets[b];
  const int Lq = f.q_layout.offsets[b + 1] - (int)q_start, Lk = f.kv_layout.offsets[b + 1] - (int)k_start;
  const int align = Lk - Lq;
  const int c0 = item.tile * BN, nc = min(BN, Lk - c0);
  const T* q = static_cast<const T*>(f.q);
  const T* dout = static_cast<const T*>(p.d_out);

  __shared__ float dk_acc[BN][kCap], dv_acc[BN][kCap];
  __shared__ float p_s[BM][BN + 1], ds_s[BM][BN + 1];
  __shared__ MaskRule rule;
  if (threadIdx.x == 0) rule = f.rule;
  for (int e = threadIdx.x; e < BN * kCap; e += blockDim.x) {
    dk_acc[e / kCap][e % kCap] = 0.0f;
    dv_acc[e / kCap][e % kCap] = 0.0f;
  }
  __syncthreads();
  const TileBounds kb{plan.k_tiles[plan.k_base[b] + item.tile], c0, c0 + nc - 1};
  const int q_tiles = plan.q_base[b + 1] - plan.q_base[b];
  for (int h = g * group; h < (g + 1) * group; ++h) {
    for (int qt = 0; qt < q_tiles; ++qt) {
      const int r0 = qt * BM, nr = min(BM, Lq - r0);
      const TileBounds qb{plan.q_tiles[plan.q_base[b] + qt], r0 + align, r0 + nr - 1 + align};
      const int cls = classify_tile(rule, qb, kb);
      if (cls == kTileSkip) continue;  // uniform over the block
      block_pair_grads<T>(p, rule, plan, h, q_start, r0, nr, align, k_start, c0, nc, cls, p_s, ds_s);
      __syncthreads();
      for (int e = threadIdx.x; e < BN * kCap; e += blockDim.x) {
        const int c = e / kCap, d = e % kCap;
        if (c >= nc) continue;
        float add_v = 0.0f, add_k = 0.0f;
        for (int r = 0; r < nr; ++r) {
          const float w = p_s[r][c], ds = ds_s[r][c];
          if (w == 0.0f && ds == 0.0f) continue;  // masked: the row's NaN / Inf stays out
          const int64_t row = (q_start + r0 + r) * H + h;
          if (d < Dv) add_v += w * to_float(dout[row * Dv + d]);
          if (d < D) add_k += ds * to_float(q[row * D + d]);
        }
        dv_acc[c][d] += add_v;
        dk_acc[c][d] += add_k;
      }
      __syncthreads();
    }
  }
  T* dk = static_cast<T*>(p.dk);
  T* dv = static_cast<T*>(p.dv);
  for (int e = threadIdx.x; e < BN * kCap; e += blockDim.x) {
    const int c = e / kCap, d = e % kCap;
    if (c >= nc) continue;
    const int64_t row = (k_start + c0 + c) * Hkv + g;
    if (d < D) dk[row * D + d] = from_float<T>(dk_acc[c][d]);
    if (d < Dv) dv[row * Dv + d] = from_float<T>(dv_acc[c][d]);
  }
}

// Grid (real query tiles, heads).
template <typename T, int kCap>
__global__ void __launch_bounds__(BackwardTraits::kThreads)
    masked_attention_dq_kernel(AttentionBackwardParams p, BackwardPlan plan) {
  constexpr int BM = BackwardTraits::kBlockM, BN = BackwardTraits::kBlockN;
  const AttentionParams& f = p.fwd;
  const TileRef item = plan.q_work[blockIdx.x];
  const int b = item.seq, h = blockIdx.y;
  const int D = f.head_dim, H = f.heads, Hkv = f.kv_heads, g = h / (H / Hkv);
  const int64_t q_start = f.q_layout.offsets[b], k_start = f.kv_layout.offsets[b];
  const int Lq = f.q_layout.offsets[b + 1] - (int)q_start, Lk = f.kv_layout.offsets[b + 1] - (int)k_start;
  const int align = Lk - Lq;
  const int r0 = item.tile * BM, nr = min(BM, Lq - r0);
  const T* k = static_cast<const T*>(f.k);

  __shared__ float dq_acc[BM][kCap];
  __shared__ float p_s[BM][BN + 1], ds_s[BM][BN + 1];
  __shared__ MaskRule rule;
  if (threadIdx.x == 0) rule = f.rule;
  for (int e = threadIdx.x; e < BM * kCap; e += blockDim.x) dq_acc[e / kCap][e % kCap] = 0.0f;
  __syncthreads();
  const TileBounds qb{plan.q_tiles[plan.q_base[b] + item.tile], r0 + align, r0 + nr - 1 + align};
  const int key_end = visible_key_end(rule, qb, Lk);
  for (int kt = 0; kt * BN < key_end; ++kt) {
    const int c0 = kt * BN, nc = min(BN, Lk - c0);
    const TileBounds kb{plan.k_tiles[plan.k_base[b] + kt], c0, c0 + nc - 1};
    const int cls = classify_tile(rule, qb, kb);
    if (cls == kTileSkip) continue;
    block_pair_grads<T>(p, rule, plan, h, q_start, r0, nr, align, k_start, c0, nc, cls, p_s, ds_s);
    __syncthreads();
    for (int e = threadIdx.x; e < BM * kCap; e += blockDim.x) {
      const int r = e / kCap, d = e % kCap;
      if (r >= nr || d >= D) continue;
      float add = 0.0f;
      for (int c = 0; c < nc; ++c) {
        const float ds = ds_s[r][c];
        if (ds == 0.0f) continue;  // masked: the key's NaN / Inf stays out
        add += ds * to_float(k[((k_start + c0 + c) * Hkv + g) * D + d]);
      }
      dq_acc[r][d] += add;
    }
    __syncthreads();
  }
  T* dq = static_cast<T*>(p.dq);
  for (int e = threadIdx.x; e < BM * kCap; e += blockDim.x) {
    const int r = e / kCap, d = e % kCap;
    if (r < nr && d < D) dq[((q_start + r0 + r) * H + h) * D + d] = from_float<T>(dq_acc[r][d]);
  }
}

}  // namespace lk::cuda
