// maskedAttentionBackward on tensor cores (SPEC §9), FlashAttention-2 style, for float16 / bfloat16
// on sm_80 and newer with head sizes up to 128 (float32, sm_75 and head size 256 keep the scalar
// kernels of masked_attention_backward_kernel.cuh). Scores are recomputed from q, k and the
// forward's lse on tensor cores (mma.m16n8k16, f32 accumulation); no [L, L] matrix exists.
//
// dq is accumulated WITHOUT atomics by a separate pass, as in the scalar kernels: deterministic
// gradients, no float32 dq workspace to zero and convert, no atomics on 16-bit storage; the price is
// one more Q K^T and dO V^T per visited pair (about 1.4x an atomic dq's tensor-core work).
//
//   tc_attention_dkdv_kernel: one block per (real key tile of 64 keys, kv head); warp w owns keys
//     16 w .. 16 w + 15. The block walks the query tiles (32 rows) of every query head of its group
//     that the rule classification does not skip, copying Q / dO / lse / delta of the next one with
//     cp.async while the current one computes. Per query tile each warp computes the TRANSPOSED
//     blocks S^T = K Q^T and dP^T = V dO^T (keys are the mma's M, so the weights are already the A
//     operand of the next products), P^T and dS^T in registers (tc_pair_grads), then
//     dV += P^T dO and dK += dS^T Q with dO / Q fragments by ldmatrix.trans. dK / dV live in
//     registers for the whole walk (GQA: summed over the group's query heads there).
//   tc_attention_dq_kernel: one block per (real query tile of 64 rows, head); warp w owns rows
//     16 w ..; walks the key tiles (64 keys) the rule does not skip, up to visible_key_end:
//     S = Q K^T, dP = dO V^T, dS in registers, dQ += dS K (K fragments by ldmatrix.trans).
//
// NaN rule: a masked pair's weight and dS are 0 by selection. The first products (S, dP) only put a
// row's NaN into that row's own pairs; the second products multiply the selected weights with a
// B operand (Q / dO rows in dkdv, K rows in dq), where 0 x NaN would leak a masked row's NaN. A tile
// whose B rows hold an Inf / NaN (found by the threads that copied them, combined by
// __syncthreads_or) therefore takes an exact path: the sum by selection over allowed pairs only.
#pragma once
#include <stdint.h>

#include "../common/backward_params.h"
#include "../common/compat.cuh"
#include "../common/mask_rules.h"
#include "../common/mma.cuh"
#include "../common/tile_plan.h"
#include "tc_fragments.cuh"
#include "tc_masking.cuh"
#include "tc_traits.cuh"

