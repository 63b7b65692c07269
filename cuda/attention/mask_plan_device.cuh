// The kernels that build a mask plan on the device (SPEC §3 "Plans"; the host side that sizes and
// issues them is cuda/attention/mask_plan.cu). Every decision comes from the shared headers the host
// walk uses (mask_plan.h: tile bounds, classification, split pieces, costs; tile_plan.h: tile
// numbering), so the lists equal the host builder's entry for entry (test/mask-plan.test.ts).
//
//   sequence_tiles      per sequence: its query / key tile counts          -> scan: tile bases
//   tile_summaries      per tile: segment range and roles of its tokens
//   key_runs<false>     per query tile (a warp; lanes = key tiles): class of each visible key tile,
//                       run starts by ballot -> counts, split pieces       -> scans: run / item /
//                                                                             combine / slot starts
//   key_runs<true>      the same walk, writing each run at its start
//   work_items          per query tile: its work item(s), costs, its combine group
//   cost_histogram      per item: bucket (heaviest first) x chunk counts   -> scan: sorted positions
//   sort_scatter        per chunk: stable rank inside the chunk, the ordered work list
//   plan_totals         the stats, for the host (downloaded at the op's completion)
#pragma once
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/mask_plan.h"
#include "../common/tile_plan.h"
#include "../runtime.h"

namespace lk::cuda::plan_build {

constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kScanThreads = 256;
constexpr int kScanItems = 4;                          // consecutive elements per thread
constexpr int kScanChunk = kScanThreads * kScanItems;  // elements per block of a scan pass
constexpr int64_t kOneBlockScan = 16 * kScanChunk;     // up to here one block scans in one launch
constexpr int kWalkWarps = 4;                          // query tiles per block of key_runs
constexpr int kSortThreads = 256;
constexpr int kSortChunk = 1024;  // items per block of the sort (shared costs: 4 KiB)
constexpr int kFlatThreads = 256;

// An entry past a device-built list's real ones (the lists are sized by host-known bounds): the
// attention and combine kernels return at once on seq < 0.
LK_HD PlanWork unused_work() { return PlanWork{-1, 0, 0, 0, 0, 0, -1}; }
LK_HD PlanCombine unused_combine() { return PlanCombine{-1, 0, 0, 0}; }

// Per query tile, before their scans: key runs, work items, combine groups (0/1), split slots.
struct TileSizes {
  int32_t* runs;
  int32_t* items;
  int32_t* splits;
  int32_t* slots;
};

// The plan's totals, in PlanStats order after query_tiles.
struct PlanTotals {
  int64_t full_tiles, partial_tiles, runs, work_items, split_tiles, split_items;
};

// Exclusive scan of one value per thread over the block; *total = the block's sum. warp_sums:
// kScanThreads / 32 ints of the kernel's shared memory.
__device__ __forceinline__ int block_exclusive_scan(int v, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(kAllLanes, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < kScanThreads / 32; ++w) {
    const int s = warp_sums[w];
    before += w < warp ? s : 0;
    sum += s;
  }
  __syncthreads();  // warp_sums is written again by the next call
  *total = sum;
  return before + x - v;
}

// Scans the chunk of data[0, n) at `base` (exclusive, in place) after `carry`; returns the chunk's sum.
__device__ __forceinline__ int scan_chunk(int32_t* data, int64_t n, int64_t base, int carry, int* warp_sums) {
  const int64_t at = base + (int64_t)threadIdx.x * kScanItems;
  int v[kScanItems], sum = 0;
#pragma unroll
  for (int j = 0; j < kScanItems; ++j) {
    v[j] = at + j < n ? data[at + j] : 0;
    sum += v[j];
  }
  int total;
  int run = carry + block_exclusive_scan(sum, warp_sums, &total);
#pragma unroll
  for (int j = 0; j < kScanItems; ++j) {
    if (at + j < n) data[at + j] = run;
    run += v[j];
  }
  return total;
}

// One block: data[0, n) becomes its exclusive prefix sum, data[n] the total.
__global__ void __launch_bounds__(kScanThreads) scan_one_block_kernel(int32_t* data, int64_t n) {
  __shared__ int warp_sums[kScanThreads / 32];
  int carry = 0;
  for (int64_t base = 0; base < n; base += kScanChunk) carry += scan_chunk(data, n, base, carry, warp_sums);
  if (threadIdx.x == 0) data[n] = carry;
}

// Multi-block scan, pass 1: each block's sum.
__global__ void __launch_bounds__(kScanThreads) scan_reduce_kernel(const int32_t* data, int64_t n, int32_t* block_sums) {
  __shared__ int warp_sums[kScanThreads / 32];
  const int64_t at = (int64_t)blockIdx.x * kScanChunk + (int64_t)threadIdx.x * kScanItems;
  int sum = 0;
  for (int j = 0; j < kScanItems; ++j) sum += at + j < n ? data[at + j] : 0;
  int total;
  block_exclusive_scan(sum, warp_sums, &total);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = total;
}

// Pass 3 (pass 2 scans block_sums with scan_one_block_kernel): each chunk after its block's offset.
__global__ void __launch_bounds__(kScanThreads) scan_downsweep_kernel(int32_t* data, int64_t n, const int32_t* block_starts) {
  __shared__ int warp_sums[kScanThreads / 32];
  scan_chunk(data, n, (int64_t)blockIdx.x * kScanChunk, block_starts[blockIdx.x], warp_sums);
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == 0) data[n] = block_starts[gridDim.x];
}

