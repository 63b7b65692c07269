// Host side of the tensor-core indexer (tc_indexer.cuh): whether it applies, its work list of query
// tiles, and its launches. sparse.cu uploads the work list and calls these.
#pragma once
#include <stdint.h>
#include <algorithm>
#include <vector>

#include "../common/compat.cuh"
#include "../common/device_info.h"
#include "../common/sparse_params.h"
#include "../runtime.h"
#include "tc_indexer.cuh"

namespace lk::cuda {

constexpr int kTcIndexerMaxHeads = 64;  // one 64-row query tile holds every head of a query
constexpr int kTcIndexerMaxDim = 128;

// float16 / bfloat16 with Di a multiple of 8 up to 128, H <= 64, 16-byte aligned q / k, on sm_80+.
inline bool tc_indexer_applies(const IndexerParams& p) {
  if (p.dtype != kFloat16 && p.dtype != kBFloat16) return false;
  if (p.heads < 1 || p.heads > kTcIndexerMaxHeads || p.dim < 8 || p.dim > kTcIndexerMaxDim || p.dim % 8 != 0) return false;
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  if (!aligned(p.q) || !aligned(p.k)) return false;
  int sm = 0, optin = 0;
  return tc_device_info(&sm, &optin) && sm >= 80;
}

// Query tiles covering query rows [row_begin, row_end) (host offsets): per sequence, runs of at most
// `per_tile` queries (a sequence's last tile may be shorter; a sequence without queries has none).
inline std::vector<IndexerTile> query_tiles(const int32_t* q_offsets, int batch, int64_t row_begin, int64_t row_end, int per_tile) {
  std::vector<IndexerTile> tiles;
  for (int b = 0; b < batch; ++b) {
    const int64_t lo = std::max<int64_t>(q_offsets[b], row_begin), hi = std::min<int64_t>(q_offsets[b + 1], row_end);
    for (int64_t r = lo; r < hi; r += per_tile)
      tiles.push_back(IndexerTile{b, (int32_t)(r - q_offsets[b]), (int32_t)std::min<int64_t>(per_tile, hi - r)});
  }
  return tiles;
}

// The indexer's query tiles: 64 / heads queries each (every head of a query in one 64-row tile).
inline std::vector<IndexerTile> tc_indexer_tiles(const int32_t* q_offsets, int batch, int64_t row_begin, int64_t row_end, int heads) {
  return query_tiles(q_offsets, batch, row_begin, row_end, TcIndexerTraits<64>::kBlockM / heads);
}

template <typename T, int kCap>
void launch_tc_indexer_cap(const IndexerParams& p, const IndexerTile* tiles, int64_t n_tiles, int64_t score_row0) {
  using Tr = TcIndexerTraits<kCap>;
  auto* kernel = tc_indexer_kernel<T, kCap>;
  const unsigned chunks = (unsigned)(((int64_t)p.max_len + Tr::kKeysPerBlock - 1) / Tr::kKeysPerBlock);
  for (int64_t t0 = 0; t0 < n_tiles; t0 += kMaxGridYZ) {
    const dim3 grid(chunks, (unsigned)std::min<int64_t>(kMaxGridYZ, n_tiles - t0));
    LK_LAUNCH(kernel, grid, dim3(Tr::kThreads), 0, stream())(p, tiles + t0, score_row0);
  }
}

// `tiles`: a device copy of tc_indexer_tiles(...).
inline void launch_tc_indexer(const IndexerParams& p, const IndexerTile* tiles, int64_t n_tiles, int64_t score_row0) {
  if (n_tiles == 0 || p.max_len == 0) return;
  const int cap = p.dim <= 16 ? 16 : p.dim <= 32 ? 32 : p.dim <= 64 ? 64 : 128;
  const bool bf16 = p.dtype == kBFloat16;
  switch (cap) {
    case 16: bf16 ? launch_tc_indexer_cap<__nv_bfloat16, 16>(p, tiles, n_tiles, score_row0) : launch_tc_indexer_cap<__half, 16>(p, tiles, n_tiles, score_row0); break;
    case 32: bf16 ? launch_tc_indexer_cap<__nv_bfloat16, 32>(p, tiles, n_tiles, score_row0) : launch_tc_indexer_cap<__half, 32>(p, tiles, n_tiles, score_row0); break;
    case 64: bf16 ? launch_tc_indexer_cap<__nv_bfloat16, 64>(p, tiles, n_tiles, score_row0) : launch_tc_indexer_cap<__half, 64>(p, tiles, n_tiles, score_row0); break;
    default: bf16 ? launch_tc_indexer_cap<__nv_bfloat16, 128>(p, tiles, n_tiles, score_row0) : launch_tc_indexer_cap<__half, 128>(p, tiles, n_tiles, score_row0); break;
  }
}

}  // namespace lk::cuda
