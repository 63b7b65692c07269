// Host side of multiStreamAttention on CUDA (SPEC §12): every stream's uploads first, then every
// stream's kernels and the merge queued back to back on the device, then one synchronization. The
// host never waits between the streams.
#include <algorithm>
#include <string>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "merge_streams_kernel.cuh"
#include "staged_ops.h"

namespace lk::cuda {
namespace {

constexpr int kMergeThreads = 256;
constexpr int64_t kMergeMaxBlocks = 65536;  // a grid-stride loop covers the rest

template <typename T>
void launch_merge(const MergeParams& p, unsigned blocks) {
  auto* k = merge_streams_kernel<T>;
  LK_LAUNCH(k, dim3(blocks), dim3(kMergeThreads), 0, 0)(p);
}

}  // namespace

std::string multi_stream_attention(const StreamCall* calls, int n, const MergeParams& merge) {
  discard_stale_error();
  if (n < 1 || n > kMaxStreams || merge.streams != n) return "multiStreamAttention: expected 1 to 3 streams";
  DeviceScratch scratch;  // freed after the synchronization below
  Launches launches[kMaxStreams];
  std::string err;
  for (int s = 0; s < n && err.empty(); ++s)
    err = calls[s].indexed ? stage_indexed_cross_attention(calls[s].indexer, calls[s].top_k, calls[s].sparse, &scratch, &launches[s])
                           : stage_masked_attention(calls[s].dense, &scratch, &launches[s]);
  if (!err.empty()) return err;
  const int64_t elements = merge.rows * merge.value_dim;
  KernelSpan span;
  span.begin();
  // An op stages no launch only when it has no query row: then the merge has no row either.
  for (int s = 0; s < n; ++s)
    if (launches[s]) launches[s]();
  if (elements > 0) {
    const unsigned blocks = (unsigned)std::min<int64_t>(kMergeMaxBlocks, (elements + kMergeThreads - 1) / kMergeThreads);
    switch (merge.dtype) {
      case kFloat16: launch_merge<__half>(merge, blocks); break;
      case kBFloat16: launch_merge<__nv_bfloat16>(merge, blocks); break;
      default: launch_merge<float>(merge, blocks); break;
    }
  }
  span.end();
  err = check(cudaGetLastError(), "multiStreamAttention launch");
  if (err.empty()) err = check(cudaDeviceSynchronize(), "multiStreamAttention");
  return err;
}

}  // namespace lk::cuda