namespace lk::cuda {

template <int kCap>
struct TcBackwardTraits {
  static_assert(kCap == 16 || kCap == 32 || kCap == 64 || kCap == 128, "tensor-core backward: head sizes up to 128");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kKeyBlock = 16 * kWarps;   // dkdv: keys per block, 16 per warp
  static constexpr int kQueryTile = 32;           // dkdv: query rows per visited tile
  static constexpr int kRowBlock = 16 * kWarps;   // dq: query rows per block, 16 per warp
  static constexpr int kKeyTile = 64;             // dq: keys per visited tile
  static constexpr int kChunks = kCap / 8;        // 16-byte chunks per shared row
  static constexpr int kKSteps = kCap / 16;
  static constexpr int kDTiles = kCap / 8;        // n8 tiles of a dq / dk / dv row
  // dkdv: [ K | V | Q stage 0 | Q stage 1 | dO stage 0 | dO stage 1 ], rows of kCap 16-bit elements
  static constexpr int kDkdvK = 0, kDkdvV = kKeyBlock * kCap, kDkdvQ = 2 * kKeyBlock * kCap;
  static constexpr int kDkdvDO = kDkdvQ + 2 * kQueryTile * kCap;
  static constexpr int kDkdvSmemBytes = 2 * (kDkdvDO + 2 * kQueryTile * kCap);
  // dq: [ Q | dO | K stage 0 | K stage 1 | V stage 0 | V stage 1 ]
  static constexpr int kDqQ = 0, kDqDO = kRowBlock * kCap, kDqK = 2 * kRowBlock * kCap;
  static constexpr int kDqV = kDqK + 2 * kKeyTile * kCap;
  static constexpr int kDqSmemBytes = 2 * (kDqV + 2 * kKeyTile * kCap);
};

// The device addresses of the tensor-core backward's plan (summaries of the real tiles at its tile
// sizes, tile_plan.h) and of delta = dO · O.
struct TcBackwardPlan {
  const TileSummary* q_tiles32;  // query tiles of kQueryTile rows (dkdv's inner walk)
  const int32_t* q_base32;
  const TileSummary* q_tiles64;  // query tiles of kRowBlock rows (dq's blocks)
  const int32_t* q_base64;
  const TileSummary* k_tiles64;  // key tiles of 64 (dkdv's blocks, dq's inner walk)
  const int32_t* k_base64;
  const TileRef* q_work;         // every real 64-row query tile
  const TileRef* k_work;         // every real 64-key tile
  const float* delta;            // [tq, heads]
};

// cp.async of `rows_real` rows (row r at src + r * stride) into a swizzled [rows][kCh * 8] tile:
// `chunks` (a power of two) chunks per row, of which the first `real_chunks` hold data; padding
// rows and chunks are zero-filled (finite, and 0 in every product).
template <int kCh, typename T>
__device__ __forceinline__ void tc_copy_tile(uint16_t* dst, const T* src, int64_t stride, int rows_real, int rows, int chunks,
                                             int real_chunks) {
  const int shift = __ffs(chunks) - 1;
  for (int c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
    const int r = c >> shift, ch = c & (chunks - 1);
    uint16_t* d = dst + swizzled<kCh>(r, ch);
    if (r < rows_real && ch < real_chunks) cp_async_16(d, src + r * stride + ch * 8);
    else *reinterpret_cast<TcChunk*>(d) = TcChunk{0u, 0u, 0u, 0u};
  }
}

// After this thread's copies landed (cp_async_wait): does a chunk it copied hold an Inf / NaN?
template <int kCh, typename T>
__device__ __forceinline__ bool tile_nonfinite(const uint16_t* tile, int rows_real, int chunks, int real_chunks) {
  const int shift = __ffs(chunks) - 1;
  bool bad = false;
  for (int c = threadIdx.x; c < rows_real * chunks; c += blockDim.x) {
    const int r = c >> shift, ch = c & (chunks - 1);
    if (ch < real_chunks) bad = bad || chunk_nonfinite<T>(*reinterpret_cast<const TcChunk*>(tile + swizzled<kCh>(r, ch)));
  }
  return bad;
}

// acc (16 x 8 n-tiles) += A B^T over `k_steps` k-steps: A = rows a_row0 .. a_row0 + 15 of one
// swizzled tile, B = the n rows of another (n-tile pairs past `n_real` rows are not issued).
template <typename T, int kCh, int kNTiles, int kKSteps>
__device__ __forceinline__ void warp_mma_abt(float (&acc)[kNTiles][4], const uint16_t* a_tile, int a_row0, const uint16_t* b_tile,
                                             int k_steps, int n_real) {
  const int lane = threadIdx.x & 31;
  const int a_row = a_row0 + (lane & 7) + 8 * ((lane >> 3) & 1), a_chunk = lane >> 4;
  const int b_row = (lane & 7) + 8 * (lane >> 4), b_chunk = (lane >> 3) & 1;
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    if (kk >= k_steps) continue;
    uint32_t a[4];
    ldmatrix_x4(a, a_tile + swizzled<kCh>(a_row, 2 * kk + a_chunk));
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      if (16 * np >= n_real) continue;
      mma_n16<T, false>(acc[2 * np], acc[2 * np + 1], a, b_tile + swizzled<kCh>(16 * np + b_row, 2 * kk + b_chunk));
    }
  }
}

