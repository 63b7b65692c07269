// Masked attention on tensor cores (SPEC §3), FlashAttention-2 style, for float16 / bfloat16 on
// sm_80 and newer: the same contract, work list and tile classes as masked_attention_kernel.cuh (the
// exact FP32 kernel, which float32 inputs and sm_75 keep).
//
// One block = one query tile (kBlockM = 64 rows) of one head of one sequence, 4 warps of 16 rows.
//   - Q: copied once with cp.async, turned into mma A fragments (ldmatrix.x4) held in registers for
//     the whole key loop (kCap <= 128; kCap 256 re-reads them from shared memory per k-step).
//   - K / V: each visited key tile (kBlockN keys) is copied with cp.async into one of two stages of
//     XOR-swizzled shared memory (tc_traits.cuh) while the previous tile is computed from the other.
//   - S = Q K^T: mma.m16n8k16 (f32 accumulation), B fragments by ldmatrix.x4 from K rows; S stays in
//     registers. The rule is applied per fragment element in registers (tc_masking.cuh) on partial
//     tiles and on the ragged last tile; full tiles skip every check; skipped tiles are never
//     visited: the block walks its work item's key runs (the mask plan, mask_plan.h).
//   - Online softmax in registers with exp2f, scale * log2(e) folded into one multiply
//     (tc_softmax.cuh); then O += P V with the S accumulators repacked as the A operand (no score
//     buffer in shared memory) and V fragments by ldmatrix.x4.trans.
//   - NaN rule: a key tile whose V rows hold an Inf / NaN (found by the threads that copied them,
//     combined by __syncthreads_or) takes an exact path instead of the mma: P V by selection, in
//     float32, over each row's allowed keys only, so a masked key's 0 weight never meets its NaN.
//   - Output: normalized, converted, staged through shared memory (per warp) and written with
//     16-byte stores; LSE per row from the running max and sum. A split-KV item (a window of the
//     key tiles of a query tile of <= 16 rows) writes its unnormalized (o, m, l) to a partial slot
//     instead; split_combine_kernel merges the slots.
// Head sizes: kCap = max(D, Dv) rounded up to 16 / 32 / 64 / 128 / 256 sizes the shared tiles and
// registers; D and Dv themselves bound the work at run time (k-steps of Q K^T past D, n-tiles of
// P V past Dv are not issued), so Dv != D and small heads (8-32) cost what they hold.
// Small heads are packed: a block computes kPack consecutive heads h0 .. h0 + kPack - 1 (4 of
// kCap 16, 2 of kCap 32; tc_head_pack), each warp all of them for its 16 rows, one after the other
// over the same key tile. The key tile is copied once per distinct kv head of the pack (once for
// GQA heads of one group), its mask bits and partial-tile roles are computed once for all heads,
// and the pipeline's barriers and cp.async waits are shared: fixed costs per key tile that a block
// of one 16-wide head would pay for 2 KiB of K and 2 KiB of V.
#pragma once
#include <stdint.h>

#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mask_plan.h"
#include "../common/mask_rules.h"
#include "../common/mma.cuh"
#include "../common/tile_plan.h"
#include "tc_fragments.cuh"
#include "tc_masking.cuh"
#include "tc_softmax.cuh"
#include "tc_traits.cuh"

namespace lk::cuda {

// Grid (work items, heads / kPack): block (x, y) runs plan.work[x], whose tiles are kBlockM queries x
// kBlockN keys, for heads kPack y .. kPack y + kPack - 1.
template <typename T, int kCap, int kPack>
__global__ void __launch_bounds__(TcAttentionTraits<kCap, kPack>::kThreads, 1)
    tc_attention_kernel(AttentionParams p, PlanView plan, SplitPartials part) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // sm_75 has neither cp.async nor bf16 mma: the dispatch (tc_attention.cuh) keeps the FP32 kernel
  // there and never launches this one, so its sm_75 build is empty.
#else
  using Tr = TcAttentionTraits<kCap, kPack>;
  using E = TcElement<T>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, kCh = Tr::kChunks;
  constexpr unsigned kFull = 0xffffffffu;
  LK_DYNAMIC_SHARED(uint16_t, smem);
  __shared__ MaskRule rule;            // indexed by role at run time: shared memory, not a local copy
  __shared__ int32_t k_seg_s[2][BN];   // per stage: the tile's key segments / roles (partial tiles)
  __shared__ uint8_t k_role_s[2][BN];

