// sparseAttentionBackward and indexerScoresBackward on CUDA (SPEC §9), scalar FP32. Both scatter
// into rows that many queries share (a key selected by several queries, or twice by one; a key every
// query of the entry scores), so they accumulate with float atomics into a zeroed float32 workspace
// and convert it to the gradients' dtype at the end: one thread per (query, head, selected slot) or
// per (query, key) pair. Summation order is therefore not fixed (results may differ in the last
// bits between runs); the masked-attention backward, whose rows are owned by tiles, is deterministic.
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../attention/element.cuh"
#include "../backend.h"
#include "../common/backward_params.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../common/tile_plan.h"
#include "../kernel_timing.h"
#include "../runtime.h"

namespace lk::cuda {
namespace {

template <typename T>
__global__ void sparse_backward_kernel(SparseBackwardParams p, int64_t total, float* dq, float* dk, float* dv) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const SparseParams& f = p.fwd;
  const int H = f.heads, Hkv = f.kv_heads, D = f.head_dim, Dv = f.value_dim, K = f.top_k;
  const int64_t i = idx / ((int64_t)H * K);
  const int h = (int)((idx / K) % H), x = (int)(idx % K);
  const int32_t j = f.indices[i * K + x];
  if (j < 0) return;
  const int b = sequence_of(f.q_offsets, f.batch, i);
  const int64_t key = (int64_t)f.k_offsets[b] + j;
  const int g = h / (H / Hkv);
  const T* qrow = static_cast<const T*>(f.q) + (i * H + h) * D;
  const T* krow = static_cast<const T*>(f.k) + (key * Hkv + g) * D;
  const T* vrow = static_cast<const T*>(f.v) + (key * Hkv + g) * Dv;
  const T* orow = static_cast<const T*>(f.out) + (i * H + h) * Dv;
  const T* drow = static_cast<const T*>(p.d_out) + (i * H + h) * Dv;
  float s = 0.0f, dp = 0.0f, delta = 0.0f;
  for (int d = 0; d < D; ++d) s += to_float(qrow[d]) * to_float(krow[d]);
  for (int d = 0; d < Dv; ++d) {
    const float go = to_float(drow[d]);
    dp += go * to_float(vrow[d]);
    delta += go * to_float(orow[d]);
  }
  const float weight = softmax_weight(f.scale * s, f.lse[i * H + h]);
  const float ds = f.scale * softmax_dscore(weight, dp, delta);
  for (int d = 0; d < D; ++d) {
    atomicAdd(&dq[(i * H + h) * D + d], ds * to_float(krow[d]));
    atomicAdd(&dk[(key * Hkv + g) * D + d], ds * to_float(qrow[d]));
  }
  for (int d = 0; d < Dv; ++d) atomicAdd(&dv[(key * Hkv + g) * Dv + d], weight * to_float(drow[d]));
}

template <typename T>
__global__ void indexer_backward_kernel(IndexerBackwardParams p, int64_t total, float* dq, float* dk, float* dw) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const IndexerParams& f = p.fwd;
  const int Hi = f.heads, Di = f.dim;
  const int64_t i = idx / f.max_len;
  const int j = (int)(idx % f.max_len);
  const int b = sequence_of(f.q_offsets, f.batch, i);
  if (j >= f.k_offsets[b + 1] - f.k_offsets[b]) return;  // past the row's keys: ignored
  const int64_t key = (int64_t)f.k_offsets[b] + j;
  const float grad = p.d_scores[idx];
  const T* krow = static_cast<const T*>(f.k) + key * Di;
  for (int h = 0; h < Hi; ++h) {
    const T* qrow = static_cast<const T*>(f.q) + (i * Hi + h) * Di;
    float a = 0.0f;
    for (int d = 0; d < Di; ++d) a += to_float(qrow[d]) * to_float(krow[d]);
    if (!(a > 0.0f)) continue;  // relu'(a) = 0 for a <= 0 (and NaN)
    atomicAdd(&dw[i * Hi + h], grad * a);
    const float da = grad * to_float(static_cast<const T*>(f.w)[i * Hi + h]);
    for (int d = 0; d < Di; ++d) {
      atomicAdd(&dq[(i * Hi + h) * Di + d], da * to_float(krow[d]));
      atomicAdd(&dk[key * Di + d], da * to_float(qrow[d]));
    }
  }
}

template <typename T>
__global__ void narrow_kernel(const float* src, int64_t count, T* dst) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx < count) dst[idx] = from_float<T>(src[idx]);
}

constexpr int kThreads = 128;

// Converts the three workspaces into the gradients' dtype.
template <typename T>
void narrow_all(const float* const src[3], const int64_t count[3], void* const dst[3]) {
  for (int n = 0; n < 3; ++n) {
    if (count[n] == 0) continue;
    auto* kernel = narrow_kernel<T>;
    LK_LAUNCH(kernel, dim3((unsigned)((count[n] + kThreads - 1) / kThreads)), dim3(kThreads), 0, stream())(src[n], count[n], static_cast<T*>(dst[n]));
  }
}

template <typename Fn>
void by_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat16: fn(__half()); break;
    case kBFloat16: fn(__nv_bfloat16()); break;
    default: fn(float()); break;
  }
}

