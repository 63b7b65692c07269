// Host side of the sparse attention ops on CUDA: uploads offsets / indices through the runtime's
// pinned staging (cuda/runtime.h), launches one kernel per op on the device's stream (the fused path
// when a score row fits shared memory, else indexer -> top-k -> attention).
// Host hazards handled here: every grid dimension stays within CUDA's limits whatever the query
// count (the indexer's rows go in launches of at most 65,535 grid rows; 1-D grids are checked
// against 2^31 - 1 in 64-bit arithmetic); the fused kernel's dynamic shared-memory limit is raised
// once per device to the most it may ever ask, never per call (so concurrent calls cannot race on
// it); every failure clears the thread's last error (common/host_check.cuh).
#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../common/once_cache.h"
#include "../kernel_timing.h"
#include "../multistream/staged_ops.h"
#include "../runtime.h"
#include "sparse_kernels.cuh"
#include "tc_fused.cuh"
#include "tc_indexer.h"
#include "tc_sparse_attention.h"

namespace lk::cuda {
namespace {

// An op's host arrays (offsets, indices, lengths), uploaded together by one async copy from pinned
// staging (cuda/runtime.h); a null array stays null on the device.
class Uploads {
 public:
  template <typename T>
  size_t add(const T* host, size_t count) { return host ? upload_.add(host, count * sizeof(T)) : kAbsent; }
  std::string commit(const char* what) { return upload_.commit(what); }
  template <typename T>
  const T* at(size_t offset) const { return offset == kAbsent ? nullptr : upload_.at<const T>(offset); }

 private:
  static constexpr size_t kAbsent = ~size_t(0);
  Upload upload_;
};

template <template <typename> class Launch, typename... Args>
void by_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case kFloat16: Launch<__half>::run(args...); break;
    case kBFloat16: Launch<__nv_bfloat16>::run(args...); break;
    default: Launch<float>::run(args...); break;
  }
}

// Query rows [row_begin, row_end) of the indexer; score row r - score_row0 of p.scores. Rows go in
// launches of at most 65,535 (grid.y); key tiles in grid.x (at most 2^31 / 128 for any int32 key
// count).
template <typename T> struct LaunchIndexer {
  static void run(const IndexerParams& p, int64_t row_begin, int64_t row_end, int64_t score_row0) {
    auto* k = indexer_kernel<T>;
    const int64_t tiles = ((int64_t)p.max_len + kIndexerThreads - 1) / kIndexerThreads;
    for (int64_t r0 = row_begin; r0 < row_end; r0 += kMaxGridYZ) {
      const dim3 grid((unsigned)tiles, (unsigned)std::min<int64_t>(kMaxGridYZ, row_end - r0));
      LK_LAUNCH(k, grid, dim3(kIndexerThreads), 0, stream())(p, r0, score_row0);
    }
  }
};
template <typename T> struct LaunchSparse {
  static void run(const SparseParams& p) {
    if (tc_sparse_applies(p)) return launch_tc_sparse(p);  // head-batched gathers on tensor cores
    auto* k = sparse_attention_kernel<T>;
    LK_LAUNCH(k, dim3((unsigned)p.nq), dim3(kSelectThreads), 0, stream())(p);
  }
};

// Indexer query rows [row_begin, row_end) into score rows from score_row0: on tensor cores when
// they apply (the work list of query tiles built from the host's offsets), else the FP32 kernel.
std::string run_indexer(const IndexerParams& p, const int32_t* host_q_offsets, int64_t row_begin, int64_t row_end,
                        int64_t score_row0) {
  if (tc_indexer_applies(p)) {
    const std::vector<IndexerTile> tiles = tc_indexer_tiles(host_q_offsets, p.batch, row_begin, row_end, p.heads);
    Upload work;  // stream-ordered: freed after the launches that read it
    const size_t at = work.add(tiles.data(), tiles.size() * sizeof(IndexerTile));
    const std::string err = work.commit("indexer work list upload");
    if (err.empty()) launch_tc_indexer(p, work.at<const IndexerTile>(at), (int64_t)tiles.size(), score_row0);
    return err;
  }
  by_dtype<LaunchIndexer>(p.dtype, p, row_begin, row_end, score_row0);
  return std::string();
}

