// The fused indexedCrossAttention (SPEC §5) on tensor cores for float16 / bfloat16: one block of
// 4 warps per query tile (up to kTcFusedMaxTileQueries queries of one sequence, tile.count x Hi <=
// 64 indexer rows) keeps the tile's score rows in dynamic shared memory from scoring through
// selection to attention, as the FP32 fused kernel (sparse_kernels.cuh) does for one query, with
// its two GEMM-shaped steps on tensor cores through the same device functions as the unfused
// kernels:
//   1. scores: tc_indexer_scores (tc_indexer.cuh) with the (query, indexer head) pairs of the whole
//      tile as the rows of the m16 tiles, so each key tile of the sequence is copied (cp.async) once
//      for all of the tile's queries; every key's score (w-weighted relu head sum, float32) goes to
//      its query's shared score row;
//   2. per query of the tile, top-k of its row in shared memory: block_select_topk (exact tie rule,
//      NaN / -Infinity never selected); only the chosen indices and their scores reach global memory;
//   3. attention on tensor cores (tc_sparse_attention.cuh) per kv group: the m16 tile's rows are
//      (query, head) pairs of 16 / G queries of the tile (tc_sparse_rows over the union of their
//      selections, a score masked to -inf where the row's query did not choose the key), so a K / V
//      row chosen by several of them is gathered once for all of their heads; with G = 16 (or a
//      1-query tile) a query's heads fill the tile alone (tc_sparse_group, right after its select).
// The host sizes the tile so the score rows fit (tc_fused_tile_queries); a row too long for even one
// query takes the unfused path. Dynamic shared memory: the workspace of steps 1 and 3 (they never
// overlap in time), then the tile's score rows (count x max_len floats).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/sparse_params.h"
#include "../common/tile_plan.h"
#include "block_select.cuh"
#include "sparse_kernels.cuh"
#include "tc_indexer.cuh"
#include "tc_sparse_attention.cuh"

namespace lk::cuda {

// The indexer step takes every head size up to 128 with one instantiation (k-steps past Di are
// skipped; the 32-key tiles keep its stages at 16 KiB); the attention step is instantiated per
// head capacity (its stages scale with it).
constexpr int kFusedIndexerCap = 128;
constexpr int kTcFusedThreads = TcIndexerTraits<kFusedIndexerCap>::kThreads;
// Queries per block at most: the indexer's 64-row tile holds 64 / Hi of them; 16 bounds the score
// rows' shared memory for the narrowest indexers (Hi <= 4).
constexpr int kTcFusedMaxTileQueries = 16;

// Bytes before the score row in dynamic shared memory (a multiple of 16): the larger workspace of
// the indexer step (two key stages and the head-sum tile) and the attention step.
template <int kAttCap>
struct TcFusedLayout {
  using IdxTr = TcIndexerTraits<kFusedIndexerCap>;
  static constexpr size_t kIndexerBytes = 2 * IdxTr::kStageElems * sizeof(uint16_t) + (size_t)IdxTr::kBlockM * IdxTr::kRedStride * sizeof(float);
  static constexpr size_t kAttendBytes = TcSparseTraits<kAttCap>::kSmemBytes;
  static constexpr size_t kWorkspaceBytes = kIndexerBytes > kAttendBytes ? kIndexerBytes : kAttendBytes;
  static_assert(kWorkspaceBytes % 16 == 0, "the score row stays 16-byte aligned");
};

template <int kAttCap>
struct TcFusedShared {
  SelectShared select;
  uint32_t keys[kFusedMaxK];
  int idx[kFusedMaxK];
  int32_t chosen[kFusedMaxK];
  int warp_count[kTcFusedThreads / 32];  // the union keys' compaction
  TcSparseShared<kAttCap> attend;
};

// The slots of a group of the tile's queries: their union of keys in ascending order, list[i], and
// per key the bit set of the group's queries that selected it (member[key] >> first).
struct TcUnionSlots {
  const int32_t* list;
  const uint16_t* member;
  int first;
  uint32_t group_mask;
  __device__ __forceinline__ int key(int i) const { return list[i]; }
  __device__ __forceinline__ uint32_t queries(int key) const { return ((uint32_t)member[key] >> first) & group_mask; }
};

// Step 3 with shared gathers, once every query of the tile has its selection in tp.indices: the
// score rows' memory (count x max_len floats, count >= 2: at least 8 bytes per key) becomes
// member[len] (uint16, bit ql: query ql selected the key) and a key list (int32, at most len); per
// group of `per_tile` queries, the keys any of them selected, ascending, each gathered once per kv
// group for all of their (query, head) rows.
template <typename T, int kAttCap>
__device__ __forceinline__ void tc_fused_shared_attention(const SparseParams& sp, const TopKParams& tp, int64_t row0, int count, int per_tile,
                                                          int64_t k_start, int len, unsigned char* rows_s, uint16_t* smem,
                                                          TcFusedShared<kAttCap>& sh) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  constexpr int kWarps = kTcFusedThreads / 32;
  uint16_t* const member = reinterpret_cast<uint16_t*>(rows_s);
  int32_t* const list = reinterpret_cast<int32_t*>(rows_s + ((2 * (size_t)len + 3) & ~(size_t)3));
  for (int j = tid; j < len; j += kTcFusedThreads) member[j] = 0;
  __syncthreads();
  // One query at a time: a query's selection has no duplicate, so no two threads touch one key.
  for (int ql = 0; ql < count; ++ql) {
    const int32_t* chosen = tp.indices + (row0 + ql) * tp.k;  // written by this block before a barrier
    for (int i = tid; i < tp.k; i += kTcFusedThreads) {
      const int j = chosen[i];
      if (j >= 0) member[j] |= (uint16_t)(1u << ql);
    }
    __syncthreads();
  }
  for (int first = 0; first < count; first += per_tile) {
    const int queries = count - first < per_tile ? count - first : per_tile;
    const uint32_t group_mask = (1u << queries) - 1u;
    // Compact the group's keys in ascending order: per 128 keys, a ballot per warp and the warps'
    // counts before it.
    int total = 0;
    for (int base = 0; base < len; base += kTcFusedThreads) {
      const int j = base + tid;
      const bool in = j < len && ((member[j] >> first) & group_mask) != 0;
      const unsigned ballot = __ballot_sync(0xffffffffu, in);
      if (lane == 0) sh.warp_count[warp] = __popc(ballot);
      __syncthreads();
      int before = total;
      for (int w = 0; w < kWarps; ++w) {
        if (w < warp) before += sh.warp_count[w];
        total += sh.warp_count[w];
      }
      if (in) list[before + __popc(ballot & ((1u << lane) - 1u))] = j;
      __syncthreads();  // warp_count is rewritten by the next 128 keys
    }
    const TcUnionSlots slots{list, member, first, group_mask};
    for (int g = 0; g < sp.kv_heads; ++g) {
      tc_sparse_rows<T, kAttCap>(sp, row0 + first, queries, g, k_start, slots, total, smem, sh.attend);
      __syncthreads();  // the next group's Q and stages overwrite this group's partial outputs; the list is rebuilt
    }
  }
}