  const PlanWork item = plan.work[blockIdx.x];
  if (item.seq < 0) return;  // an unused entry of a device-built plan (mask_plan.cuh)
  const int b = item.seq, q_tile = item.tile, h0 = blockIdx.y * kPack;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;  // mma groupID / threadID_in_group

  const int64_t q_start = p.q_layout.offsets[b], k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)q_start;
  const int Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int row0 = q_tile * BM;
  const int rows = min(BM, Lq - row0);
  const int align = Lk - Lq;  // bottom-right causal alignment
  const int D = p.head_dim, Dv = p.value_dim, H = p.heads, Hkv = p.kv_heads;
  const int group = H / Hkv, g0 = h0 / group;
  const int n_slots = (h0 + kPack - 1) / group - g0 + 1;  // distinct kv heads of the pack
  const int slot_shift = n_slots > 2 ? 2 : n_slots - 1;   // copies loop over 1 << slot_shift >= n_slots
  int slot_of[kPack];                                      // packed head j reads kv slot slot_of[j]
#pragma unroll
  for (int j = 0; j < kPack; ++j) slot_of[j] = (h0 + j) / group - g0;
  const bool softmax = p.normalize == kSoftmax;
  // Token t's row of packed head j: q + t * q_stride + j * D; of kv slot s: k + t * k_stride + s * D.
  const T* q = static_cast<const T*>(p.q) + (int64_t)h0 * D;
  const T* k = static_cast<const T*>(p.k) + (int64_t)g0 * D;
  const T* v = static_cast<const T*>(p.v) + (int64_t)g0 * Dv;
  const int64_t q_stride = (int64_t)H * D, k_stride = (int64_t)Hkv * D, v_stride = (int64_t)Hkv * Dv;
  // D, Dv are powers of two >= 8 (the dispatch checks): chunk counts are too.
  const int k_steps = (D + 15) >> 4;    // k-steps of Q K^T holding real dimensions
  const int qk_chunks = 2 * k_steps;    // chunks per Q / K row they read (D = 8: the second is zeros)
  const int d_chunks = D >> 3, v_chunks = Dv >> 3;  // chunks of real data per Q / K and V row
  const int qk_shift = __ffs(qk_chunks) - 1, v_shift = __ffs(v_chunks) - 1;
  const int o_tiles = Dv >> 3;  // n8 tiles of O holding real columns
  const bool warp_rows = 16 * warp < rows;  // this warp owns a real row (else it only copies and syncs)

  if (tid == 0) rule = p.rule;

  // Q tiles: real rows by cp.async, padding rows and the pad chunk of D = 8 zero-filled. Chunk
  // index c = (row, head, chunk), chunk fastest: a row's packed heads are adjacent in memory.
  uint16_t* const q_s = smem + Tr::kQOffset;
  for (int c = tid; c < (BM << Tr::kPackShift) * qk_chunks; c += Tr::kThreads) {
    const int r = c >> (qk_shift + Tr::kPackShift), j = (c >> qk_shift) & (kPack - 1), ch = c & (qk_chunks - 1);
    uint16_t* dst = q_s + j * Tr::kHeadQElems + swizzled<kCh>(r, ch);
    if (r < rows && ch < d_chunks) cp_async_16(dst, q + (q_start + row0 + r) * q_stride + j * D + ch * 8);
    else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
  }
  cp_async_commit();

  // The two accumulator rows of this thread (rows gq, gq + 8 of its warp) as the rule sees them.
  TcRow row_info[2];
  tc_rows_of(p.q_layout, q_start + row0, rows, 16 * warp + gq, row0 + align, row_info);
  KeyTileCursor cursor;  // the item's listed key tiles, in order (the same in every thread)
  cursor.start(plan.runs, item);
  __syncthreads();  // rule

  // cp.async of key tile kt's K and V rows of the pack's kv slots into `stage` (chunk index c =
  // (key, slot, chunk), as for Q); padding rows zero-filled (their weights are 0 and their values
  // must be finite), the tile's key roles / segments staged when partial.
  auto issue = [&](int kt, int cls, int stage) {
    const int col0 = kt * BN, cols = min(BN, Lk - col0);
    const int64_t key0 = k_start + col0;
    uint16_t* ks = smem + Tr::kKOffset + stage * Tr::kTileElems;
    uint16_t* vs = smem + Tr::kVOffset + stage * Tr::kTileElems;
    for (int c = tid; c < (BN << slot_shift) * qk_chunks; c += Tr::kThreads) {
      const int r = c >> (qk_shift + slot_shift), sl = (c >> qk_shift) & ((1 << slot_shift) - 1), ch = c & (qk_chunks - 1);
      if (sl >= n_slots) continue;
      uint16_t* dst = ks + sl * Tr::kSlotElems + swizzled<kCh>(r, ch);
      if (r < cols && ch < d_chunks) cp_async_16(dst, k + (key0 + r) * k_stride + sl * D + ch * 8);
      else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
    }
    for (int c = tid; c < (BN << slot_shift) * v_chunks; c += Tr::kThreads) {
      const int r = c >> (v_shift + slot_shift), sl = (c >> v_shift) & ((1 << slot_shift) - 1), ch = c & (v_chunks - 1);
      if (sl >= n_slots) continue;
      uint16_t* dst = vs + sl * Tr::kSlotElems + swizzled<kCh>(r, ch);
      if (r < cols) cp_async_16(dst, v + (key0 + r) * v_stride + sl * Dv + ch * 8);
      else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
    }
    if (cls == kTilePartial) {
      for (int j = tid; j < BN; j += Tr::kThreads) {
        const int64_t t = key0 + (j < cols ? j : cols - 1);
        k_role_s[stage][j] = p.kv_layout.roles ? p.kv_layout.roles[t] : 0;
        k_seg_s[stage][j] = p.kv_layout.segments ? p.kv_layout.segments[t] : 0;
      }
    }
  };

  int cls = kTileSkip, kt = 0;
  bool have = cursor.next(&kt, &cls);
  if (have) issue(kt, cls, 0);
  cp_async_commit();
  cp_async_wait<1>();  // the Q tile (this thread's copies)
  __syncthreads();     // ... and everyone's

  // Q fragments: k-step ks is the 16 x 16 A tile of rows 16 warp.., dims 16 ks.. (ldmatrix.x4:
  // lanes 0-7 / 8-15 rows 0-7 / 8-15 of dims 0-7, lanes 16-31 the same rows of dims 8-15).
  const int a_row = 16 * warp + (lane & 7) + 8 * ((lane >> 3) & 1), a_chunk = lane >> 4;
  uint32_t qf[kPack][Tr::kQInRegs ? Tr::kKSteps : 1][4];
  if constexpr (Tr::kQInRegs) {
#pragma unroll
    for (int j = 0; j < kPack; ++j)
#pragma unroll
      for (int ks = 0; ks < Tr::kKSteps; ++ks) {
        qf[j][ks][0] = qf[j][ks][1] = qf[j][ks][2] = qf[j][ks][3] = 0u;
        if (ks < k_steps) ldmatrix_x4(qf[j][ks], q_s + j * Tr::kHeadQElems + swizzled<kCh>(a_row, 2 * ks + a_chunk));
      }
    __syncthreads();  // K stage 1, which held the Q tiles, is free for the pipeline
  }

  // Per packed head: output accumulators, running maximum and sum of the thread's two rows.
  float o[kPack][Tr::kOTiles][4], m[kPack][2], l[kPack][2];