// Dynamic shared memory of the fused kernel for a batch whose longest row has `max_len` keys.
size_t fused_score_bytes(int max_len) { return (size_t)(max_len > 0 ? max_len : 1) * sizeof(float); }

// A fused kernel's dynamic shared-memory limit, raised once per (device, kernel) to the most any
// call may ask (`most` bytes: workspace and score rows), or less where the device's opt-in shared
// memory per block (64 KiB on sm_75, 99-227 KiB on later parts) leaves less beside the static part.
// Returns that limit in bytes, or 0 when it could not be set (then another path runs). OnceCache (one lock), not
// a per-call cudaFuncSetAttribute: two calls can never see each other's smaller limit.
size_t fused_dynamic_limit(const void* kernel, size_t static_bytes, size_t most) {
  static auto* limits = new OnceCache<std::pair<int, const void*>, size_t>();  // (device, kernel) -> limit set; never destroyed
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) { cudaGetLastError(); return 0; }
  size_t limit = 0;
  limits->get(std::make_pair(device, kernel), &limit, [&](size_t* set) {
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess && (size_t)optin > static_bytes) {
      *set = std::min((size_t)optin - static_bytes, most);
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*set) != cudaSuccess) *set = 0;
    }
    cudaGetLastError();  // a refused attribute or query is no error of any op: another path runs
    return true;  // a refusal is kept too: the device will not change its mind
  });
  return limit;
}

template <typename T>
size_t scalar_fused_limit() {
  return fused_dynamic_limit(reinterpret_cast<const void*>(fused_indexed_attention_kernel<T>), sizeof(FusedShared), fused_score_bytes(kFusedMaxKeys));
}

size_t fused_limit_for(DType dtype) {
  switch (dtype) {
    case kFloat16: return scalar_fused_limit<__half>();
    case kBFloat16: return scalar_fused_limit<__nv_bfloat16>();
    default: return scalar_fused_limit<float>();
  }
}

// Whether the FP32 fused kernel takes rows of `max_len` keys on this device.
bool fused_fits(DType dtype, int max_len) {
  return max_len <= kFusedMaxKeys && fused_score_bytes(max_len) <= fused_limit_for(dtype);
}

template <typename T> struct LaunchFused {
  static void run(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp) {
    auto* k = fused_indexed_attention_kernel<T>;
    LK_LAUNCH(k, dim3((unsigned)ip.nq), dim3(kSelectThreads), fused_score_bytes(ip.max_len), stream())(ip, tp, sp);
  }
};

// Queries per block of the tensor-core fused kernel: as many of one sequence as the indexer's 64-row
// tile holds (64 / Hi, at most kTcFusedMaxTileQueries) and whose score rows of `max_len` floats fit
// beside the workspace in `limit` bytes; 0 when not even one row fits.
int tc_fused_tile_queries(int indexer_heads, int max_len, size_t workspace, size_t limit) {
  if (max_len > kFusedMaxKeys || limit <= workspace) return 0;
  const int64_t fit = (int64_t)((limit - workspace) / fused_score_bytes(max_len));
  return (int)std::min<int64_t>({fit, (int64_t)(TcIndexerTraits<kFusedIndexerCap>::kBlockM / indexer_heads), (int64_t)kTcFusedMaxTileQueries});
}