// Scratch ints a scan of n elements needs (block sums of the multi-block passes, and their total).
inline int64_t scan_scratch_ints(int64_t n) { return n <= kOneBlockScan ? 0 : (n + kScanChunk - 1) / kScanChunk + 1; }

// Issues the exclusive scan of data[0, n) into data[0, n] (data holds n + 1 ints).
inline void scan_exclusive(int32_t* data, int64_t n, int32_t* scratch) {
  if (n <= kOneBlockScan) {
    LK_LAUNCH(scan_one_block_kernel, dim3(1), dim3(kScanThreads), 0, stream())(data, n);
    return;
  }
  const unsigned blocks = (unsigned)((n + kScanChunk - 1) / kScanChunk);
  LK_LAUNCH(scan_reduce_kernel, dim3(blocks), dim3(kScanThreads), 0, stream())(data, n, scratch);
  LK_LAUNCH(scan_one_block_kernel, dim3(1), dim3(kScanThreads), 0, stream())(scratch, (int64_t)blocks);
  LK_LAUNCH(scan_downsweep_kernel, dim3(blocks), dim3(kScanThreads), 0, stream())(data, n, scratch);
}

inline unsigned flat_blocks(int64_t n) { return (unsigned)((n + kFlatThreads - 1) / kFlatThreads); }

__global__ void __launch_bounds__(kFlatThreads) zero_kernel(int32_t* data, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * kFlatThreads + threadIdx.x;
  if (i < n) data[i] = 0;
}

// Tiles of each sequence (scanned into the bases of tile_plan.h); thread 0 also clears the tile
// counters that key_runs adds to.
__global__ void __launch_bounds__(kFlatThreads)
    sequence_tiles_kernel(const int32_t* q_offsets, const int32_t* k_offsets, int batch, int block_m, int block_n,
                          int32_t* q_tiles, int32_t* k_tiles, unsigned long long* tile_counts) {
  const int64_t b = (int64_t)blockIdx.x * kFlatThreads + threadIdx.x;
  if (b == 0) tile_counts[0] = tile_counts[1] = 0;
  if (b >= batch) return;
  q_tiles[b] = tiles_of(q_offsets[b + 1] - q_offsets[b], block_m);
  k_tiles[b] = tiles_of(k_offsets[b + 1] - k_offsets[b], block_n);
}

// Summary of every real tile: query tiles [0, nq), then key tiles.
__global__ void __launch_bounds__(kFlatThreads)
    tile_summaries_kernel(LayoutView q, LayoutView kv, int batch, int block_m, int block_n, const int32_t* q_base,
                          const int32_t* k_base, int32_t nq, int32_t nk, TileSummary* q_sums, TileSummary* k_sums) {
  const int64_t i = (int64_t)blockIdx.x * kFlatThreads + threadIdx.x;
  if (i >= (int64_t)nq + nk) return;
  const bool query = i < nq;
  const int64_t number = query ? i : i - nq;
  const int32_t* base = query ? q_base : k_base;
  // Field by field: a reference to either parameter would copy both to local memory.
  const int32_t* offsets = query ? q.offsets : kv.offsets;
  const int b = sequence_of(base, batch, number);
  int64_t lo, hi;
  tile_tokens(offsets[b], offsets[b + 1], query ? block_m : block_n, (int)(number - base[b]), &lo, &hi);
  (query ? q_sums : k_sums)[number] =
      summarize_tokens(query ? q.segments : kv.segments, query ? q.roles : kv.roles, lo, hi);
}