// acc (16 x 8 n-tiles, the first `o_tiles` real) += W B: W = 16 x (8 kWTiles) weights in the
// accumulator layout (repacked as A fragments), B = the k rows of a swizzled tile (ldmatrix.trans);
// k-steps past `k_real` rows are not issued (their weights are 0).
template <typename T, int kCh, int kOTiles, int kWTiles>
__device__ __forceinline__ void warp_mma_wb(float (&acc)[kOTiles][4], const float (&w)[kWTiles][4], const uint16_t* b_tile, int k_real,
                                            int o_tiles) {
  using E = TcElement<T>;
  const int lane = threadIdx.x & 31;
  const int b_row = (lane & 7) + 8 * ((lane >> 3) & 1), b_chunk = lane >> 4;
#pragma unroll
  for (int kk = 0; kk < kWTiles / 2; ++kk) {
    if (16 * kk >= k_real) continue;
    const uint32_t a[4] = {E::pack(w[2 * kk][0], w[2 * kk][1]), E::pack(w[2 * kk][2], w[2 * kk][3]),
                           E::pack(w[2 * kk + 1][0], w[2 * kk + 1][1]), E::pack(w[2 * kk + 1][2], w[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < kOTiles / 2; ++dp) {
      if (2 * dp + 1 < o_tiles) {
        mma_n16<T, true>(acc[2 * dp], acc[2 * dp + 1], a, b_tile + swizzled<kCh>(16 * kk + b_row, 2 * dp + b_chunk));
      } else if (2 * dp < o_tiles) {  // a row of 8
        uint32_t b2[2];
        ldmatrix_x2_trans(b2, b_tile + swizzled<kCh>(16 * kk + b_row, 2 * dp));
        E::mma(acc[2 * dp], a, b2);
      }
    }
  }
}

// The exact path of warp_mma_wb for a B tile holding an Inf / NaN: in float32, each accumulator
// row adds w * b over its allowed columns only (allow bits as tc_masking.cuh), so a masked pair's
// 0 never meets a NaN. Column j's weights live in lane (g, (j % 8) / 2) of the quad, n8 tile j / 8,
// element j % 2 (row 0) and 2 + j % 2 (row 1).
template <typename T, int kCh, int kOTiles, int kWTiles>
__device__ __forceinline__ void warp_select_wb(float (&acc)[kOTiles][4], const float (&w)[kWTiles][4], uint32_t allow,
                                               const uint16_t* b_tile, int k_real, int o_tiles) {
  using E = TcElement<T>;
  const int lane = threadIdx.x & 31, tq = lane & 3;
#pragma unroll 1
  for (int j = 0; j < k_real; ++j) {
    const int nt = j >> 3, c = j & 1, src = (lane & ~3) | ((j & 7) >> 1);
    float w0 = 0.0f, w1 = 0.0f;
#pragma unroll
    for (int n = 0; n < kWTiles; ++n)
      if (n == nt) {
        w0 = c ? w[n][1] : w[n][0];
        w1 = c ? w[n][3] : w[n][2];
      }
    w0 = __shfl_sync(0xffffffffu, w0, src);
    w1 = __shfl_sync(0xffffffffu, w1, src);
    const uint32_t bits = __shfl_sync(0xffffffffu, allow >> (4 * nt + c), src);  // bit 0: row 0, bit 2: row 1
#pragma unroll
    for (int dn = 0; dn < kOTiles; ++dn) {
      if (dn >= o_tiles) continue;
      const uint32_t b = *reinterpret_cast<const uint32_t*>(b_tile + swizzled<kCh>(j, dn) + 2 * tq);
      const float b0 = E::lo(b), b1 = E::hi(b);
      if (bits & 1u) {
        acc[dn][0] = fmaf(w0, b0, acc[dn][0]);
        acc[dn][1] = fmaf(w0, b1, acc[dn][1]);
      }
      if (bits & 4u) {
        acc[dn][2] = fmaf(w1, b0, acc[dn][2]);
        acc[dn][3] = fmaf(w1, b1, acc[dn][3]);
      }
    }
  }
}

// The score-block recompute of both tensor-core passes, in registers: s (raw q · k) becomes the
// weights, dp (dO · v) the gradients of the raw scores (pair_weight_dscore); masked elements (allow
// bit clear when `masked`) become 0 by selection. stats(nt, i, &lse, &delta) gives the query row's
// lse / delta of element (nt, i): per accumulator row in dq, per column in the transposed dkdv.
template <int kNTiles, typename Stats>
__device__ __forceinline__ void tc_pair_grads(float (&s)[kNTiles][4], float (&dp)[kNTiles][4], uint32_t allow, bool masked, bool softmax,
                                              float scale, float inv_divisor, Stats stats) {
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float w = 0.0f, ds = 0.0f;
      if (!masked || ((allow >> (4 * nt + i)) & 1u)) {
        float lse = 0.0f, delta = 0.0f;
        if (softmax) stats(nt, i, &lse, &delta);
        pair_weight_dscore(s[nt][i], dp[nt][i], softmax, scale, lse, delta, inv_divisor, &w, &ds);
      }
      s[nt][i] = w;
      dp[nt][i] = ds;
    }
}

// Stores a warp's 16 x (8 tiles) float32 accumulator rows (the first `real_rows` rows, `tiles` n8
// tiles) as T at dst + row * row_stride.
template <typename T, int kTiles>
__device__ __forceinline__ void store_rows(const float (&acc)[kTiles][4], T* dst, int64_t row_stride, int real_rows, int tiles) {
  using E = TcElement<T>;
  const int lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = gq + 8 * r;
    if (row >= real_rows) continue;
#pragma unroll
    for (int dn = 0; dn < kTiles; ++dn)
      if (dn < tiles)
        *reinterpret_cast<uint32_t*>(dst + row * row_stride + 8 * dn + 2 * tq) = E::pack(acc[dn][2 * r], acc[dn][2 * r + 1]);
  }
}

