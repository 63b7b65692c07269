// Top-k of one row by one block (SPEC §5): a radix select over the order-preserving keys of
// sparse_params.h that reads the row once for a histogram of the top 11 key bits, refines only the
// threshold bucket (the next 11, then 10 bits, each pass counting only the bucket's keys) until the
// keys above the threshold plus the bucket fit kRadixCapacity, then gathers those in one pass and
// sorts them in shared memory (larger key first, then lower index: the exact tie rule). Typical rows
// take two or three passes; a threshold shared by more than kRadixCapacity keys (huge exact ties)
// takes the order-keeping multi-pass select of block_select.cuh. NaN and -Infinity (key 0) are never
// counted, gathered or selected.
//
// Counting is warp-aggregated: the lanes of a warp that share the first active lane's bin add
// their count with one atomic (two such rounds per step; the hot bins of scores — relu's zeros,
// ties — are what collide), the rest add one each.
#pragma once
#include "../common/compat.cuh"
#include "../common/sparse_params.h"
#include "block_select.cuh"

namespace lk::cuda {

constexpr int kRadixBins = 2048;       // 11-bit digits
constexpr int kRadixCapacity = 4096;   // keys gathered for the final sort (>= the largest k, 2,048)
constexpr int kRadixBinsPerThread = kRadixBins / kSelectThreads;

struct RadixShared {
  union {
    int hist[kRadixBins];
    SelectShared select;  // the multi-pass fallback
  } u;
  uint32_t keys[kRadixCapacity];
  int idx[kRadixCapacity];
  int warp_sums[kSelectThreads / 32];
  int state[4];  // threshold bin, count above it in this pass, count in it, total counted
  int gathered;
};

// Adds one to hist[bin] for every lane with `active`; lanes sharing a bin with the first active
// lane (twice) add together.
__device__ __forceinline__ void warp_aggregated_count(int* hist, int bin, bool active) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int round = 0; round < 2; ++round) {
    const unsigned live = __ballot_sync(0xffffffffu, active);
    if (live == 0u) return;
    const int leader = __ffs((int)live) - 1;
    const int leader_bin = __shfl_sync(0xffffffffu, bin, leader);
    const unsigned same = __ballot_sync(0xffffffffu, active && bin == leader_bin);
    if (lane == leader) atomicAdd(&hist[bin], __popc(same));
    active = active && bin != leader_bin;
  }
  if (active) atomicAdd(&hist[bin], 1);
}

// The bin holding the `remaining`-th largest counted key: thread t owns bins 8t .. 8t + 7; a suffix
// scan over threads (from the high bins) finds the owner, which walks its bins. Writes state[0..3].
__device__ __forceinline__ void find_threshold_bin(RadixShared& sh, int remaining) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int local = 0;
#pragma unroll
  for (int b = 0; b < kRadixBinsPerThread; ++b) local += sh.u.hist[tid * kRadixBinsPerThread + b];
  int suffix = local;  // inclusive suffix over lanes >= lane
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int v = __shfl_down_sync(0xffffffffu, suffix, off);
    if (lane + off < 32) suffix += v;
  }
  if (lane == 0) sh.warp_sums[warp] = suffix;
  __syncthreads();
  int after = suffix - local, total = 0;  // counted keys in bins above this thread's
  for (int w = 0; w < kSelectThreads / 32; ++w) {
    after += w > warp ? sh.warp_sums[w] : 0;
    total += sh.warp_sums[w];
  }
  if (tid == 0) sh.state[3] = total;
  if (after < remaining && remaining <= after + local) {
    int acc = after;
    for (int b = kRadixBinsPerThread - 1; b >= 0; --b) {
      const int bin = tid * kRadixBinsPerThread + b, c = sh.u.hist[bin];
      if (acc + c >= remaining) {
        sh.state[0] = bin;
        sh.state[1] = acc;
        sh.state[2] = c;
        break;
      }
      acc += c;
    }
  }
  __syncthreads();
}

// Top `k` (<= kRadixCapacity / 2) of the row get(0 .. len - 1) into sh.keys / sh.idx (positions j),
// sorted; returns how many were selected (min(k, selectable keys)), or -1 when the threshold key is
// tied too often (then the caller runs block_select_topk).
template <typename Get>
__device__ inline int radix_select_topk(Get get, int len, int k, RadixShared& sh) {
  const int tid = threadIdx.x;
  uint32_t prefix = 0u, mask = 0u;
  int remaining = k, above = 0, take = 0, bucket = 0;
#pragma unroll 1
  for (int level = 0; level < 3; ++level) {
    const int shift = level == 0 ? 21 : level == 1 ? 10 : 0;  // digits of 11, 11 and 10 bits
    const uint32_t digit_mask = level == 2 ? 0x3ffu : 0x7ffu;
    for (int i = tid; i < kRadixBins; i += kSelectThreads) sh.u.hist[i] = 0;
    __syncthreads();
    // Whole warps run every step (the counting is warp-collective).
    for (int base = 0; base < len; base += kSelectThreads) {
      const int j = base + tid;
      const uint32_t key = j < len ? topk_key(get(j)) : 0u;
      const bool counted = key != 0u && (key & mask) == prefix;
      warp_aggregated_count(sh.u.hist, counted ? (int)((key >> shift) & digit_mask) : 0, counted);
    }
    __syncthreads();
    if (level == 0) {
      // The first pass counts every selectable key: how many are taken at all.
      find_threshold_bin(sh, 1);  // state[3] = total (the bin search for 1 is discarded)
      const int total = sh.state[3];
      take = total < k ? total : k;
      remaining = take;
      __syncthreads();
      if (take == 0) return 0;
    }
    find_threshold_bin(sh, remaining);
    prefix |= (uint32_t)sh.state[0] << shift;
    mask |= digit_mask << shift;
    above += sh.state[1];
    remaining -= sh.state[1];
    bucket = sh.state[2];
    __syncthreads();  // state and hist are rewritten next
    if (above + bucket <= kRadixCapacity) break;
  }
  if (above + bucket > kRadixCapacity) return -1;  // a threshold key tied too often: the caller's fallback

  // Gather every key above the threshold bucket and the whole bucket, then sort them.
  if (tid == 0) sh.gathered = 0;
  __syncthreads();
  const int lane = tid & 31;
  for (int base = 0; base < len; base += kSelectThreads) {
    const int j = base + tid;
    const uint32_t key = j < len ? topk_key(get(j)) : 0u;
    const bool keep = key != 0u && (key & mask) >= prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    int slot = 0;
    if (lane == 0 && ballot) slot = atomicAdd(&sh.gathered, __popc(ballot));
    slot = __shfl_sync(0xffffffffu, slot, 0) + __popc(ballot & ((1u << lane) - 1u));
    if (keep) { sh.keys[slot] = key; sh.idx[slot] = j; }
  }
  __syncthreads();
  block_sort_selected(sh.keys, sh.idx, above + bucket, kRadixCapacity);
  return take;
}

}  // namespace lk::cuda
