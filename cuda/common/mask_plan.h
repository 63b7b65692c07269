// Mask plans (SPEC §3 "Plans"): what the attention kernels need about a pair of jagged layouts and a
// rule, computed once and walked by every call. Shared by the CPU kernels, the CUDA kernels and the
// plan builders (device and host), so the walk is written once.
//
// For tile sizes (block_m query rows, block_n keys) a plan holds, per real query tile of the batch
// (numbered over the batch as in tile_plan.h):
//   - its key runs: maximal ranges of consecutive key tiles of one class, full or partial, in key
//     order; skipped tiles appear in no run. Causal attention has at most two runs per query tile
//     (the full tiles left of the diagonal, the partial diagonal), so a plan stays O(query tiles)
//     where a per-tile list would be O(query tiles x key tiles).
//   - the work list: items (query tile, its runs, a window of key tiles, a partial slot), heaviest
//     first. A query tile is one item, or — split-KV, for sequences of at most kSplitRows queries
//     over many key tiles — one item per window of split_tiles key tiles, each writing a partial
//     (o, m, l) into a slot, and one combine group that merges the slots through their LSE.
#pragma once
#include <stdint.h>

#include "attention_params.h"
#include "host_device.h"
#include "mask_rules.h"
#include "tile_plan.h"

namespace lk {

// Split-KV applies to sequences of at most this many queries (GEMs candidates, Rec2PM targets).
constexpr int kSplitRows = 16;

// Key tiles [begin, end) of one class; end and class packed (end << 1 | partial).
struct KeyRun {
  int32_t begin;
  int32_t end_partial;
};

LK_HD KeyRun make_key_run(int begin, int end, bool partial) {
  KeyRun r;
  r.begin = begin;
  r.end_partial = (end << 1) | (partial ? 1 : 0);
  return r;
}

// One unit of work (times the heads): query tile `tile` of sequence `seq`, its runs
// [run_begin, run_end) clipped to key tiles [key_lo, key_hi). slot < 0: writes the output rows;
// else writes partial slot `slot` (split-KV).
struct PlanWork {
  int32_t seq, tile;
  int32_t run_begin, run_end;
  int32_t key_lo, key_hi;
  int32_t slot;
};

// The slots [first_slot, first_slot + slots) of one split query tile, merged into its output rows.
struct PlanCombine {
  int32_t seq, tile;
  int32_t first_slot, slots;
};

// What one query tile's walk found (the builder's first pass).
struct QueryTileCount {
  int32_t runs;     // key runs
  int32_t full;     // full key tiles
  int32_t partial;  // partial key tiles
  int32_t first;    // first listed key tile (0 when none)
  int32_t end;      // one past the last listed key tile (0 when none)
};

// The geometry of one (query tile, key tile) pair, shared by the host walk below and the device
// builder's classification kernels (cuda/attention/mask_plan_device.cuh), so both see the same
// bounds. Query tile q_tile of sequence b (summary q_sum): its aligned position range
// (bottom-right causal alignment: row i sits at i + Lk - Lq).
LK_HD TileBounds query_tile_bounds(const int32_t* q_offsets, const int32_t* k_offsets, int b, int q_tile, int block_m,
                                   const TileSummary& q_sum) {
  const int Lq = q_offsets[b + 1] - q_offsets[b], Lk = k_offsets[b + 1] - k_offsets[b];
  const int align = Lk - Lq;
  const int row0 = q_tile * block_m;
  const int rows = Lq - row0 < block_m ? Lq - row0 : block_m;
  TileBounds qb;
  qb.sum = q_sum;
  qb.pos_lo = row0 + align;
  qb.pos_hi = row0 + rows - 1 + align;
  return qb;
}

// Key tile kt (summary k_sum) of a sequence of Lk keys.
LK_HD TileBounds key_tile_bounds(int kt, int block_n, int Lk, const TileSummary& k_sum) {
  TileBounds kb;
  kb.sum = k_sum;
  kb.pos_lo = kt * block_n;
  kb.pos_hi = (kt * block_n + block_n < Lk ? kt * block_n + block_n : Lk) - 1;
  return kb;
}

// How many key tiles, from the first, a query tile with bounds qb may see (the rest are skipped
// without classification: mask_rules.h, visible_key_end).
LK_HD int visible_key_tiles(const MaskRule& rule, const TileBounds& qb, int Lk, int block_n) {
  return (visible_key_end(rule, qb, Lk) + block_n - 1) / block_n;
}

// Split-KV pieces of a query tile of a sequence of lq queries whose listed key tiles span `span`
// tiles (0: not split): a sequence of at most kSplitRows queries over more than split_tiles key
// tiles gets one work item per window of split_tiles key tiles.
LK_HD int split_pieces(int lq, int span, int split_tiles) {
  if (split_tiles <= 0 || lq > kSplitRows || span <= split_tiles) return 0;
  return (span + split_tiles - 1) / split_tiles;
}

// Scheduling cost of a whole (unsplit) query tile: its key tiles, partial ones counted twice (they
// load the key metadata and check every pair). A split piece costs its window's tile count.
LK_HD int64_t query_tile_cost(const QueryTileCount& c) { return (int64_t)c.full + 2 * (int64_t)c.partial; }

// Walks the key tiles that query tile `q_tile` of sequence b (summary q_sum) may see, in key order,
// and calls emit(begin, end, partial) once per maximal run of full or partial tiles. k_sums are
// sequence b's key tile summaries. Layouts: offsets only are read here.
template <typename Emit>
LK_HD void walk_key_runs(const MaskRule& rule, const int32_t* q_offsets, const int32_t* k_offsets, int b, int q_tile,
                         int block_m, int block_n, const TileSummary& q_sum, const TileSummary* k_sums, Emit emit) {
  const int Lk = k_offsets[b + 1] - k_offsets[b];
  const TileBounds qb = query_tile_bounds(q_offsets, k_offsets, b, q_tile, block_m, q_sum);
  const int n = visible_key_tiles(rule, qb, Lk, block_n);
  int open = -1, open_cls = kTileSkip;
  for (int kt = 0; kt < n; ++kt) {
    const int cls = classify_tile(rule, qb, key_tile_bounds(kt, block_n, Lk, k_sums[kt]));
    if (cls == open_cls) continue;
    if (open_cls != kTileSkip) emit(open, kt, open_cls == kTilePartial);
    open = kt;
    open_cls = cls;
  }
  if (open_cls != kTileSkip) emit(open, n, open_cls == kTilePartial);
}

// First pass of a build: the counts of one query tile.
LK_HD QueryTileCount count_key_runs(const MaskRule& rule, const int32_t* q_offsets, const int32_t* k_offsets, int b,
                                    int q_tile, int block_m, int block_n, const TileSummary& q_sum,
                                    const TileSummary* k_sums) {
  QueryTileCount c;
  c.runs = c.full = c.partial = c.first = c.end = 0;
  walk_key_runs(rule, q_offsets, k_offsets, b, q_tile, block_m, block_n, q_sum, k_sums,
                [&c](int begin, int end, bool partial) {
                  if (c.runs == 0) c.first = begin;
                  c.end = end;
                  ++c.runs;
                  if (partial) c.partial += end - begin;
                  else c.full += end - begin;
                });
  return c;
}

// Second pass: the runs of one query tile written from out[0].
LK_HD void fill_key_runs(const MaskRule& rule, const int32_t* q_offsets, const int32_t* k_offsets, int b, int q_tile,
                         int block_m, int block_n, const TileSummary& q_sum, const TileSummary* k_sums, KeyRun* out) {
  int i = 0;
  walk_key_runs(rule, q_offsets, k_offsets, b, q_tile, block_m, block_n, q_sum, k_sums,
                [&](int begin, int end, bool partial) { out[i++] = make_key_run(begin, end, partial); });
}

// The kernels' walk over one work item: each listed key tile of the item's runs inside its window,
// in key order, with its class (kTileFull / kTilePartial). A few registers of state.
struct KeyTileCursor {
  const KeyRun* runs;
  int run, run_stop;
  int lo, hi;
  int kt, end;
  bool partial;