// Grid (real 64-key tiles, kv heads).
template <typename T, int kCap>
__global__ void __launch_bounds__(TcBackwardTraits<kCap>::kThreads, 1)
    tc_attention_dkdv_kernel(AttentionBackwardParams bp, TcBackwardPlan plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // sm_75: the dispatch keeps the scalar kernels there (no cp.async, no bf16 mma).
#else
  using Tr = TcBackwardTraits<kCap>;
  constexpr int BK = Tr::kKeyBlock, BQ = Tr::kQueryTile, kCh = Tr::kChunks, kSTiles = BQ / 8;
  LK_DYNAMIC_SHARED(uint16_t, smem);
  __shared__ MaskRule rule;
  __shared__ float lse_s[2][BQ], delta_s[2][BQ];
  __shared__ int32_t q_seg_s[2][BQ];
  __shared__ uint8_t q_role_s[2][BQ];

  const AttentionParams& f = bp.fwd;
  const TileRef item = plan.k_work[blockIdx.x];
  const int b = item.seq, g = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
  const int D = f.head_dim, Dv = f.value_dim, H = f.heads, Hkv = f.kv_heads, group = H / Hkv;
  const int64_t q_start = f.q_layout.offsets[b], k_start = f.kv_layout.offsets[b];
  const int Lq = f.q_layout.offsets[b + 1] - (int)q_start, Lk = f.kv_layout.offsets[b + 1] - (int)k_start;
  const int align = Lk - Lq;
  const int c0 = item.tile * BK, nk = min(BK, Lk - c0);
  const bool softmax = f.normalize == kSoftmax;
  const int ks_d = (D + 15) >> 4, ks_v = (Dv + 15) >> 4;  // k-steps over D / Dv
  const int ch_d = 2 * ks_d, ch_v = 2 * ks_v;              // chunks per row copied (zero pad to 16)
  const int d_tiles = D >> 3, v_tiles = Dv >> 3;
  const T* q = static_cast<const T*>(f.q);
  const T* k = static_cast<const T*>(f.k);
  const T* v = static_cast<const T*>(f.v);
  const T* dout = static_cast<const T*>(bp.d_out);
  uint16_t* const k_s = smem + Tr::kDkdvK;
  uint16_t* const v_s = smem + Tr::kDkdvV;
  if (tid == 0) rule = f.rule;

  tc_copy_tile<kCh>(k_s, k + ((k_start + c0) * Hkv + g) * D, (int64_t)Hkv * D, nk, BK, ch_d, D >> 3);
  tc_copy_tile<kCh>(v_s, v + ((k_start + c0) * Hkv + g) * Dv, (int64_t)Hkv * Dv, nk, BK, ch_v, Dv >> 3);
  cp_async_commit();
  // The two accumulator rows (keys) of this thread as the rule sees them.
  TcRow key_info[2];
  tc_rows_of(f.kv_layout, k_start + c0, nk, 16 * warp + gq, c0, key_info);
  __syncthreads();  // rule

  // The walk: (query head h of the group, query tile qt) in order, skipped tiles never visited
  // (q_tiles > 0: a wrap lands on tile 0 of the next head, a real tile).
  const TileBounds kb{plan.k_tiles64[plan.k_base64[b] + item.tile], c0, c0 + nk - 1};
  const int q_tiles = plan.q_base32[b + 1] - plan.q_base32[b];
  auto next_tile = [&](int* h, int* qt, int* cls) {
    for (;;) {
      if (++*qt >= q_tiles) {
        *qt = 0;
        if (++*h >= (g + 1) * group) return false;
      }
      const int r0 = *qt * BQ, nr = min(BQ, Lq - r0);
      const TileBounds qb{plan.q_tiles32[plan.q_base32[b] + *qt], r0 + align, r0 + nr - 1 + align};
      *cls = classify_tile(rule, qb, kb);
      if (*cls != kTileSkip) return true;
    }
  };
  auto issue = [&](int h, int qt, int cls, int stage) {
    const int r0 = qt * BQ, nr = min(BQ, Lq - r0);
    const int64_t row0 = q_start + r0;
    tc_copy_tile<kCh>(smem + Tr::kDkdvQ + stage * BQ * kCap, q + (row0 * H + h) * D, (int64_t)H * D, nr, BQ, ch_d, D >> 3);
    tc_copy_tile<kCh>(smem + Tr::kDkdvDO + stage * BQ * kCap, dout + (row0 * H + h) * Dv, (int64_t)H * Dv, nr, BQ, ch_v, Dv >> 3);
    for (int j = tid; j < BQ; j += Tr::kThreads) {
      const int64_t t = row0 + (j < nr ? j : nr - 1);
      if (softmax) {
        lse_s[stage][j] = j < nr ? f.lse[t * H + h] : 0.0f;
        delta_s[stage][j] = j < nr ? plan.delta[t * H + h] : 0.0f;
      }
      if (cls == kTilePartial) {
        q_role_s[stage][j] = f.q_layout.roles ? f.q_layout.roles[t] : 0;
        q_seg_s[stage][j] = f.q_layout.segments ? f.q_layout.segments[t] : 0;
      }
    }
  };

  float dk[Tr::kDTiles][4], dv[Tr::kDTiles][4];
#pragma unroll
  for (int dn = 0; dn < Tr::kDTiles; ++dn) {
    dk[dn][0] = dk[dn][1] = dk[dn][2] = dk[dn][3] = 0.0f;
    dv[dn][0] = dv[dn][1] = dv[dn][2] = dv[dn][3] = 0.0f;
  }
  const bool warp_keys = 16 * warp < nk;  // this warp owns a real key (else it only copies and syncs)
  int h = g * group, qt = -1, cls = kTileSkip;
  bool have = q_tiles > 0 && next_tile(&h, &qt, &cls);  // no queries (cross attention): dk = dv = 0
  if (have) issue(h, qt, cls, 0);
  cp_async_commit();
  int stage = 0;
  while (have) {
    int nh = h, nqt = qt, ncls = kTileSkip;
    const bool next_have = next_tile(&nh, &nqt, &ncls);
    if (next_have) issue(nh, nqt, ncls, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // K / V and this tile (mine)
    const int r0 = qt * BQ, nr = min(BQ, Lq - r0);
    const uint16_t* qs = smem + Tr::kDkdvQ + stage * BQ * kCap;
    const uint16_t* dos = smem + Tr::kDkdvDO + stage * BQ * kCap;
    const bool bad = tile_nonfinite<kCh, T>(qs, nr, ch_d, D >> 3) || tile_nonfinite<kCh, T>(dos, nr, ch_v, Dv >> 3);
    const bool exact = __syncthreads_or(bad);  // also: every copy of the tile is visible
    if (warp_keys) {
      float st[kSTiles][4], dpt[kSTiles][4];
      warp_mma_abt<T, kCh, kSTiles, Tr::kKSteps>(st, k_s, 16 * warp, qs, ks_d, nr);   // S^T = K Q^T
      warp_mma_abt<T, kCh, kSTiles, Tr::kKSteps>(dpt, v_s, 16 * warp, dos, ks_v, nr);  // dP^T = V dO^T
      const bool masked = cls == kTilePartial || nr < BQ;
      const uint32_t allow = masked ? tile_allow_bits_by_key<kSTiles>(rule, key_info, cls == kTilePartial, r0 + align, nr,
                                                                      q_role_s[stage], q_seg_s[stage], tq)
                                    : 0xffffffffu;
      const float* lse_t = lse_s[stage];
      const float* delta_t = delta_s[stage];
      tc_pair_grads(st, dpt, allow, masked, softmax, f.scale, f.silu_inv_divisor, [&](int nt, int i, float* lse, float* delta) {
        const int j = 8 * nt + 2 * tq + (i & 1);
        *lse = lse_t[j];
        *delta = delta_t[j];
      });
      if (!exact) {
        warp_mma_wb<T, kCh, Tr::kDTiles, kSTiles>(dv, st, dos, nr, v_tiles);   // dV += P^T dO
        warp_mma_wb<T, kCh, Tr::kDTiles, kSTiles>(dk, dpt, qs, nr, d_tiles);   // dK += dS^T Q
      } else {
        warp_select_wb<T, kCh, Tr::kDTiles, kSTiles>(dv, st, allow, dos, nr, v_tiles);
        warp_select_wb<T, kCh, Tr::kDTiles, kSTiles>(dk, dpt, allow, qs, nr, d_tiles);
      }
    }
    __syncthreads();  // this stage is read: the next iteration may copy into it
    have = next_have;
    h = nh;
    qt = nqt;
    cls = ncls;
    stage ^= 1;
  }
  cp_async_wait<0>();
  if (!warp_keys) return;
  const int64_t key0 = k_start + c0 + 16 * warp;
  store_rows<T, Tr::kDTiles>(dk, static_cast<T*>(bp.dk) + (key0 * Hkv + g) * D, (int64_t)Hkv * D, nk - 16 * warp, d_tiles);
  store_rows<T, Tr::kDTiles>(dv, static_cast<T*>(bp.dv) + (key0 * Hkv + g) * Dv, (int64_t)Hkv * Dv, nk - 16 * warp, v_tiles);
#endif
}

// Grid (real 64-row query tiles, heads).
template <typename T, int kCap>
__global__ void __launch_bounds__(TcBackwardTraits<kCap>::kThreads, 1)
    tc_attention_dq_kernel(AttentionBackwardParams bp, TcBackwardPlan plan) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#else
  using Tr = TcBackwardTraits<kCap>;
  constexpr int BM = Tr::kRowBlock, BN = Tr::kKeyTile, kCh = Tr::kChunks, kSTiles = BN / 8;
  LK_DYNAMIC_SHARED(uint16_t, smem);
  __shared__ MaskRule rule;
  __shared__ int32_t k_seg_s[2][BN];
  __shared__ uint8_t k_role_s[2][BN];

  const AttentionParams& f = bp.fwd;
  const TileRef item = plan.q_work[blockIdx.x];
  const int b = item.seq, h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
  const int D = f.head_dim, Dv = f.value_dim, H = f.heads, Hkv = f.kv_heads, g = h / (H / Hkv);
  const int64_t q_start = f.q_layout.offsets[b], k_start = f.kv_layout.offsets[b];
  const int Lq = f.q_layout.offsets[b + 1] - (int)q_start, Lk = f.kv_layout.offsets[b + 1] - (int)k_start;
  const int align = Lk - Lq;
  const int r0 = item.tile * BM, rows = min(BM, Lq - r0);
  const bool softmax = f.normalize == kSoftmax;
  const int ks_d = (D + 15) >> 4, ks_v = (Dv + 15) >> 4;
  const int ch_d = 2 * ks_d, ch_v = 2 * ks_v;
  const int d_tiles = D >> 3;
  const T* k = static_cast<const T*>(f.k);
  const T* v = static_cast<const T*>(f.v);
  uint16_t* const q_s = smem + Tr::kDqQ;
  uint16_t* const do_s = smem + Tr::kDqDO;
  if (tid == 0) rule = f.rule;

  const int64_t row0 = q_start + r0;
  tc_copy_tile<kCh>(q_s, static_cast<const T*>(f.q) + (row0 * H + h) * D, (int64_t)H * D, rows, BM, ch_d, D >> 3);
  tc_copy_tile<kCh>(do_s, static_cast<const T*>(bp.d_out) + (row0 * H + h) * Dv, (int64_t)H * Dv, rows, BM, ch_v, Dv >> 3);
  cp_async_commit();
  TcRow row_info[2];
  tc_rows_of(f.q_layout, row0, rows, 16 * warp + gq, r0 + align, row_info);
  float lse_row[2] = {0.0f, 0.0f}, delta_row[2] = {0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rl = 16 * warp + gq + 8 * r;
    const int64_t t = row0 + (rl < rows ? rl : rows - 1);
    if (softmax) {
      lse_row[r] = f.lse[t * H + h];
      delta_row[r] = plan.delta[t * H + h];
    }
  }
  __syncthreads();  // rule

  const TileBounds qb{plan.q_tiles64[plan.q_base64[b] + item.tile], r0 + align, r0 + rows - 1 + align};
  const int key_tiles = (visible_key_end(rule, qb, Lk) + BN - 1) / BN;
  auto next_tile = [&](int* kt, int* cls) {
    while (++*kt < key_tiles) {
      const int c0 = *kt * BN, nc = min(BN, Lk - c0);
      const TileBounds kb{plan.k_tiles64[plan.k_base64[b] + *kt], c0, c0 + nc - 1};
      *cls = classify_tile(rule, qb, kb);
      if (*cls != kTileSkip) return true;
    }
    return false;
  };
  auto issue = [&](int kt, int cls, int stage) {
    const int c0 = kt * BN, nc = min(BN, Lk - c0);
    const int64_t key0 = k_start + c0;
    tc_copy_tile<kCh>(smem + Tr::kDqK + stage * BN * kCap, k + (key0 * Hkv + g) * D, (int64_t)Hkv * D, nc, BN, ch_d, D >> 3);
    tc_copy_tile<kCh>(smem + Tr::kDqV + stage * BN * kCap, v + (key0 * Hkv + g) * Dv, (int64_t)Hkv * Dv, nc, BN, ch_v, Dv >> 3);
    if (cls == kTilePartial) {
      for (int j = tid; j < BN; j += Tr::kThreads) {
        const int64_t t = key0 + (j < nc ? j : nc - 1);
        k_role_s[stage][j] = f.kv_layout.roles ? f.kv_layout.roles[t] : 0;
        k_seg_s[stage][j] = f.kv_layout.segments ? f.kv_layout.segments[t] : 0;
      }
    }
  };

  float dq[Tr::kDTiles][4];
#pragma unroll
  for (int dn = 0; dn < Tr::kDTiles; ++dn) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.0f;
  const bool warp_rows = 16 * warp < rows;
  int kt = -1, cls = kTileSkip;
  bool have = next_tile(&kt, &cls);
  if (have) issue(kt, cls, 0);
  cp_async_commit();
  int stage = 0;
  while (have) {
    int nkt = kt, ncls = kTileSkip;
    const bool next_have = next_tile(&nkt, &ncls);
    if (next_have) issue(nkt, ncls, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    const int c0 = kt * BN, nc = min(BN, Lk - c0);
    const uint16_t* ks = smem + Tr::kDqK + stage * BN * kCap;
    const uint16_t* vs = smem + Tr::kDqV + stage * BN * kCap;
    const bool exact = __syncthreads_or(tile_nonfinite<kCh, T>(ks, nc, ch_d, D >> 3));
    if (warp_rows) {
      float s[kSTiles][4], dp[kSTiles][4];
      warp_mma_abt<T, kCh, kSTiles, Tr::kKSteps>(s, q_s, 16 * warp, ks, ks_d, nc);    // S = Q K^T
      warp_mma_abt<T, kCh, kSTiles, Tr::kKSteps>(dp, do_s, 16 * warp, vs, ks_v, nc);  // dP = dO V^T
      const bool masked = cls == kTilePartial || nc < BN;
      const uint32_t allow = masked ? tile_allow_bits<kSTiles>(rule, row_info, cls == kTilePartial, c0, nc, k_role_s[stage],
                                                               k_seg_s[stage], tq)
                                    : 0xffffffffu;
      tc_pair_grads(s, dp, allow, masked, softmax, f.scale, f.silu_inv_divisor, [&](int, int i, float* lse, float* delta) {
        *lse = lse_row[i >> 1];
        *delta = delta_row[i >> 1];
      });
      if (!exact) warp_mma_wb<T, kCh, Tr::kDTiles, kSTiles>(dq, dp, ks, nc, d_tiles);  // dQ += dS K
      else warp_select_wb<T, kCh, Tr::kDTiles, kSTiles>(dq, dp, allow, ks, nc, d_tiles);
    }
    __syncthreads();
    have = next_have;
    kt = nkt;
    cls = ncls;
    stage ^= 1;
  }
  cp_async_wait<0>();
  if (!warp_rows) return;
  const int64_t first = row0 + 16 * warp;
  store_rows<T, Tr::kDTiles>(dq, static_cast<T*>(bp.dq) + (first * H + h) * D, (int64_t)H * D, rows - 16 * warp, d_tiles);
#endif
}

}  // namespace lk::cuda