// The tensor-core fused kernel (tc_fused.cuh) for attention capacity kAttCap: launched over query
// tiles (one block each) when its workspace and at least one score row fit this device; returns
// whether it was (an upload failure lands in *err, then nothing ran).
template <typename T, int kAttCap>
bool launch_tc_fused_cap(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp, const int32_t* host_q_offsets,
                         std::string* err) {
  auto* k = tc_fused_indexed_attention_kernel<T, kAttCap>;
  const size_t workspace = TcFusedLayout<kAttCap>::kWorkspaceBytes;
  const size_t limit = fused_dynamic_limit(reinterpret_cast<const void*>(k), sizeof(TcFusedShared<kAttCap>),
                                           workspace + kTcFusedMaxTileQueries * fused_score_bytes(kFusedMaxKeys));
  const int per_tile = tc_fused_tile_queries(ip.heads, ip.max_len, workspace, limit);
  if (per_tile < 1) return false;
  const std::vector<IndexerTile> tiles = query_tiles(host_q_offsets, ip.batch, 0, ip.nq, per_tile);
  if (tiles.empty()) return true;  // no sequence has queries: nothing to write
  Upload work;  // stream-ordered: freed after the launch that reads it
  const size_t at = work.add(tiles.data(), tiles.size() * sizeof(IndexerTile));
  *err = work.commit("indexedCrossAttention query tiles upload");
  if (!err->empty()) return true;
  // The longest tile's rows; every tile fits the launch's dynamic shared memory.
  int widest = 0;
  for (const IndexerTile& t : tiles) widest = std::max(widest, (int)t.count);
  const size_t bytes = workspace + (size_t)widest * fused_score_bytes(ip.max_len);
  LK_LAUNCH(k, dim3((unsigned)tiles.size()), dim3(kTcFusedThreads), bytes, stream())(ip, tp, sp, work.at<const IndexerTile>(at));
  return true;
}

template <typename T>
bool launch_tc_fused_dtype(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp, const int32_t* host_q_offsets,
                           std::string* err) {
  switch (tc_sparse_capacity(sp)) {
    case 16: return launch_tc_fused_cap<T, 16>(ip, tp, sp, host_q_offsets, err);
    case 32: return launch_tc_fused_cap<T, 32>(ip, tp, sp, host_q_offsets, err);
    case 64: return launch_tc_fused_cap<T, 64>(ip, tp, sp, host_q_offsets, err);
    default: return launch_tc_fused_cap<T, 128>(ip, tp, sp, host_q_offsets, err);
  }
}

// The fused path on tensor cores when both of its steps apply (float16 / bfloat16 on sm_80+, the
// shapes and alignment of the unfused tensor-core kernels, k <= kFusedMaxK) and a score row fits
// shared memory; returns whether it was taken (*err set when its upload failed).
bool launch_tc_fused(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp, const int32_t* host_q_offsets, std::string* err) {
  if (tp.k > kFusedMaxK || sp.top_k != tp.k || !tc_indexer_applies(ip) || !tc_sparse_applies(sp)) return false;
  return ip.dtype == kBFloat16 ? launch_tc_fused_dtype<__nv_bfloat16>(ip, tp, sp, host_q_offsets, err)
                               : launch_tc_fused_dtype<__half>(ip, tp, sp, host_q_offsets, err);
}