// One warp per query tile walks its visible key tiles 32 at a time, one per lane, classified by
// mask_rules.h. A run starts at a listed tile whose left neighbour has another class, and the run
// holding tile kt - 1 ends at kt when the class changes; the walk covers position n too, so the last
// run ends there. kFill = false: counts (mask_plan.h QueryTileCount) and the per-tile sizes;
// kFill = true: each run written at run_start[tile] + its rank (begin by the lane of its first
// tile, end by the lane just past its last).
template <bool kFill>
__global__ void __launch_bounds__(kWalkWarps * 32)
    key_runs_kernel(MaskRule rule, const int32_t* q_offsets, const int32_t* k_offsets, int batch, int block_m,
                    int block_n, int split_tiles, const int32_t* q_base, const int32_t* k_base, const TileSummary* q_sums,
                    const TileSummary* k_sums, int32_t nq, QueryTileCount* counts, TileSizes sizes,
                    unsigned long long* tile_counts, const int32_t* run_start, KeyRun* runs) {
  const int lane = threadIdx.x & 31;
  const int64_t i = (int64_t)blockIdx.x * kWalkWarps + (threadIdx.x >> 5);
  if (i >= nq) return;  // the whole warp
  const int b = sequence_of(q_base, batch, i);
  const int t = (int)(i - q_base[b]);
  const int Lk = k_offsets[b + 1] - k_offsets[b];
  const TileBounds qb = query_tile_bounds(q_offsets, k_offsets, b, t, block_m, q_sums[i]);
  const int n = visible_key_tiles(rule, qb, Lk, block_n);
  const TileSummary* ks = k_sums + k_base[b];
  KeyRun* out = kFill ? runs + run_start[i] : nullptr;
  int left = kTileSkip;  // class of the tile before the chunk
  int n_runs = 0, full = 0, partial = 0, first = -1, end = 0;
  for (int kt0 = 0; kt0 <= n; kt0 += 32) {
    const int kt = kt0 + lane;
    const int cls = kt < n ? classify_tile(rule, qb, key_tile_bounds(kt, block_n, Lk, ks[kt])) : (int)kTileSkip;
    int prev = __shfl_up_sync(kAllLanes, cls, 1);
    if (lane == 0) prev = left;
    const bool starts = cls != kTileSkip && cls != prev;
    const unsigned start_bits = __ballot_sync(kAllLanes, starts);
    const unsigned listed = __ballot_sync(kAllLanes, cls != kTileSkip);
    const unsigned full_bits = __ballot_sync(kAllLanes, cls == kTileFull);
    if (kFill) {
      const int before = n_runs + __popc(start_bits & ((1u << lane) - 1u));  // runs begun left of kt
      if (prev != kTileSkip && cls != prev) out[before - 1].end_partial = (kt << 1) | (prev == kTilePartial ? 1 : 0);
      if (starts) out[before].begin = kt;
    }
    n_runs += __popc(start_bits);
    full += __popc(full_bits);
    partial += __popc(listed & ~full_bits);
    if (listed) {
      if (first < 0) first = kt0 + __ffs((int)listed) - 1;
      end = kt0 + 32 - __clz((int)listed);
    }
    left = __shfl_sync(kAllLanes, cls, 31);
  }
  if (kFill || lane != 0) return;
  QueryTileCount c;
  c.runs = n_runs;
  c.full = full;
  c.partial = partial;
  c.first = first < 0 ? 0 : first;
  c.end = end;
  counts[i] = c;
  const int pieces = split_pieces(q_offsets[b + 1] - q_offsets[b], c.end - c.first, split_tiles);
  sizes.runs[i] = n_runs;
  sizes.items[i] = pieces > 0 ? pieces : 1;
  sizes.splits[i] = pieces > 0 ? 1 : 0;
  sizes.slots[i] = pieces;
  atomicAdd(&tile_counts[0], (unsigned long long)full);
  atomicAdd(&tile_counts[1], (unsigned long long)partial);
}

