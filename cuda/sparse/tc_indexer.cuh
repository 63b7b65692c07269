// The indexer (SPEC §5) on tensor cores for float16 / bfloat16: scores[i][j] = Σ_h w[i][h] ·
// relu(qI[i][h] · kI[j]) as a GEMM whose rows are (query, head) pairs and whose columns are keys.
//
// One block = one query tile (kBlockM = 64 rows: kQueries = 64 / H whole queries of one sequence,
// their H heads each, padding rows past kQueries · H) × one key chunk (kTilesPerBlock key tiles of
// kBlockN keys). 4 warps, warp w owns rows 16 w .. 16 w + 15:
//   - Q rows (query, head) are consecutive rows of qI [Nq · H, Di]: copied once with cp.async into
//     the (then still free) key stages, turned into mma A fragments (ldmatrix.x4) kept in registers.
//   - K: every key tile is copied once per query tile with cp.async into one of two XOR-swizzled
//     stages (tc_traits.cuh) while the other is computed; B fragments by ldmatrix.x4 of key rows.
//   - S = Q K^T with mma.m16n8k16 (f32 accumulation) in registers; w · relu(S) (relu keeps NaN, as
//     the reference's Math.max) in registers, then the head sum of each query over its H rows through
//     a small float tile in shared memory (heads ascending, float32) and 4-byte coalesced stores.
// Padding rows (zero Q) are never summed, so an Inf key cannot turn them into NaN scores.
// Di: a multiple of 8 up to 128 (kCap = Di rounded up to 16 / 32 / 64 / 128), H <= 64; anything
// else, float32 and sm_75 keep the exact FP32 kernel (sparse_kernels.cuh).
#pragma once
#include <stdint.h>

#include "../attention/element.cuh"
#include "../attention/tc_fragments.cuh"
#include "../attention/tc_traits.cuh"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mma.cuh"
#include "../common/sparse_params.h"

namespace lk::cuda {

// One query tile of the indexer: `count` queries of sequence `seq` from its query `first`.
struct IndexerTile {
  int32_t seq, first, count;
};

template <int kCap>
struct TcIndexerTraits {
  static_assert(kCap == 16 || kCap == 32 || kCap == 64 || kCap == 128, "unsupported indexer head size");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;             // (query, head) rows per block
  static constexpr int kBlockN = kCap == 128 ? 32 : 64;  // keys per tile (keeps the stages at 16 KiB)
  static constexpr int kTilesPerBlock = 1024 / kBlockN;  // key tiles per block: Q is loaded once per 1,024 keys
  static constexpr int kKeysPerBlock = kTilesPerBlock * kBlockN;
  static constexpr int kChunks = kCap / 8;  // 16-byte chunks per shared row
  static constexpr int kKSteps = kCap / 16;
  static constexpr int kNTiles = kBlockN / 8;
  static constexpr int kStageElems = kBlockN * kCap;
  static constexpr int kRedStride = kBlockN + 4;  // float row of the head-sum tile (padding spreads banks)
  static_assert(kBlockM * kCap <= 2 * kStageElems, "the Q tile is staged in the two key stages");
};

// Scores of `count` queries of one sequence (global query rows q_row0 ..; count x H <= kBlockM)
// against its keys [key0, real_end) (real_end > key0; `k` = the sequence's first key row), on
// tensor cores; store(query - q_row0, key, score) receives each. Every thread of a block of
// Tr::kThreads calls it; `stages` (16-byte aligned, 2 x kStageElems) and `red` (kBlockM x
// kRedStride floats) are its shared memory. Shared by the indexer kernel and the fused kernel.
template <typename T, int kCap, typename Store>
__device__ __forceinline__ void tc_indexer_scores(const IndexerParams& p, int64_t q_row0, int count, const T* k, int key0, int real_end,
                                                  uint16_t* stages, float* red, Store store) {
  using Tr = TcIndexerTraits<kCap>;
  using E = TcElement<T>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, kCh = Tr::kChunks;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gq = lane >> 2, tq = lane & 3;
  const int H = p.heads, Di = p.dim;
  const int rows = count * H;  // real rows of the tile
  const int k_steps = (Di + 15) >> 4;  // k-steps holding real dimensions
  const int used_chunks = 2 * k_steps, d_chunks = Di >> 3;
  const T* q = static_cast<const T*>(p.q) + q_row0 * H * Di;

  // Q tile into the stages: real rows by cp.async, padding rows and the pad chunk zero-filled.
  for (int c = tid; c < BM * used_chunks; c += Tr::kThreads) {
    const int r = c / used_chunks, ch = c % used_chunks;
    uint16_t* dst = stages + swizzled<kCh>(r, ch);
    if (r < rows && ch < d_chunks) cp_async_16(dst, q + (int64_t)r * Di + ch * 8);
    else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
  }
  cp_async_commit();
  // This thread's two rows' head weights (rows gq, gq + 8 of its warp); padding rows 0.
  float w_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rl = 16 * warp + gq + 8 * r;
    w_row[r] = rl < rows ? to_float(static_cast<const T*>(p.w)[q_row0 * H + rl]) : 0.0f;
  }
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qa[Tr::kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    if (ks < k_steps) {
      const int i = lane >> 3, r = 16 * warp + (i & 1) * 8 + (lane & 7);
      ldmatrix_x4(qa[ks], stages + swizzled<kCh>(r, 2 * ks + (i >> 1)));
    }
  }
  __syncthreads();  // the stages now belong to the key pipeline