// Top-k of p.rows rows (device arrays): one block per row up to kTopKBlockMaxKeys columns; longer
// rows in slices (topk_slice_kernel: grid slices x rows, at most 65,535 rows a launch), then a merge
// of each row's slice winners, a bounded chunk of rows at a time.
std::string launch_top_k(const TopKParams& p) {
  if (p.rows == 0) return std::string();
  if (p.cols <= kTopKBlockMaxKeys) {
    unsigned blocks = 0;
    const std::string err = grid_x(p.rows, "topK", &blocks);
    if (err.empty()) LK_LAUNCH(topk_kernel, dim3(blocks), dim3(kSelectThreads), 0, stream())(p);
    return err;
  }
  const int slices = (int)(((int64_t)p.cols + kTopKSliceKeys - 1) / kTopKSliceKeys);
  const size_t row_bytes = (size_t)slices * (size_t)p.k * sizeof(int32_t);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>({p.rows, (int64_t)kMaxGridYZ, (int64_t)((size_t(64) << 20) / row_bytes)}));
  DeviceScratch candidates;  // stream-ordered: back to the cache after the launches that read it
  std::string err = candidates.allocate((size_t)chunk * row_bytes, "topK slice candidates");
  if (!err.empty()) return err;
  int32_t* cand = reinterpret_cast<int32_t*>(candidates.get());
  for (int64_t r0 = 0; r0 < p.rows; r0 += chunk) {
    const int64_t rows = std::min<int64_t>(chunk, p.rows - r0);
    LK_LAUNCH(topk_slice_kernel, dim3((unsigned)slices, (unsigned)rows), dim3(kSelectThreads), 0, stream())(p, r0, cand);
    LK_LAUNCH(topk_merge_kernel, dim3((unsigned)rows), dim3(kSelectThreads), 0, stream())(p, r0, cand, slices);
  }
  return std::string();
}

// Score rows the unfused path keeps in its scratch at a time (at least one row): the scratch stays
// bounded whatever nq x Lmax is.
constexpr size_t kScratchBytes = size_t(256) << 20;

}  // namespace

bool indexer_fits(int heads, int dim) { return (int64_t)heads * dim <= kIndexerMaxQ && heads <= kIndexerMaxHeads; }
int topk_capacity() { return kTopKCapacity; }
int indexer_max_elements() { return kIndexerMaxQ; }
int indexer_max_heads() { return kIndexerMaxHeads; }

std::string indexer_scores(const IndexerParams& host) {
  discard_stale_error();
  if (host.nq == 0 || host.max_len == 0) return std::string();
  if (!indexer_fits(host.heads, host.dim)) return "indexer: heads x dim above the CUDA kernel's 8192";
  Uploads up;
  IndexerParams p = host;
  const size_t q_off = up.add(host.q_offsets, (size_t)host.batch + 1), k_off = up.add(host.k_offsets, (size_t)host.batch + 1);
  const std::string err = up.commit("indexerScores offsets upload");
  if (!err.empty()) return err;
  p.q_offsets = up.at<int32_t>(q_off);
  p.k_offsets = up.at<int32_t>(k_off);
  KernelSpan span;
  span.begin();
  const std::string run_err = run_indexer(p, host.q_offsets, 0, p.nq, 0);
  span.end();
  return run_err.empty() ? finish("indexerScores") : run_err;
}

std::string top_k(const TopKParams& host) {
  discard_stale_error();
  if (host.rows == 0) return std::string();
  if (host.k > kTopKCapacity) return "topK: k above the CUDA kernel's 2048";
  Uploads up;
  TopKParams p = host;
  const size_t lengths = up.add(host.lengths, (size_t)host.rows);
  std::string err = up.commit("topK lengths upload");
  if (!err.empty()) return err;
  p.lengths = up.at<int32_t>(lengths);
  KernelSpan span;
  span.begin();
  err = launch_top_k(p);
  span.end();
  if (!err.empty()) return err;
  return finish("topK");
}

std::string sparse_attention(const SparseParams& host) {
  discard_stale_error();
  if (host.nq == 0) return std::string();
  unsigned blocks = 0;
  std::string err = grid_x(host.nq, "sparseAttention", &blocks);
  if (!err.empty()) return err;
  Uploads up;
  SparseParams p = host;
  const size_t q_off = up.add(host.q_offsets, (size_t)host.batch + 1), k_off = up.add(host.k_offsets, (size_t)host.batch + 1);
  const size_t indices = up.add(host.indices, (size_t)host.nq * (size_t)host.top_k);
  err = up.commit("sparseAttention offsets / indices upload");
  if (!err.empty()) return err;
  p.q_offsets = up.at<int32_t>(q_off);
  p.k_offsets = up.at<int32_t>(k_off);
  p.indices = up.at<int32_t>(indices);
  KernelSpan span;
  span.begin();
  by_dtype<LaunchSparse>(p.dtype, p);
  span.end();
  return finish("sparseAttention");
}

