// Host side of multiStreamAttention on CUDA (SPEC §12): every stream's uploads and kernels, then the
// merge, queued back to back on the device's stream; the op completes once (runtime.h finish). The
// host never waits between the streams.
#include <algorithm>
#include <string>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../runtime.h"
#include "merge_streams_kernel.cuh"
#include "staged_ops.h"

namespace lk::cuda {
namespace {

constexpr int kMergeThreads = 256;
constexpr int64_t kMergeMaxBlocks = 65536;  // a grid-stride loop covers the rest

template <typename T>
void launch_merge(const MergeParams& p, unsigned blocks) {
  auto* k = merge_streams_kernel<T>;
  LK_LAUNCH(k, dim3(blocks), dim3(kMergeThreads), 0, stream())(p);
}

}  // namespace

std::string multi_stream_attention(const StreamCall* calls, int n, const MergeParams& merge) {
  discard_stale_error();
  if (n < 1 || n > kMaxStreams || merge.streams != n) return "multiStreamAttention: expected 1 to 3 streams";
  std::string err;
  // Each stream's uploads and kernels go to the device's stream as it is issued; the merge follows
  // them there. Scratch freed between issues returns to the cache stream-ordered (runtime.h).
  for (int s = 0; s < n && err.empty(); ++s)
    err = calls[s].indexed ? issue_indexed_cross_attention(calls[s].indexer, calls[s].top_k, calls[s].sparse)
                           : issue_masked_attention(calls[s].dense);
  if (!err.empty()) return err;
  const int64_t elements = merge.rows * merge.value_dim;
  if (elements > 0) {
    KernelSpan span;
    span.begin();
    const unsigned blocks = (unsigned)std::min<int64_t>(kMergeMaxBlocks, (elements + kMergeThreads - 1) / kMergeThreads);
    switch (merge.dtype) {
      case kFloat16: launch_merge<__half>(merge, blocks); break;
      case kBFloat16: launch_merge<__nv_bfloat16>(merge, blocks); break;
      default: launch_merge<float>(merge, blocks); break;
    }
    span.end();
  }
  return finish("multiStreamAttention");
}

}  // namespace lk::cuda
