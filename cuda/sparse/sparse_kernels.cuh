// Kernels of the indexer-selected sparse attention (SPEC §5): indexer scores, per-row top-k,
// sparse attention over given indices, and the fused path that keeps a query's score row in
// shared memory from scoring through selection to attention.
#pragma once
#include "../attention/element.cuh"
#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/sparse_params.h"
#include "../common/tile_plan.h"
#include "block_attend.cuh"
#include "block_select.cuh"
#include "radix_topk.cuh"

namespace lk::cuda {

constexpr int kIndexerThreads = 128;
constexpr int kIndexerMaxQ = 8192;      // heads x dim of one indexer query held in shared memory
constexpr int kIndexerMaxHeads = 512;
constexpr int kTopKCapacity = 2048;     // largest k (a power of two for the bitonic sort)
constexpr int kFusedMaxKeys = 16384;    // score row kept in (dynamic) shared memory by the fused kernel
constexpr int kFusedMaxK = 512;
constexpr int kFusedMaxQ = 1024;

// sum_h w[h] * relu(q[h] . k) for one key row; q and w already in shared memory as float. relu keeps
// NaN (the reference's Math.max(0, x)); top-k then never selects the NaN score.
template <typename T>
__device__ __forceinline__ float indexer_score(const float* q_s, const float* w_s, const T* kr, int heads, int dim) {
  float s = 0.0f;
  for (int h = 0; h < heads; ++h) {
    float dot = 0.0f;
    for (int d = 0; d < dim; ++d) dot = fmaf(q_s[h * dim + d], to_float(kr[d]), dot);
    s = fmaf(w_s[h], relu_keep_nan(dot), s);
  }
  return s;
}

// The indexer query row `row` (heads x dim) and its head weights, as float, into shared memory.
template <typename T>
__device__ __forceinline__ void load_indexer_query(const IndexerParams& p, int64_t row, float* q_s, float* w_s) {
  const T* q = static_cast<const T*>(p.q) + row * p.heads * p.dim;
  const T* w = static_cast<const T*>(p.w) + row * p.heads;
  for (int i = threadIdx.x; i < p.heads * p.dim; i += blockDim.x) q_s[i] = to_float(q[i]);
  for (int i = threadIdx.x; i < p.heads; i += blockDim.x) w_s[i] = to_float(w[i]);
  __syncthreads();
}

// grid (key tiles of kIndexerThreads, rows of this launch): one thread per key of one query. Query
// row `row0 + blockIdx.y` writes score row `row0 + blockIdx.y - score_row0` of p.scores. grid.y is
// at most 65,535, so the host launches longer batches as several launches with increasing row0
// (and the unfused indexedCrossAttention scores a chunk of rows into a scratch whose row 0 is
// score_row0).
template <typename T>
__global__ void __launch_bounds__(kIndexerThreads) indexer_kernel(IndexerParams p, int64_t row0, int64_t score_row0) {
  __shared__ float q_s[kIndexerMaxQ];
  __shared__ float w_s[kIndexerMaxHeads];
  const int64_t row = row0 + blockIdx.y;
  const int b = sequence_of(p.q_offsets, p.batch, row);
  const int64_t k_start = p.k_offsets[b];
  const int len = p.k_offsets[b + 1] - (int)k_start;
  load_indexer_query<T>(p, row, q_s, w_s);
  const int64_t j = (int64_t)blockIdx.x * kIndexerThreads + threadIdx.x;  // 64-bit: max_len may be near 2^31
  if (j >= p.max_len) return;
  float s = -INFINITY;
  if (j < len) s = indexer_score(q_s, w_s, static_cast<const T*>(p.k) + (k_start + j) * p.dim, p.heads, p.dim);
  p.scores[(row - score_row0) * p.max_len + j] = s;
}

// Keys of one top-k row a single block selects; longer rows are split across blocks (slices of
// kTopKSliceKeys, then a merge of the slices' winners).
constexpr int kTopKBlockMaxKeys = 131072;
constexpr int kTopKSliceKeys = 65536;

// Top `k` of get(0 .. len - 1) into sh.idx (positions, sorted); returns how many were taken. The
// radix select (radix_topk.cuh), or the order-keeping multi-pass select when the threshold key is
// tied more often than the radix select gathers.
template <typename Get>
__device__ __forceinline__ int select_row_topk(Get get, int len, int k, RadixShared& sh) {
  static_assert(kTopKCapacity <= kRadixCapacity, "the fallback selects into the radix select's buffers");
  const int taken = radix_select_topk(get, len, k, sh);
  return taken >= 0 ? taken : block_select_topk(get, len, k, sh.keys, sh.idx, kRadixCapacity, sh.u.select);
}

// Row r's length: p.cols, or its lengths[r] clamped to [0, p.cols].
__device__ __forceinline__ int topk_row_length(const TopKParams& p, int64_t r) {
  if (!p.lengths) return p.cols;
  const int l = p.lengths[r];
  return l < 0 ? 0 : (l < p.cols ? l : p.cols);
}

// One block per row (rows of at most kTopKBlockMaxKeys columns).
__global__ void __launch_bounds__(kSelectThreads) topk_kernel(TopKParams p) {
  __shared__ RadixShared sh;
  const int64_t r = blockIdx.x;
  const float* row = p.scores + r * p.cols;
  const int taken = select_row_topk([row](int j) { return row[j]; }, topk_row_length(p, r), p.k, sh);
  for (int i = threadIdx.x; i < p.k; i += kSelectThreads) {
    p.indices[r * p.k + i] = i < taken ? sh.idx[i] : -1;
    p.values[r * p.k + i] = i < taken ? row[sh.idx[i]] : -INFINITY;
  }
}

// Rows longer than one block takes, first step: block (slice s, row row0 + blockIdx.y) selects the
// top k of its slice [s * kTopKSliceKeys, +kTopKSliceKeys) and writes their row positions in
// ascending order to candidates[(blockIdx.y * gridDim.x + s) * k ..], -1 after them. Every key of
// the row's top k is among its slice's top k (whatever beats it inside the slice beats it in the
// row), so the merge sees every winner; ascending positions keep the tie rule exact there.
__global__ void __launch_bounds__(kSelectThreads) topk_slice_kernel(TopKParams p, int64_t row0, int32_t* candidates) {
  __shared__ RadixShared sh;
  const int64_t r = row0 + blockIdx.y;
  const int begin = blockIdx.x * kTopKSliceKeys, len = topk_row_length(p, r);
  const int slice_len = len <= begin ? 0 : (len - begin < kTopKSliceKeys ? len - begin : kTopKSliceKeys);
  const float* slice = p.scores + r * p.cols + begin;
  const int taken = select_row_topk([slice](int j) { return slice[j]; }, slice_len, p.k, sh);
  // Winners by position: equal keys make the sort order them by index alone.
  for (int i = threadIdx.x; i < taken; i += kSelectThreads) sh.keys[i] = 1u;
  __syncthreads();
  block_sort_selected(sh.keys, sh.idx, taken, kRadixCapacity);
  int32_t* out = candidates + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * p.k;
  for (int i = threadIdx.x; i < p.k; i += kSelectThreads) out[i] = i < taken ? begin + sh.idx[i] : -1;
}

// Second step: row row0 + blockIdx.x selects its top k among its slices' `slices * k` candidates
// (row positions ascending, -1 = none: read as NaN, never selected). Candidate order is row order,
// so the tie rule on candidate positions is the tie rule on row positions.
__global__ void __launch_bounds__(kSelectThreads) topk_merge_kernel(TopKParams p, int64_t row0, const int32_t* candidates, int slices) {
  __shared__ RadixShared sh;
  const int64_t r = row0 + blockIdx.x;
  const float* row = p.scores + r * p.cols;
  const int32_t* cand = candidates + (int64_t)blockIdx.x * slices * p.k;
  const int taken = select_row_topk([row, cand](int j) { const int c = cand[j]; return c >= 0 ? row[c] : quiet_nan(); }, slices * p.k, p.k, sh);
  for (int i = threadIdx.x; i < p.k; i += kSelectThreads) {
    const int j = i < taken ? cand[sh.idx[i]] : -1;
    p.indices[r * p.k + i] = j;
    p.values[r * p.k + i] = j >= 0 ? row[j] : -INFINITY;
  }
}

// One block per query row: attention over p.indices[row].
template <typename T>
__global__ void __launch_bounds__(kSelectThreads) sparse_attention_kernel(SparseParams p) {
  __shared__ AttendShared sh;
  const int64_t row = blockIdx.x;
  const int b = sequence_of(p.q_offsets, p.batch, row);
  const int32_t* idx = p.indices + row * p.top_k;
  block_attend<T>(p, row, p.k_offsets[b], p.top_k, [idx](int i) { return idx[i]; }, sh);
}

// Static shared memory of the fused kernel; the score row (max_len floats) is dynamic shared
// memory after it, so the launch asks only for what the longest row of the batch needs.
struct FusedShared {
  float q_s[kFusedMaxQ];
  float w_s[kFusedMaxQ];
  union {
    struct {
      SelectShared select;
      uint32_t keys[kFusedMaxK];
      int idx[kFusedMaxK];
    } pick;
    AttendShared attend;
  } u;
  int chosen[kFusedMaxK];
};

// One block per query row: scores into shared memory, top-k there, then attention; only the chosen
// indices (and their scores) are written to global memory.
template <typename T>
__global__ void __launch_bounds__(kSelectThreads) fused_indexed_attention_kernel(IndexerParams ip, TopKParams tp, SparseParams sp) {
  __shared__ FusedShared sh;
  LK_DYNAMIC_SHARED(float, scores_s);  // [ip.max_len]
  const int64_t row = blockIdx.x;
  const int b = sequence_of(ip.q_offsets, ip.batch, row);
  const int64_t k_start = ip.k_offsets[b];
  const int len = ip.k_offsets[b + 1] - (int)k_start;
  load_indexer_query<T>(ip, row, sh.q_s, sh.w_s);
  for (int j = threadIdx.x; j < len; j += kSelectThreads)
    scores_s[j] = indexer_score(sh.q_s, sh.w_s, static_cast<const T*>(ip.k) + (k_start + j) * ip.dim, ip.heads, ip.dim);
  __syncthreads();
  const float* scores = scores_s;
  const int taken = block_select_topk([scores](int j) { return scores[j]; }, len, tp.k, sh.u.pick.keys, sh.u.pick.idx, kFusedMaxK, sh.u.pick.select);
  for (int i = threadIdx.x; i < tp.k; i += kSelectThreads) {
    const int j = i < taken ? sh.u.pick.idx[i] : -1;
    sh.chosen[i] = j;
    tp.indices[row * tp.k + i] = j;
    tp.values[row * tp.k + i] = j >= 0 ? scores_s[j] : -INFINITY;
  }
  __syncthreads();  // the attention reuses the selection's shared memory
  const int* chosen = sh.chosen;
  block_attend<T>(sp, row, k_start, tp.k, [chosen](int i) { return chosen[i]; }, sh.u.attend);
}

}  // namespace lk::cuda
