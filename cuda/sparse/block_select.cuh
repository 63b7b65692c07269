// Block-wide top-k of one row by radix selection: four 8-bit passes over the order-preserving keys
// (sparse_params.h) find the k-th largest key, an order-keeping compaction gathers the winners
// (ties at the threshold by lowest index), and a bitonic sort in shared memory orders them.
#pragma once
#include "../common/compat.cuh"
#include "../common/sparse_params.h"

namespace lk::cuda {

constexpr int kSelectThreads = 256;  // the select kernels' block; the functions below take any
                                     // block of whole warps up to this (the tensor-core fused
                                     // kernel runs them with 128 threads)

struct SelectShared {
  int hist[256];
  int warp_counts[kSelectThreads / 32];  // blocks of at most kSelectThreads threads
  int state[4];  // digit search result: prefix, remaining, taken so far, ties taken
};

// Exclusive rank of this thread's flag among flagged threads of the block, in thread order, and
// the block's total. Every thread must call it.
__device__ __forceinline__ int block_rank(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
    before += w < warp ? warp_counts[w] : 0;
    sum += warp_counts[w];
  }
  __syncthreads();  // warp_counts is reused by the next call
  *total = sum;
  return before + in_warp;
}

// Sorts keys[0, count) / idx[0, count) into selection order (topk_before) by a bitonic sort of the
// power-of-two span holding them (padding, which sorts last, fills it up to `capacity`). Every
// thread must call it; it ends with a barrier.
__device__ inline void block_sort_selected(uint32_t* keys, int* idx, int count, int capacity) {
  const int tid = threadIdx.x;
  int n = 1;
  while (n < count) n <<= 1;
  for (int i = count + tid; i < n && i < capacity; i += blockDim.x) { keys[i] = 0u; idx[i] = 0x7fffffff; }
  __syncthreads();
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < n; i += blockDim.x) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending_block = (i & size) == 0;  // first half of each size block: best first
          const bool partner_first = topk_before(keys[partner], idx[partner], keys[i], idx[i]);
          if (partner_first == descending_block) {
            const uint32_t tk = keys[i]; keys[i] = keys[partner]; keys[partner] = tk;
            const int ti = idx[i]; idx[i] = idx[partner]; idx[partner] = ti;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Selects the top `k` of row[0, len) (len may be 0) into keys_out / idx_out (capacity >= k, sorted,
// `taken` entries valid). get(j) returns the row's j-th value.
template <typename Get>
__device__ int block_select_topk(Get get, int len, int k, uint32_t* keys_out, int* idx_out, int capacity, SelectShared& sh) {
  const int tid = threadIdx.x;
  // Candidates (selectable values) first: how many can be taken at all.
  int local = 0;
  for (int j = tid; j < len; j += blockDim.x) local += topk_key(get(j)) != 0u;
  if (tid == 0) sh.state[0] = 0;
  __syncthreads();
  atomicAdd(&sh.state[0], local);
  __syncthreads();
  const int candidates = sh.state[0];
  const int take = candidates < k ? candidates : k;
  __syncthreads();
  if (take == 0) return 0;

  uint32_t prefix = 0, mask = 0;
  int remaining = take;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) sh.hist[i] = 0;
    __syncthreads();
    for (int j = tid; j < len; j += blockDim.x) {
      const uint32_t key = topk_key(get(j));
      if (key != 0u && (key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int digit = 255, rem = remaining;
      for (; digit > 0; --digit) {
        if (sh.hist[digit] >= rem) break;
        rem -= sh.hist[digit];
      }
      sh.state[1] = digit;
      sh.state[2] = rem;
    }
    __syncthreads();
    prefix |= (uint32_t)sh.state[1] << shift;
    mask |= 0xffu << shift;
    remaining = sh.state[2];
    __syncthreads();
  }
  const uint32_t threshold = prefix;
  const int above = take - remaining;  // keys strictly above the threshold, all taken

  // Order-keeping compaction: winners above the threshold, then the first `remaining` ties.
  int placed = 0, ties = 0;
  for (int base = 0; base < len; base += blockDim.x) {
    const int j = base + tid;
    const uint32_t key = j < len ? topk_key(get(j)) : 0u;
    int total;
    const int r_above = block_rank(key > threshold, sh.warp_counts, &total);
    if (key > threshold) { keys_out[placed + r_above] = key; idx_out[placed + r_above] = j; }
    placed += total;
    const int r_tie = block_rank(key == threshold && key != 0u, sh.warp_counts, &total);
    if (key == threshold && key != 0u && ties + r_tie < remaining) {
      keys_out[above + ties + r_tie] = key;
      idx_out[above + ties + r_tie] = j;
    }
    ties += total;
  }
  block_sort_selected(keys_out, idx_out, take, capacity);
  return take;
}

}  // namespace lk::cuda