  LK_HD void start(const KeyRun* all_runs, const PlanWork& w) {
    runs = all_runs;
    run = w.run_begin - 1;
    run_stop = w.run_end;
    lo = w.key_lo;
    hi = w.key_hi;
    kt = end = 0;
    partial = false;
  }

  // The next listed tile, or false when the item has none left.
  LK_HD bool next(int* tile, int* cls) {
    for (;;) {
      if (kt < end) {
        *tile = kt++;
        *cls = partial ? kTilePartial : kTileFull;
        return true;
      }
      if (++run >= run_stop) return false;
      const KeyRun r = runs[run];
      const int r_end = r.end_partial >> 1;
      kt = r.begin > lo ? r.begin : lo;
      end = r_end < hi ? r_end : hi;
      partial = (r.end_partial & 1) != 0;
    }
  }
};

// What an attention kernel reads of a plan (device or host addresses).
struct PlanView {
  const PlanWork* work;
  const KeyRun* runs;
};

// Partial results of split-KV items: slot s, head h, row r (< kSplitRows) at (s * heads + h) * kSplitRows + r;
// o holds value_dim floats per row (unnormalized: the sum of exp(score - m) v), m the row's running
// maximum of the scaled scores (natural log domain), l the sum of exp(score - m), seen whether the
// row met an allowed key. silu: o only (the plain sum).
struct SplitPartials {
  float* o;
  float* m;
  float* l;
  int32_t* seen;
};

LK_HD int64_t split_row_index(int slot, int heads, int h, int r) { return ((int64_t)slot * heads + h) * kSplitRows + r; }

}  // namespace lk
