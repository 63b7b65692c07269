// Sparse attention (SPEC §5) on tensor cores for float16 / bfloat16: one block per (query row, kv
// group). The query's heads of the group (G = H / Hkv <= 16) are the rows of one m16 tile, so each
// selected K / V row is gathered once for all of them (MQA / GQA, as FlashMLA). The fused kernel
// puts 16 / G queries of one user in the tile (tc_sparse_rows) so a key chosen by several of them
// is gathered once too.
//
// 4 warps split the selected slots into tiles of 16 (warp w takes tiles w, w + 4, ...), each with
// its own pipeline: the tile's K and V rows are gathered with 16-byte cp.async into one of the
// warp's two XOR-swizzled stages while the other is computed (slots of -1 or past the list are
// zero-filled and masked); S = Q K^T (mma.m16n8k16, Q fragments in registers), online softmax in
// registers (IEEE as block_attend.cuh: the max keeps NaN, scores all -inf weigh 0 until a larger one
// comes), O += P V with P repacked as the A operand and V fragments by ldmatrix.trans. At the end
// the warps' partial (max, sum, O) are combined through shared memory: a row with nothing selected
// gives 0 and lse -inf; scores all -inf (or +inf, NaN) give NaN, as the reference.
#pragma once
#include <stdint.h>

#include "../attention/element.cuh"
#include "../attention/tc_fragments.cuh"
#include "../attention/tc_traits.cuh"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mma.cuh"
#include "../common/sparse_params.h"
#include "../common/tile_plan.h"