// Uploads `arrays` (runtime.h staging) into one cached device block that also holds three float32
// workspaces of `ws` elements, zeroed on the stream; returns their device addresses (arrays first).
std::string prepare(Upload* up, const std::vector<std::pair<const void*, size_t>>& arrays, const int64_t ws[3],
                    std::vector<void*>* uploaded, float* work[3]) {
  std::vector<size_t> offsets;
  for (const auto& a : arrays) offsets.push_back(up->add(a.first, a.second));
  size_t ws_at[3];
  for (int n = 0; n < 3; ++n) ws_at[n] = up->room((size_t)ws[n] * sizeof(float));
  std::string err = up->commit("backward upload");
  const size_t end = ws_at[2] + (size_t)ws[2] * sizeof(float);
  if (err.empty() && end > ws_at[0])
    err = check(cudaMemsetAsync(up->device() + ws_at[0], 0, end - ws_at[0], stream()), "cudaMemsetAsync(backward workspace)");
  if (!err.empty()) return err;
  for (size_t n = 0; n < arrays.size(); ++n) uploaded->push_back(up->device() + offsets[n]);
  for (int n = 0; n < 3; ++n) work[n] = reinterpret_cast<float*>(up->device() + ws_at[n]);
  return err;
}

// The grids of a backward op: ceil(total / kThreads) accumulation blocks and the three conversion
// launches of counts[n] elements, each within grid.x's limit or an error naming `op`.
std::string backward_grids(int64_t total, const int64_t counts[3], const char* op, unsigned* blocks) {
  std::string err = grid_x((total + kThreads - 1) / kThreads, op, blocks);
  for (int n = 0; n < 3 && err.empty(); ++n) {
    unsigned narrow_blocks = 0;
    err = grid_x((counts[n] + kThreads - 1) / kThreads, op, &narrow_blocks);
  }
  return err;
}

// The float32 accumulation (launch(T{}) for the tensors' element type, when it has blocks), then
// its three workspaces narrowed into dst, timed as one op.
template <typename Launch>
std::string accumulate_and_narrow(DType dtype, unsigned blocks, float* const work[3], const int64_t counts[3], void* const dst[3],
                                  const char* op, Launch launch) {
  KernelSpan span;
  span.begin();
  const float* const src[3] = {work[0], work[1], work[2]};
  by_dtype(dtype, [&](auto tag) {
    if (blocks > 0) launch(tag);
    narrow_all<decltype(tag)>(src, counts, dst);
  });
  span.end();
  return finish(op);
}

}  // namespace

std::string sparse_attention_backward(const SparseBackwardParams& host) {
  discard_stale_error();
  const SparseParams& f = host.fwd;
  const int64_t counts[3] = {f.nq * f.heads * f.head_dim, f.tk * f.kv_heads * f.head_dim, f.tk * f.kv_heads * f.value_dim};
  if (counts[0] + counts[1] + counts[2] == 0) return std::string();
  const int64_t total = f.nq * f.heads * f.top_k;
  unsigned blocks = 0;
  std::string err = backward_grids(total, counts, "sparseAttentionBackward", &blocks);
  if (!err.empty()) return err;
  Upload block;
  std::vector<void*> dev;
  float* work[3];
  err = prepare(&block, {{f.q_offsets, ((size_t)f.batch + 1) * 4}, {f.k_offsets, ((size_t)f.batch + 1) * 4}, {f.indices, (size_t)(f.nq * f.top_k) * 4}},
                counts, &dev, work);
  if (!err.empty()) return err;
  SparseBackwardParams p = host;
  p.fwd.q_offsets = static_cast<const int32_t*>(dev[0]);
  p.fwd.k_offsets = static_cast<const int32_t*>(dev[1]);
  p.fwd.indices = static_cast<const int32_t*>(dev[2]);
  void* const dst[3] = {p.dq, p.dk, p.dv};
  // the block goes back to the cache, stream-ordered
  return accumulate_and_narrow(f.dtype, blocks, work, counts, dst, "sparseAttentionBackward", [&](auto tag) {
    auto* kernel = sparse_backward_kernel<decltype(tag)>;
    LK_LAUNCH(kernel, dim3(blocks), dim3(kThreads), 0, stream())(p, total, work[0], work[1], work[2]);
  });
}

std::string indexer_scores_backward(const IndexerBackwardParams& host) {
  discard_stale_error();
  const IndexerParams& f = host.fwd;
  const int64_t counts[3] = {f.nq * f.heads * f.dim, f.tk * f.dim, f.nq * f.heads};
  if (counts[0] + counts[1] + counts[2] == 0) return std::string();
  const int64_t total = f.nq * f.max_len;
  unsigned blocks = 0;
  std::string err = backward_grids(total, counts, "indexerScoresBackward", &blocks);
  if (!err.empty()) return err;
  Upload block;
  std::vector<void*> dev;
  float* work[3];
  err = prepare(&block, {{f.q_offsets, ((size_t)f.batch + 1) * 4}, {f.k_offsets, ((size_t)f.batch + 1) * 4}}, counts, &dev, work);
  if (!err.empty()) return err;
  IndexerBackwardParams p = host;
  p.fwd.q_offsets = static_cast<const int32_t*>(dev[0]);
  p.fwd.k_offsets = static_cast<const int32_t*>(dev[1]);
  void* const dst[3] = {p.dq, p.dk, p.dw};
  return accumulate_and_narrow(f.dtype, blocks, work, counts, dst, "indexerScoresBackward", [&](auto tag) {
    auto* kernel = indexer_backward_kernel<decltype(tag)>;
    LK_LAUNCH(kernel, dim3(blocks), dim3(kThreads), 0, stream())(p, total, work[0], work[1], work[2]);
  });
}

}  // namespace lk::cuda
