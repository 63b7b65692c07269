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
//   3. per query, attention: tc_sparse_group (tc_sparse_attention.cuh) per kv group, each selected
//      K / V row gathered once for the group's heads, QK and PV on tensor cores, online softmax.
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
  TcSparseShared<kAttCap> attend;
};

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

    for (int g = 0; g < sp.kv_heads; ++g) {
      tc_sparse_group<T, kAttCap>(sp, row, g, k_start, sh.chosen, tp.k, smem, sh.attend);
      __syncthreads();  // the next group's (or query's) Q and stages overwrite this group's partial outputs
    }
  }
#endif
}

}  // namespace lk::cuda