template <typename T, int kAttCap>
__global__ void __launch_bounds__(kTcFusedThreads, 1)
    tc_fused_indexed_attention_kernel(IndexerParams ip, TopKParams tp, SparseParams sp, const IndexerTile* tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // sm_75: no cp.async / bf16 mma; the host never launches this kernel there.
#else
  static_assert(kTcFusedThreads == TcSparseTraits<kAttCap>::kThreads, "both steps run on the same 4 warps");
  using IdxTr = TcIndexerTraits<kFusedIndexerCap>;
  __shared__ TcFusedShared<kAttCap> sh;
  LK_DYNAMIC_SHARED(uint16_t, smem);
  float* const scores_s = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(smem) + TcFusedLayout<kAttCap>::kWorkspaceBytes);
  const IndexerTile tile = tiles[blockIdx.x];
  const int64_t row0 = (int64_t)ip.q_offsets[tile.seq] + tile.first;  // the tile's first query row
  const int64_t k_start = ip.k_offsets[tile.seq];
  const int len = ip.k_offsets[tile.seq + 1] - (int)k_start;
  const int stride = ip.max_len;  // floats per score row

  if (len > 0)  // the same for every thread of the block
    tc_indexer_scores<T, kFusedIndexerCap>(ip, row0, tile.count, static_cast<const T*>(ip.k) + k_start * ip.dim, 0, len, smem,
                                           reinterpret_cast<float*>(smem + 2 * IdxTr::kStageElems),
                                           [scores_s, stride](int ql, int j, float s) { scores_s[ql * stride + j] = s; });
  __syncthreads();

  // 16 / G queries share an m16 attention tile (their union of keys gathered once); with one query
  // per tile (G = 16, or a 1-query tile) each query attends right after its selection, as before.
  const int G = sp.heads / sp.kv_heads;
  const int per_tile = G <= 8 ? 16 / G : 1;
  const bool share = per_tile > 1 && tile.count > 1;
  for (int ql = 0; ql < tile.count; ++ql) {
    const int64_t row = row0 + ql;
    const float* scores = scores_s + (int64_t)ql * stride;
    const int taken = block_select_topk([scores](int j) { return scores[j]; }, len, tp.k, sh.keys, sh.idx, kFusedMaxK, sh.select);
    for (int i = threadIdx.x; i < tp.k; i += kTcFusedThreads) {
      const int j = i < taken ? sh.idx[i] : -1;
      sh.chosen[i] = j;
      tp.indices[row * tp.k + i] = j;
      tp.values[row * tp.k + i] = j >= 0 ? scores[j] : -INFINITY;
    }
    __syncthreads();  // the attention reuses the indexer's workspace and reads the chosen keys
    if (share) continue;
    for (int g = 0; g < sp.kv_heads; ++g) {
      tc_sparse_group<T, kAttCap>(sp, row, g, k_start, sh.chosen, tp.k, smem, sh.attend);
      __syncthreads();  // the next group's (or query's) Q and stages overwrite this group's partial outputs
    }
  }
  if (share) tc_fused_shared_attention<T, kAttCap>(sp, tp, row0, tile.count, per_tile, k_start, len, reinterpret_cast<unsigned char*>(scores_s), smem, sh);
#endif
}

}  // namespace lk::cuda