// Per query tile (sizes now scanned into starts): its work item, or one per split window, in
// (sequence, tile, window) order as the host builds them, with their costs; its combine group. The
// combine list's unused tail is marked here (combine_capacity <= nq).
__global__ void __launch_bounds__(kFlatThreads)
    work_items_kernel(const int32_t* q_offsets, int batch, int split_tiles, const int32_t* q_base, int32_t nq,
                      const QueryTileCount* counts, TileSizes starts, int32_t combine_capacity, PlanWork* work,
                      int32_t* cost, PlanCombine* combine) {
  const int64_t i = (int64_t)blockIdx.x * kFlatThreads + threadIdx.x;
  if (i < combine_capacity && i >= starts.splits[nq]) combine[i] = unused_combine();
  if (i >= nq) return;
  const int b = sequence_of(q_base, batch, i);
  const int t = (int)(i - q_base[b]);
  const QueryTileCount c = counts[i];
  const int32_t r0 = starts.runs[i], r1 = starts.runs[i + 1], at = starts.items[i];
  const int pieces = split_pieces(q_offsets[b + 1] - q_offsets[b], c.end - c.first, split_tiles);
  if (pieces == 0) {
    work[at] = PlanWork{b, t, r0, r1, c.first, c.end, -1};
    cost[at] = (int32_t)query_tile_cost(c);
    return;
  }
  const int32_t slot0 = starts.slots[i];
  combine[starts.splits[i]] = PlanCombine{b, t, slot0, pieces};
  for (int s = 0; s < pieces; ++s) {
    const int lo = c.first + s * split_tiles, hi = min(c.end, lo + split_tiles);
    work[at + s] = PlanWork{b, t, r0, r1, lo, hi, slot0 + s};
    cost[at + s] = hi - lo;
  }
}

// Stable counting sort of the items by cost, heaviest first. Bucket of an item: max_cost - cost;
// hist[bucket * chunks + chunk] counts the items of each chunk of kSortChunk items, so that its
// exclusive scan is, for every (bucket, chunk), where that chunk's items of that bucket go.
__global__ void __launch_bounds__(kFlatThreads)
    cost_histogram_kernel(const int32_t* cost, const int32_t* n_items, int max_cost, int32_t chunks, int32_t* hist) {
  const int64_t i = (int64_t)blockIdx.x * kFlatThreads + threadIdx.x;
  if (i >= *n_items) return;
  atomicAdd(&hist[(int64_t)(max_cost - cost[i]) * chunks + i / kSortChunk], 1);
}

// One block per chunk: an item goes to its (bucket, chunk) start plus the number of items of the
// same cost before it in the chunk (ties keep (sequence, tile, window) order). Positions past the
// real items get unused entries.
__global__ void __launch_bounds__(kSortThreads)
    sort_scatter_kernel(const PlanWork* items, const int32_t* cost, const int32_t* n_items, int max_cost,
                        int32_t chunks, const int32_t* hist_start, int32_t capacity, PlanWork* sorted) {
  __shared__ int32_t chunk_cost[kSortChunk];
  const int64_t base = (int64_t)blockIdx.x * kSortChunk;
  const int32_t n = *n_items;
  for (int j = threadIdx.x; j < kSortChunk; j += kSortThreads) chunk_cost[j] = base + j < n ? cost[base + j] : -1;
  __syncthreads();
  for (int j = threadIdx.x; j < kSortChunk && base + j < capacity; j += kSortThreads) {
    const int64_t i = base + j;
    if (i >= n) {
      sorted[i] = unused_work();
      continue;
    }
    const int32_t c = chunk_cost[j];
    int before = 0;
    for (int e = 0; e < j; ++e) before += chunk_cost[e] == c ? 1 : 0;
    sorted[hist_start[(int64_t)(max_cost - c) * chunks + blockIdx.x] + before] = items[i];
  }
}

__global__ void plan_totals_kernel(int32_t nq, TileSizes starts, const unsigned long long* tile_counts, PlanTotals* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  PlanTotals s;
  s.full_tiles = (int64_t)tile_counts[0];
  s.partial_tiles = (int64_t)tile_counts[1];
  s.runs = starts.runs[nq];
  s.work_items = starts.items[nq];
  s.split_tiles = starts.splits[nq];
  s.split_items = starts.slots[nq];
  *out = s;
}

}  // namespace lk::cuda::plan_build
