// Work of the tiled attention kernels over a jagged batch, sized by the batch's real tiles (SPEC §3:
// "cost must follow the number of allowed pairs, never the number of empty sequences or of padding
// tiles"). Tiles of `tile` tokens are numbered consecutively over the whole batch: sequence b owns the
// tiles [base[b], base[b + 1]), where base is the prefix sum of ceil(L_b / tile). Summaries, grids and
// task lists are indexed by that number, so an empty sequence costs one prefix-sum entry and nothing
// else, whatever the longest sequence is.
#pragma once
#include <stdint.h>
#include <vector>
#include "host_device.h"
#include "mask_rules.h"

namespace lk {

// One query tile of one sequence: a unit of work of the attention kernels.
struct TileRef {
  int32_t seq;
  int32_t tile;
};

// 64-bit sum: a sequence of nearly 2^31 tokens must not wrap.
LK_HD int tiles_of(int length, int tile) { return (int)(((int64_t)length + tile - 1) / tile); }

// The entry b with prefix[b] <= index < prefix[b + 1] (prefix nondecreasing, batch + 1 entries,
// prefix[0] <= index < prefix[batch]). Entries with no rows (prefix[b] == prefix[b + 1]) are never
// returned. Used with token offsets (row -> sequence) and with tile bases (tile -> sequence).
LK_HD int sequence_of(const int32_t* prefix, int batch, int64_t index) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (prefix[mid + 1] > index) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// Tokens [*lo, *hi) of tile t of the sequence whose tokens are [start, end).
LK_HD void tile_tokens(int64_t start, int64_t end, int tile, int t, int64_t* lo, int64_t* hi) {
  const int64_t a = start + (int64_t)t * tile;
  *lo = a < end ? a : end;
  *hi = a + tile < end ? a + tile : end;
}

// Host side (the launch code and the CPU kernels).
// base[b] = first tile of sequence b; base[batch] = the total. Total tiles <= tokens, so int32 holds it.
inline std::vector<int32_t> tile_bases(const int32_t* offsets, int batch, int tile) {
  std::vector<int32_t> base((size_t)batch + 1);
  base[0] = 0;
  for (int b = 0; b < batch; ++b) base[(size_t)b + 1] = base[(size_t)b] + tiles_of(offsets[b + 1] - offsets[b], tile);
  return base;
}

// Summaries (mask_rules.h) of the batch's real tiles of `tile` tokens, indexed by tile number (base
// from tile_bases): O(tokens), never batch x the longest sequence.
inline std::vector<TileSummary> tile_summaries(const int32_t* offsets, const int32_t* segments, const uint8_t* roles, int batch, int tile,
                                               const std::vector<int32_t>& base) {
  std::vector<TileSummary> out((size_t)base[(size_t)batch]);
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < base[(size_t)b + 1] - base[(size_t)b]; ++t) {
      int64_t lo, hi;
      tile_tokens(offsets[b], offsets[b + 1], tile, t, &lo, &hi);
      out[(size_t)(base[(size_t)b] + t)] = summarize_tokens(segments, roles, lo, hi);
    }
  return out;
}

// Every tile of the batch, later tiles of a sequence first (under causal rules they see the most
// keys, so scheduling them first shortens the tail), sequence order among equal tile numbers.
// A counting sort: O(tiles + longest sequence's tiles), never O(batch x longest).
inline std::vector<TileRef> tiles_longest_first(const std::vector<int32_t>& base) {
  const int batch = (int)base.size() - 1;
  int most = 0;
  for (int b = 0; b < batch; ++b) most = base[(size_t)b + 1] - base[(size_t)b] > most ? base[(size_t)b + 1] - base[(size_t)b] : most;
  std::vector<int32_t> start((size_t)most + 1, 0);  // start[t]: first slot of tile number t (descending)
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < base[(size_t)b + 1] - base[(size_t)b]; ++t) ++start[(size_t)(most - 1 - t)];
  int32_t at = 0;
  for (int i = 0; i <= most; ++i) { const int32_t n = start[(size_t)i]; start[(size_t)i] = at; at += n; }
  std::vector<TileRef> out((size_t)base[(size_t)batch]);
  for (int b = 0; b < batch; ++b)
    for (int t = 0; t < base[(size_t)b + 1] - base[(size_t)b]; ++t) out[(size_t)start[(size_t)(most - 1 - t)]++] = TileRef{b, t};
  return out;
}

}  // namespace lk