namespace lk::cuda {

template <int kCap>
struct TcSparseTraits {
  static_assert(kCap == 16 || kCap == 32 || kCap == 64 || kCap == 128, "unsupported head capacity");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTile = 16;  // selected slots per warp tile
  static constexpr int kChunks = kCap / 8;
  static constexpr int kKSteps = kCap / 16;
  static constexpr int kOTiles = kCap / 8;
  static constexpr int kTileElems = kTile * kCap;               // one K or V tile
  static constexpr int kWarpElems = 2 * 2 * kTileElems;         // two stages of K and V
  static constexpr int kQOffset = kWarps * kWarpElems;          // Q: 16 rows of kCap
  static constexpr int kSmemBytes = 2 * (kQOffset + kTile * kCap);
  // The warps' partial outputs (float [kWarps][16][kCap]) reuse the stages after the key loop.
  static_assert(kWarps * 16 * kCap * 4 <= 2 * kQOffset, "combine tile fits the stages");
};

// Shared memory of tc_sparse_rows beside its dynamic `smem` (kSmemBytes, 16-byte aligned).
template <int kCap>
struct TcSparseShared {
  int slot_key[TcSparseTraits<kCap>::kWarps][2][TcSparseTraits<kCap>::kTile];  // per warp and stage: the tile's key rows (-1: none)
  uint32_t slot_bits[TcSparseTraits<kCap>::kWarps][2][TcSparseTraits<kCap>::kTile];  // and which of the tile's queries chose each
  uint32_t seen_part[TcSparseTraits<kCap>::kWarps];  // per warp: the queries with a selected slot
  float m_part[TcSparseTraits<kCap>::kWarps][16], l_part[TcSparseTraits<kCap>::kWarps][16];
};

// The slots of one query: its own list idx[0 ..] (global or shared memory; -1 = none), every
// listed key its own.
struct TcOwnSlots {
  const int32_t* idx;
  __device__ __forceinline__ int key(int i) const { return idx[i]; }
  __device__ __forceinline__ uint32_t queries(int) const { return 1u; }
};

// The rows of one m16 tile are (query, head) pairs: `queries` consecutive query rows from `row0`,
// each with the G = H / Hkv heads of kv group g (queries * G <= 16). The `count` slots are keys of
// their common sequence (from row k_start), given by `slots`: key(i) (-1 = none) and queries(key),
// the bit set of the tile's queries (bit 0 = row0) that selected it; a score of a query for a key it
// did not select is -inf, so each key is gathered once for every query and head of the tile that
// chose it, and a row's softmax runs over exactly its own query's selection. Writes the tile's
// outputs and lse. Every thread of a block of Tr::kThreads calls it. Shared by the sparse attention
// kernel (one query, its own slots) and the fused kernel (the queries of a tile over their union).
template <typename T, int kCap, typename Slots>
__device__ __forceinline__ void tc_sparse_rows(const SparseParams& p, int64_t row0, int queries, int g, int64_t k_start, const Slots& slots,
                                               int count, uint16_t* smem, TcSparseShared<kCap>& sh) {
  using Tr = TcSparseTraits<kCap>;
  using E = TcElement<T>;
  constexpr int kCh = Tr::kChunks, BN = Tr::kTile;
  auto& slot_key = sh.slot_key;
  auto& slot_bits = sh.slot_bits;
  auto& m_part = sh.m_part;
  auto& l_part = sh.l_part;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, G = H / Hkv;
  const int rows = queries * G;  // tile rows in use: row r is query r / G, head r % G
  const T* q = static_cast<const T*>(p.q) + (row0 * H + (int64_t)g * G) * D;  // row r: q + ((r / G) * H + r % G) * D
  const T* k = static_cast<const T*>(p.k) + (int64_t)g * D;                    // key j: k + (k_start + j) * Hkv * D
  const T* v = static_cast<const T*>(p.v) + (int64_t)g * Dv;
  const int64_t k_stride = (int64_t)Hkv * D, v_stride = (int64_t)Hkv * Dv;
  const int k_steps = (D + 15) >> 4, qk_chunks = 2 * k_steps, d_chunks = D >> 3, v_chunks = Dv >> 3;
  const int o_tiles = Dv >> 3;
  // The query of this thread's two accumulator rows (gq, gq + 8); 31 for padding rows (no bit).
  const int row_query[2] = {gq < rows ? gq / G : 31, gq + 8 < rows ? (gq + 8) / G : 31};

  // Which queries have anything selected at all (0 and lse -inf for the others).
  uint32_t any = 0;
  for (int i = tid; i < count; i += Tr::kThreads) {
    const int key = slots.key(i);
    if (key >= 0) any |= slots.queries(key);
  }
  for (int off = 16; off > 0; off >>= 1) any |= __shfl_xor_sync(0xffffffffu, any, off);
  if (lane == 0) sh.seen_part[warp] = any;

  // Q rows into their region (rows past the tile's and the pad chunk of D = 8 zero), then A fragments.
  uint16_t* const q_s = smem + Tr::kQOffset;
  for (int c = tid; c < 16 * qk_chunks; c += Tr::kThreads) {
    const int r = c / qk_chunks, ch = c % qk_chunks;
    uint16_t* dst = q_s + swizzled<kCh>(r, ch);
    if (r < rows && ch < d_chunks) cp_async_16(dst, q + ((int64_t)(r / G) * H + r % G) * D + ch * 8);
    else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t seen = 0;
#pragma unroll
  for (int w = 0; w < Tr::kWarps; ++w) seen |= sh.seen_part[w];
  uint32_t qa[Tr::kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks)
    if (ks < k_steps) {
      const int i = lane >> 3;
      ldmatrix_x4(qa[ks], q_s + swizzled<kCh>((i & 1) * 8 + (lane & 7), 2 * ks + (i >> 1)));
    }

  uint16_t* const ws = smem + warp * Tr::kWarpElems;  // stage s: K at s * 2 * tile, V after it
  // The pad chunk of D = 8 keys is zero in both stages (cp.async writes real chunks only).
  if (qk_chunks > d_chunks)
    for (int r = lane; r < 2 * BN; r += 32)
      *reinterpret_cast<TcChunk*>(ws + (r / BN) * 2 * Tr::kTileElems + swizzled<kCh>(r % BN, d_chunks)) = TcChunk{0u, 0u, 0u, 0u};

  const int n_tiles = (count + BN - 1) / BN;
  // Gathers slot tile t into stage s of this warp: 16 K rows and 16 V rows, each once for every
  // query and head of the tile.
  auto gather = [&](int t, int s) {
    if (lane < BN) {
      const int i = t * BN + lane;
      const int key = i < count ? slots.key(i) : -1;
      slot_key[warp][s][lane] = key;
      slot_bits[warp][s][lane] = key >= 0 ? slots.queries(key) : 0u;
    }
    __syncwarp();
    uint16_t* ks_ = ws + s * 2 * Tr::kTileElems;
    uint16_t* vs_ = ks_ + Tr::kTileElems;
    for (int c = lane; c < BN * d_chunks; c += 32) {
      const int r = c / d_chunks, ch = c % d_chunks, key = slot_key[warp][s][r];
      uint16_t* dst = ks_ + swizzled<kCh>(r, ch);
      if (key >= 0) cp_async_16(dst, k + (k_start + key) * k_stride + ch * 8);
      else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
    }
    for (int c = lane; c < BN * v_chunks; c += 32) {
      const int r = c / v_chunks, ch = c % v_chunks, key = slot_key[warp][s][r];
      uint16_t* dst = vs_ + swizzled<kCh>(r, ch);
      if (key >= 0) cp_async_16(dst, v + (k_start + key) * v_stride + ch * 8);
      else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
    }
    cp_async_commit();
  };

  float o[Tr::kOTiles][4];
#pragma unroll
  for (int j = 0; j < Tr::kOTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  int stage = 0;
  if (warp < n_tiles) gather(warp, 0);
  for (int t = warp; t < n_tiles; t += Tr::kWarps, stage ^= 1) {
    if (t + Tr::kWarps < n_tiles) {
      gather(t + Tr::kWarps, stage ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    const uint16_t* ks_ = ws + stage * 2 * Tr::kTileElems;
    const uint16_t* vs_ = ks_ + Tr::kTileElems;
    // S = Q K^T for 16 slots (two n8 tiles).
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks)
      if (ks < k_steps) {
        const int i = lane >> 3;
        uint32_t bf[4];
        ldmatrix_x4(bf, ks_ + swizzled<kCh>((i >> 1) * 8 + (lane & 7), 2 * ks + (i & 1)));
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        E::mma(s[0], qa[ks], b0);
        E::mma(s[1], qa[ks], b1);
      }
    // Scale and mask (slots empty or not chosen by the row's query: -inf, weight 0), the row maxima.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool live = (slot_bits[warp][stage][8 * n + 2 * tq + (e & 1)] >> row_query[e >> 1]) & 1u;
        s[n][e] = live ? s[n][e] * p.scale : -INFINITY;
        tile_max[e >> 1] = max_keep_nan(tile_max[e >> 1], s[n][e]);
      }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = max_keep_nan(m_run[r], quad_max(tile_max[r]));
      const bool live = m_new != -INFINITY;  // else every score so far is -inf: weights 0 for now
      alpha[r] = live ? __expf(m_run[r] - m_new) : 1.0f;
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& x = s[n][2 * r + c];
          x = live && x != -INFINITY ? __expf(x - m_new) : 0.0f;
          sum += x;
        }
      l_run[r] = l_run[r] * alpha[r] + quad_sum(sum);
      m_run[r] = m_new;
    }
    // O = O * alpha + P V: P (16 x 16 slots) as the A operand, V fragments by ldmatrix.trans.
    uint32_t pa[4];
    pa[0] = E::pack(s[0][0], s[0][1]);
    pa[1] = E::pack(s[0][2], s[0][3]);
    pa[2] = E::pack(s[1][0], s[1][1]);
    pa[3] = E::pack(s[1][2], s[1][3]);
#pragma unroll
    for (int j = 0; j < Tr::kOTiles; ++j) {
      o[j][0] *= alpha[0]; o[j][1] *= alpha[0];
      o[j][2] *= alpha[1]; o[j][3] *= alpha[1];
    }
    const int i = lane >> 3;
#pragma unroll
    for (int j = 0; j < Tr::kOTiles; j += 2) {
      if (j + 1 < o_tiles) {
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, vs_ + swizzled<kCh>((i & 1) * 8 + (lane & 7), j + (i >> 1)));
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        E::mma(o[j], pa, b0);
        E::mma(o[j + 1], pa, b1);
      } else if (j < o_tiles) {  // Dv = 8: one n8 tile
        uint32_t bf[2];
        ldmatrix_x2_trans(bf, vs_ + swizzled<kCh>((i & 1) * 8 + (lane & 7), j));
        E::mma(o[j], pa, bf);
      }
    }
    __syncwarp();  // the stage is gathered into again two tiles later
  }