std::string issue_indexed_cross_attention(const IndexerParams& ihost, const TopKParams& thost, const SparseParams& shost) {
  if (ihost.nq == 0) return std::string();
  unsigned blocks = 0;
  std::string err = grid_x(ihost.nq, "indexedCrossAttention", &blocks);
  if (!err.empty()) return err;
  Uploads up;
  IndexerParams ip = ihost;
  SparseParams sp = shost;
  TopKParams tp = thost;
  const size_t q_off = up.add(ihost.q_offsets, (size_t)ihost.batch + 1), k_off = up.add(ihost.k_offsets, (size_t)ihost.batch + 1);
  err = up.commit("indexedCrossAttention offsets upload");
  if (!err.empty()) return err;
  ip.q_offsets = sp.q_offsets = up.at<int32_t>(q_off);
  ip.k_offsets = sp.k_offsets = up.at<int32_t>(k_off);
  {
    KernelSpan span;
    span.begin();
    std::string tc_err;
    const bool launched = launch_tc_fused(ip, tp, sp, ihost.q_offsets, &tc_err);
    span.end();
    if (launched) return tc_err;
  }
  if (tp.k <= kFusedMaxK && (int64_t)ip.heads * ip.dim <= kFusedMaxQ && fused_fits(ip.dtype, ip.max_len)) {
    KernelSpan span;
    span.begin();
    by_dtype<LaunchFused>(ip.dtype, ip, tp, sp);
    span.end();
    return std::string();
  }
  // Unfused fallback: score rows go through a bounded global scratch, a chunk of queries at a time
  // (indexer, then top-k of the chunk), then one sparse attention launch over every query.
  if (!indexer_fits(ip.heads, ip.dim)) return "indexer: heads x dim above the CUDA kernel's 8192";
  if (tp.k > kTopKCapacity) return "topK: k above the CUDA kernel's 2048";
  const size_t row_bytes = (size_t)(ip.max_len > 0 ? ip.max_len : 1) * sizeof(float);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(ip.nq, (int64_t)(kScratchBytes / row_bytes)));
  DeviceScratch score_rows;  // from the caching allocator; back to the cache stream-ordered
  err = score_rows.allocate((size_t)chunk * row_bytes, "indexedCrossAttention score scratch");
  if (!err.empty()) return err;
  float* scratch = reinterpret_cast<float*>(score_rows.get());
  ip.scores = scratch;
  KernelSpan span;
  span.begin();
  for (int64_t c0 = 0; c0 < ip.nq; c0 += chunk) {
    const int64_t rows = std::min<int64_t>(chunk, ip.nq - c0);
    if (ip.max_len > 0) err = run_indexer(ip, ihost.q_offsets, c0, c0 + rows, c0);
    if (!err.empty()) return err;
    TopKParams part = tp;
    part.scores = scratch;
    part.cols = ip.max_len;
    part.rows = rows;
    part.indices = tp.indices + c0 * tp.k;
    part.values = tp.values + c0 * tp.k;
    // Row r only considers its own sequence's keys; the -Infinity tail is never selected anyway.
    part.lengths = nullptr;
    err = launch_top_k(part);
    if (!err.empty()) return err;
  }
  sp.indices = tp.indices;
  by_dtype<LaunchSparse>(sp.dtype, sp);
  span.end();
  return std::string();
}

std::string indexed_cross_attention(const IndexerParams& ihost, const TopKParams& thost, const SparseParams& shost) {
  discard_stale_error();
  const std::string err = issue_indexed_cross_attention(ihost, thost, shost);
  return err.empty() ? finish("indexedCrossAttention") : err;
}

}  // namespace lk::cuda