#pragma unroll
  for (int j = 0; j < kPack; ++j) {
#pragma unroll
    for (int dn = 0; dn < Tr::kOTiles; ++dn) o[j][dn][0] = o[j][dn][1] = o[j][dn][2] = o[j][dn][3] = 0.0f;
    m[j][0] = m[j][1] = -INFINITY;
    l[j][0] = l[j][1] = 0.0f;
  }
  uint32_t seen = 0;  // allow bits ever set: which of the two rows met an allowed key (any head: the rule has no head)
  const float scale_log2 = p.scale * 1.4426950408889634f;  // scale * log2(e)
  // ldmatrix lane addresses for B operands. K (N x K rows, x4): keys 0-7 / 8-15 of the pair of n8
  // tiles by lane bit 4, dims 0-7 / 8-15 by lane bit 3. V (K x N rows, x4.trans): keys 0-7 / 8-15
  // by lane bit 3, dims 0-7 / 8-15 by lane bit 4 (x2.trans: lanes 16-31 repeat lanes 0-15).
  const int kb_row = (lane & 7) + 8 * (lane >> 4), kb_chunk = (lane >> 3) & 1;
  const int vb_row = (lane & 7) + 8 * ((lane >> 3) & 1), vb_chunk = lane >> 4;

  int stage = 0;
  while (have) {
    int next_cls = kTileSkip, next = 0;
    const bool next_have = cursor.next(&next, &next_cls);
    if (next_have) issue(next, next_cls, stage ^ 1);  // in flight while this tile computes
    cp_async_commit();
    cp_async_wait<1>();  // this tile's copies (mine)

    const int col0 = kt * BN, cols = min(BN, Lk - col0);
    const uint16_t* ks = smem + Tr::kKOffset + stage * Tr::kTileElems;
    const uint16_t* vs = smem + Tr::kVOffset + stage * Tr::kTileElems;
    // Inf / NaN among the V rows this thread copied; the barrier makes every copy visible and
    // tells every thread whether any value of the tile is non-finite.
    bool bad = false;
    for (int c = tid; c < (BN << slot_shift) * v_chunks; c += Tr::kThreads) {
      const int r = c >> (v_shift + slot_shift), sl = (c >> v_shift) & ((1 << slot_shift) - 1), ch = c & (v_chunks - 1);
      if (r < cols && sl < n_slots)
        bad = bad || chunk_nonfinite<T>(*reinterpret_cast<const TcChunk*>(vs + sl * Tr::kSlotElems + swizzled<kCh>(r, ch)));
    }
    const bool exact = __syncthreads_or(bad);

    if (warp_rows) {
      // Mask: per element on partial tiles and on the ragged last tile; full tiles need nothing.
      // The rule sees rows and keys only, so one allow word serves every packed head.
      const bool masked = cls == kTilePartial || cols < BN;
      const uint32_t allow = masked ? tile_allow_bits<Tr::kSTiles>(rule, row_info, cls == kTilePartial, col0, cols,
                                                                   k_role_s[stage], k_seg_s[stage], tq)
                                    : kFull;
      seen |= allow;
#pragma unroll
      for (int j = 0; j < kPack; ++j) {
        const uint16_t* kj = ks + slot_of[j] * Tr::kSlotElems;
        const uint16_t* vj = vs + slot_of[j] * Tr::kSlotElems;
        // S = Q K^T for the warp's 16 rows and the tile's keys (n8 tile pairs past `cols` skipped).
        float s[Tr::kSTiles][4];
#pragma unroll
        for (int nt = 0; nt < Tr::kSTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < Tr::kKSteps; ++kk) {
          if (kk >= k_steps) continue;
          uint32_t a[4];
          if constexpr (Tr::kQInRegs) {
            a[0] = qf[j][kk][0], a[1] = qf[j][kk][1], a[2] = qf[j][kk][2], a[3] = qf[j][kk][3];
          } else {
            ldmatrix_x4(a, q_s + j * Tr::kHeadQElems + swizzled<kCh>(a_row, 2 * kk + a_chunk));
          }
#pragma unroll
          for (int np = 0; np < Tr::kSTiles / 2; ++np) {
            if (16 * np >= cols) continue;
            mma_n16<T, false>(s[2 * np], s[2 * np + 1], a, kj + swizzled<kCh>(16 * np + kb_row, 2 * kk + kb_chunk));
          }
        }

        if (softmax) tc_online_softmax(s, allow, masked, scale_log2, m[j], l[j], o[j], o_tiles);
        else tc_silu_weights(s, allow, masked, p.scale, p.silu_inv_divisor);

        if (!exact) {
          // O += P V: the S accumulators of n8 tiles 2 kk, 2 kk + 1 are the A fragment of k-step kk.
#pragma unroll
          for (int kk = 0; kk < Tr::kSTiles / 2; ++kk) {
            if (16 * kk >= cols) continue;
            const uint32_t a[4] = {E::pack(s[2 * kk][0], s[2 * kk][1]), E::pack(s[2 * kk][2], s[2 * kk][3]),
                                   E::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), E::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < Tr::kOTiles / 2; ++dp) {
              if (2 * dp + 1 < o_tiles) {
                mma_n16<T, true>(o[j][2 * dp], o[j][2 * dp + 1], a, vj + swizzled<kCh>(16 * kk + vb_row, 2 * dp + vb_chunk));
              } else if (2 * dp < o_tiles) {  // Dv = 8
                uint32_t b2[2];
                ldmatrix_x2_trans(b2, vj + swizzled<kCh>(16 * kk + vb_row, 2 * dp));
                E::mma(o[j][2 * dp], a, b2);
              }
            }
          }
        } else {
          // Exact path (an Inf / NaN in this tile's V): key by key, each row adds p * v for its
          // allowed keys only, in float32. Key i's weights live in lane (gq, (i % 8) / 2) of the
          // quad, accumulator n8 tile i / 8, element i % 2 (row 0) and 2 + i % 2 (row 1).
#pragma unroll 1
          for (int i = 0; i < cols; ++i) {
            const int nt = i >> 3, c = i & 1, src = (lane & ~3) | ((i & 7) >> 1);
            float p0 = 0.0f, p1 = 0.0f;
#pragma unroll
            for (int n = 0; n < Tr::kSTiles; ++n)
              if (n == nt) {
                p0 = c ? s[n][1] : s[n][0];
                p1 = c ? s[n][3] : s[n][2];
              }
            p0 = __shfl_sync(kFull, p0, src);
            p1 = __shfl_sync(kFull, p1, src);
            const uint32_t bits = __shfl_sync(kFull, allow >> (4 * nt + c), src);  // bit 0: row 0, bit 2: row 1
#pragma unroll
            for (int dn = 0; dn < Tr::kOTiles; ++dn) {
              if (dn >= o_tiles) continue;
              const uint32_t w = *reinterpret_cast<const uint32_t*>(vj + swizzled<kCh>(i, dn) + 2 * tq);
              const float v0 = E::lo(w), v1 = E::hi(w);
              if (bits & 1u) {
                o[j][dn][0] = fmaf(p0, v0, o[j][dn][0]);
                o[j][dn][1] = fmaf(p0, v1, o[j][dn][1]);
              }
              if (bits & 4u) {
                o[j][dn][2] = fmaf(p1, v0, o[j][dn][2]);
                o[j][dn][3] = fmaf(p1, v1, o[j][dn][3]);
              }
            }
          }
        }
      }
    }
    __syncthreads();  // this stage is read: the next iteration may copy into it
    have = next_have;
    kt = next;
    cls = next_cls;
    stage ^= 1;
  }
  cp_async_wait<0>();

  if (!warp_rows) return;  // no barrier below: staging and stores are per warp
  // Finish the rows: the quad's shares of l, and whether the row met an allowed key at all.
  // No allowed key: 0 (lse -inf). Allowed keys whose scores are all -inf: l is 0, the row NaN (the
  // reference's exp(-inf + inf)). Else l >= 1 (the maximum's own term) or NaN.
  seen = quad_or(seen);
  bool any[2];
  float mul[kPack][2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    any[r] = (seen & tc_row_bits(r)) != 0u;
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      l[j][r] = quad_sum(l[j][r]);
      mul[j][r] = !softmax ? 1.0f : l[j][r] == 0.0f ? quiet_nan() : 1.0f / l[j][r];
    }
  }
  if (item.slot >= 0) {
    // Split-KV: this item's share of the rows (at most kSplitRows = 16: warp 0), unnormalized, m in
    // the natural-log domain, for split_combine_kernel.
#pragma unroll
    for (int j = 0; j < kPack; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int rl = 16 * warp + gq + 8 * r;
        if (rl >= rows) continue;
        const int64_t at = split_row_index(item.slot, H, h0 + j, rl);
#pragma unroll
        for (int dn = 0; dn < Tr::kOTiles; ++dn) {
          if (dn >= o_tiles) continue;
          part.o[at * Dv + 8 * dn + 2 * tq] = o[j][dn][2 * r];
          part.o[at * Dv + 8 * dn + 2 * tq + 1] = o[j][dn][2 * r + 1];
        }
        if (tq == 0) {
          part.m[at] = m[j][r] * 0.6931471805599453f;
          part.l[at] = l[j][r];
          part.seen[at] = any[r] ? 1 : 0;
        }
      }
    return;
  }
  uint16_t* const out_s = smem + Tr::kOutOffset;  // free: every warp passed the loop's last barrier