  // Combine the warps' partial rows: M = max over warps, l = sum of l_w e^(m_w - M), O likewise.
  if (tq == 0) {
    m_part[warp][gq] = m_run[0]; m_part[warp][gq + 8] = m_run[1];
    l_part[warp][gq] = l_run[0]; l_part[warp][gq + 8] = l_run[1];
  }
  __syncthreads();  // every warp is done with its stages: they now hold the partial outputs
  float* const o_part = reinterpret_cast<float*>(smem);  // [kWarps][16][kCap]
#pragma unroll
  for (int j = 0; j < Tr::kOTiles; ++j)
    if (j < o_tiles)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_part[(warp * 16 + gq + 8 * (e >> 1)) * kCap + 8 * j + 2 * tq + (e & 1)] = o[j][e];
  __syncthreads();
  T* out = static_cast<T*>(p.out) + (row0 * H + (int64_t)g * G) * Dv;
  for (int e = tid; e < rows * Dv; e += Tr::kThreads) {
    const int r = e / Dv, c = e % Dv;
    const int64_t head_row = (int64_t)(r / G) * H + r % G;  // from row0's first head of the group
    const bool chosen = (seen >> (r / G)) & 1u;
    float m = -INFINITY;
    for (int w = 0; w < Tr::kWarps; ++w) m = max_keep_nan(m, m_part[w][r]);
    float l = 0.0f, acc = 0.0f;
    for (int w = 0; w < Tr::kWarps; ++w) {
      const float f = m == -INFINITY ? 0.0f : __expf(m_part[w][r] - m);
      l += l_part[w][r] * f;
      acc += o_part[(w * 16 + r) * kCap + c] * f;
    }
    // Nothing selected: 0, lse -inf. Scores all -inf: l 0, NaN. Else l >= 1 (the max's term) or NaN.
    out[head_row * Dv + c] = from_float<T>(!chosen ? 0.0f : l == 0.0f ? quiet_nan() : acc / l);
    if (p.lse && c == 0) p.lse[row0 * H + (int64_t)g * G + head_row] = !chosen ? -INFINITY : l == 0.0f ? quiet_nan() : m + logf(l);
  }
}

// Query `row`'s heads of kv group g over its own `count` selected positions idx[0 ..] (-1 = none).
template <typename T, int kCap>
__device__ __forceinline__ void tc_sparse_group(const SparseParams& p, int64_t row, int g, int64_t k_start, const int32_t* idx, int count,
                                                uint16_t* smem, TcSparseShared<kCap>& sh) {
  tc_sparse_rows<T, kCap>(p, row, 1, g, k_start, TcOwnSlots{idx}, count, smem, sh);
}

template <typename T, int kCap>
__global__ void __launch_bounds__(TcSparseTraits<kCap>::kThreads)
    tc_sparse_attention_kernel(SparseParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // sm_75: no cp.async / bf16 mma; the host never launches this kernel there.
#else
  LK_DYNAMIC_SHARED(uint16_t, smem);
  __shared__ TcSparseShared<kCap> sh;
  const int64_t row = blockIdx.x;
  const int b = sequence_of(p.q_offsets, p.batch, row);
  tc_sparse_group<T, kCap>(p, row, (int)blockIdx.y, p.k_offsets[b], p.indices + row * p.top_k, p.top_k, smem, sh);
#endif
}

}  // namespace lk::cuda