  // Pad chunks of key rows (Di = 8, 24, ...: the second half of the last k-step) are zeros in both
  // stages for the whole chunk; cp.async only ever writes real chunks.
  if (used_chunks > d_chunks)
    for (int r = tid; r < 2 * BN; r += Tr::kThreads)
      *reinterpret_cast<TcChunk*>(stages + (r / BN) * Tr::kStageElems + swizzled<kCh>(r % BN, d_chunks)) = TcChunk{0u, 0u, 0u, 0u};

  const int n_tiles = (real_end - key0 + BN - 1) / BN;
  // Key tile t into stage s: rows past the sequence zero-filled (never summed, but read by ldmatrix).
  auto load_tile = [&](int t, int s) {
    uint16_t* st = stages + s * Tr::kStageElems;
    const int first = key0 + t * BN, valid = min(BN, real_end - first);
    for (int c = tid; c < BN * d_chunks; c += Tr::kThreads) {
      const int r = c / d_chunks, ch = c % d_chunks;
      uint16_t* dst = st + swizzled<kCh>(r, ch);
      if (r < valid) cp_async_16(dst, k + (int64_t)(first + r) * Di + ch * 8);
      else *reinterpret_cast<TcChunk*>(dst) = TcChunk{0u, 0u, 0u, 0u};
    }
    cp_async_commit();
  };

  load_tile(0, 0);
  // A warp whose 16 rows are all padding (a tile of fewer than 64 (query, head) rows: the fused
  // kernel's single query, a sequence's last queries) skips its mma and its head-sum rows, which are
  // never read. Warp-uniform, so the warp-collective ldmatrix / mma stay whole.
  const bool warp_has_rows = 16 * warp < rows;
  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) {
      load_tile(t + 1, (t + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* st = stages + (t & 1) * Tr::kStageElems;
    float acc[Tr::kNTiles][4];
#pragma unroll
    for (int j = 0; j < Tr::kNTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < Tr::kKSteps; ++ks) {
      if (ks < k_steps && warp_has_rows) {
#pragma unroll
        for (int j = 0; j < Tr::kNTiles; j += 2) {
          // Matrices: keys 8j' .. +7 at dims 16ks .. +7 / +8 .. +15, then the next 8 keys.
          const int i = lane >> 3, r = 8 * j + (i >> 1) * 8 + (lane & 7);
          uint32_t b[4];
          ldmatrix_x4(b, st + swizzled<kCh>(r, 2 * ks + (i & 1)));
          const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
          E::mma(acc[j], qa[ks], b0);
          E::mma(acc[j + 1], qa[ks], b1);
        }
      }
    }
    // w · relu(S) per row into the head-sum tile.
    if (warp_has_rows) {
#pragma unroll
      for (int j = 0; j < Tr::kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int rl = 16 * warp + gq + 8 * (e >> 1), col = 8 * j + 2 * tq + (e & 1);
          red[rl * Tr::kRedStride + col] = w_row[e >> 1] * relu_keep_nan(acc[j][e]);
        }
      }
    }
    __syncthreads();  // head-sum tile complete; the stage of tile t is free for tile t + 2
    const int first = key0 + t * BN, valid = min(BN, real_end - first);
    for (int i = tid; i < count * BN; i += Tr::kThreads) {
      const int ql = i / BN, col = i % BN;
      if (col < valid) {
        float s = 0.0f;
        for (int h = 0; h < H; ++h) s += red[(ql * H + h) * Tr::kRedStride + col];
        store(ql, first + col, s);
      }
    }
    __syncthreads();  // the head-sum tile is rewritten by the next key tile
  }
}

// Key chunk blockIdx.x of query tile tiles[blockIdx.y] (grid.y <= 65,535: the host launches longer
// work lists in slices). Writes score rows (query - score_row0) for keys [0, max_len) of the chunk;
// keys past the sequence get -Infinity.
template <typename T, int kCap>
__global__ void __launch_bounds__(TcIndexerTraits<kCap>::kThreads, 1)
    tc_indexer_kernel(IndexerParams p, const IndexerTile* tiles, int64_t score_row0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // sm_75: no cp.async / bf16 mma; the host never launches this kernel there.
#else
  using Tr = TcIndexerTraits<kCap>;
  alignas(16) __shared__ uint16_t stages[2 * Tr::kStageElems];
  __shared__ float red[Tr::kBlockM * Tr::kRedStride];

  const IndexerTile tile = tiles[blockIdx.y];
  const int tid = threadIdx.x;
  const int64_t q_row0 = (int64_t)p.q_offsets[tile.seq] + tile.first;  // global index of the tile's first query
  const int64_t k_start = p.k_offsets[tile.seq];
  const int len = p.k_offsets[tile.seq + 1] - (int)k_start;
  const int key0 = blockIdx.x * Tr::kKeysPerBlock;
  const int key_end = min(p.max_len, key0 + Tr::kKeysPerBlock);
  const int real_end = min(len, key_end);  // keys of the chunk inside the sequence

  // Keys past the sequence: -Infinity (the whole chunk when it starts past the sequence).
  {
    const int from = max(real_end, key0), width = key_end - from;
    for (int i = tid; i < tile.count * width; i += Tr::kThreads) {
      const int ql = i / width, j = from + i % width;
      p.scores[(q_row0 + ql - score_row0) * p.max_len + j] = -INFINITY;
    }
  }
  if (real_end <= key0) return;  // the same for every thread of the block
  float* const scores = p.scores + (q_row0 - score_row0) * p.max_len;
  const int64_t stride = p.max_len;
  tc_indexer_scores<T, kCap>(p, q_row0, tile.count, static_cast<const T*>(p.k) + k_start * p.dim, key0, real_end, stages, red,
                             [scores, stride](int ql, int j, float s) { scores[ql * stride + j] = s; });
#endif
}

}  // namespace lk::cuda