#pragma unroll
  for (int j = 0; j < kPack; ++j)
#pragma unroll
    for (int dn = 0; dn < Tr::kOTiles; ++dn) {
      if (dn >= o_tiles) continue;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int rl = 16 * warp + gq + 8 * r;
        const float x0 = softmax && !any[r] ? 0.0f : o[j][dn][2 * r] * mul[j][r];
        const float x1 = softmax && !any[r] ? 0.0f : o[j][dn][2 * r + 1] * mul[j][r];
        *reinterpret_cast<uint32_t*>(out_s + j * Tr::kHeadQElems + swizzled<kCh>(rl, dn) + 2 * tq) = E::pack(x0, x1);
      }
    }
  __syncwarp();
  // 16-byte stores, chunk index c = (row, head, chunk): a row's packed heads are adjacent in memory.
  T* const out = static_cast<T*>(p.out);
  for (int c = lane; c < (16 << Tr::kPackShift) * v_chunks; c += 32) {
    const int rl = 16 * warp + (c >> (v_shift + Tr::kPackShift)), j = (c >> v_shift) & (kPack - 1), ch = c & (v_chunks - 1);
    if (rl < rows)
      *reinterpret_cast<TcChunk*>(out + ((q_start + row0 + rl) * H + h0 + j) * Dv + ch * 8) =
          *reinterpret_cast<const TcChunk*>(out_s + j * Tr::kHeadQElems + swizzled<kCh>(rl, ch));
  }
  if (p.lse && tq == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int rl = 16 * warp + gq + 8 * r;
      if (rl >= rows) continue;
#pragma unroll
      for (int j = 0; j < kPack; ++j)
        // natural log: ln(sum 2^(x - m)) + m ln 2 with x, m in the log2 domain
        p.lse[(q_start + row0 + rl) * H + h0 + j] =
            !any[r] ? -INFINITY : l[j][r] == 0.0f ? quiet_nan() : (m[j][r] + log2f(l[j][r])) * 0.6931471805599453f;
    }
  }
#endif
}

}  // namespace lk::cuda
