// Host side of the sparse attention ops on CUDA: uploads offsets / indices, launches one kernel per
// op (the fused path when a score row fits shared memory, else indexer -> top-k -> attention).
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "sparse_kernels.cuh"

namespace lk::cuda {
namespace {

std::string check(cudaError_t err, const char* what) {
  return err == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(err);
}

// Device copies of small host arrays, freed together.
class Uploads {
 public:
  ~Uploads() { for (void* p : owned_) cudaFree(p); }
  template <typename T>
  const T* put(const T* host, size_t count, std::string* err) {
    if (!host || !err->empty()) return nullptr;
    void* dev = nullptr;
    *err = check(cudaMalloc(&dev, count * sizeof(T) + 1), "cudaMalloc");
    if (!err->empty()) return nullptr;
    owned_.push_back(dev);
    *err = check(cudaMemcpy(dev, host, count * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    return static_cast<const T*>(dev);
  }
  void* scratch(size_t bytes, std::string* err) {
    void* dev = nullptr;
    if (!err->empty()) return nullptr;
    *err = check(cudaMalloc(&dev, bytes + 1), "cudaMalloc");
    if (err->empty()) owned_.push_back(dev);
    return dev;
  }

 private:
  std::vector<void*> owned_;
};

std::string finish(const char* what) {
  std::string err = check(cudaGetLastError(), what);
  if (err.empty()) err = check(cudaDeviceSynchronize(), what);
  return err;
}

template <template <typename> class Launch, typename... Args>
void by_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case kFloat16: Launch<__half>::run(args...); break;
    case kBFloat16: Launch<__nv_bfloat16>::run(args...); break;
    default: Launch<float>::run(args...); break;
  }
}

template <typename T> struct LaunchIndexer {
  static void run(const IndexerParams& p) {
    auto* k = indexer_kernel<T>;
    const dim3 grid((unsigned)((p.max_len + kIndexerThreads - 1) / kIndexerThreads), (unsigned)p.nq);
    LK_LAUNCH(k, grid, dim3(kIndexerThreads), 0, 0)(p);
  }
};
template <typename T> struct LaunchSparse {
  static void run(const SparseParams& p) {
    auto* k = sparse_attention_kernel<T>;
    LK_LAUNCH(k, dim3((unsigned)p.nq), dim3(kSelectThreads), 0, 0)(p);
  }
};
// Dynamic shared memory of the fused kernel for a batch whose longest row has `max_len` keys.
size_t fused_score_bytes(int max_len) { return (size_t)(max_len > 0 ? max_len : 1) * sizeof(float); }

// Whether the fused kernel takes rows of `max_len` keys on this device: at most kFusedMaxKeys, and
// the score row plus the static part within the device's opt-in shared memory per block (64 KiB
// on sm_75, 99-227 KiB on later parts), so on older parts long rows take the unfused path.
bool fused_fits(int max_len) {
  if (max_len > kFusedMaxKeys) return false;
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return sizeof(FusedShared) + fused_score_bytes(max_len) <= (size_t)optin;
}

template <typename T> struct LaunchFused {
  static void run(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp) {
    auto* k = fused_indexed_attention_kernel<T>;
    const size_t bytes = fused_score_bytes(ip.max_len);
    if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) != cudaSuccess) return;  // reported by finish()
    LK_LAUNCH(k, dim3((unsigned)ip.nq), dim3(kSelectThreads), bytes, 0)(ip, tp, sp);
  }
};

}  // namespace

bool indexer_fits(int heads, int dim) { return heads * dim <= kIndexerMaxQ && heads <= kIndexerMaxHeads; }
int topk_capacity() { return kTopKCapacity; }
int indexer_max_elements() { return kIndexerMaxQ; }
int indexer_max_heads() { return kIndexerMaxHeads; }

std::string indexer_scores(const IndexerParams& host) {
  if (host.nq == 0 || host.max_len == 0) return std::string();
  if (!indexer_fits(host.heads, host.dim)) return "indexer: heads x dim above the CUDA kernel's 8192";
  std::string err;
  Uploads up;
  IndexerParams p = host;
  p.q_offsets = up.put(host.q_offsets, (size_t)host.batch + 1, &err);
  p.k_offsets = up.put(host.k_offsets, (size_t)host.batch + 1, &err);
  if (!err.empty()) return err;
  by_dtype<LaunchIndexer>(p.dtype, p);
  return finish("indexerScores");
}

std::string top_k(const TopKParams& host) {
  if (host.rows == 0) return std::string();
  if (host.k > kTopKCapacity) return "topK: k above the CUDA kernel's 2048";
  std::string err;
  Uploads up;
  TopKParams p = host;
  p.lengths = up.put(host.lengths, (size_t)host.rows, &err);
  if (!err.empty()) return err;
  LK_LAUNCH(topk_kernel, dim3((unsigned)p.rows), dim3(kSelectThreads), 0, 0)(p);
  return finish("topK");
}

std::string sparse_attention(const SparseParams& host) {
  if (host.nq == 0) return std::string();
  std::string err;
  Uploads up;
  SparseParams p = host;
  p.q_offsets = up.put(host.q_offsets, (size_t)host.batch + 1, &err);
  p.k_offsets = up.put(host.k_offsets, (size_t)host.batch + 1, &err);
  p.indices = up.put(host.indices, (size_t)(host.nq * host.top_k), &err);
  if (!err.empty()) return err;
  by_dtype<LaunchSparse>(p.dtype, p);
  return finish("sparseAttention");
}

std::string indexed_cross_attention(const IndexerParams& ihost, const TopKParams& thost, const SparseParams& shost) {
  if (ihost.nq == 0) return std::string();
  std::string err;
  Uploads up;
  IndexerParams ip = ihost;
  SparseParams sp = shost;
  TopKParams tp = thost;
  ip.q_offsets = sp.q_offsets = up.put(ihost.q_offsets, (size_t)ihost.batch + 1, &err);
  ip.k_offsets = sp.k_offsets = up.put(ihost.k_offsets, (size_t)ihost.batch + 1, &err);
  if (!err.empty()) return err;
  if (tp.k <= kFusedMaxK && ip.heads * ip.dim <= kFusedMaxQ && fused_fits(ip.max_len)) {
    by_dtype<LaunchFused>(ip.dtype, ip, tp, sp);
    return finish("indexedCrossAttention");
  }
  // Unfused fallback: the score matrix goes through global memory.
  if (!indexer_fits(ip.heads, ip.dim)) return "indexer: heads x dim above the CUDA kernel's 8192";
  if (tp.k > kTopKCapacity) return "topK: k above the CUDA kernel's 2048";
  ip.scores = static_cast<float*>(up.scratch((size_t)ip.nq * (ip.max_len > 0 ? ip.max_len : 1) * sizeof(float), &err));
  if (!err.empty()) return err;
  if (ip.max_len > 0) by_dtype<LaunchIndexer>(ip.dtype, ip);
  tp.scores = ip.scores;
  tp.cols = ip.max_len;
  // Row r only considers its own sequence's keys; the -Infinity tail is never selected anyway.
  tp.lengths = nullptr;
  LK_LAUNCH(topk_kernel, dim3((unsigned)tp.rows), dim3(kSelectThreads), 0, 0)(tp);
  sp.indices = tp.indices;
  by_dtype<LaunchSparse>(sp.dtype, sp);
  return finish("indexedCrossAttention");
}

}  // namespace lk::cuda
