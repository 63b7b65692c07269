// Host side of the MemoryBank row gather on CUDA: uploads the plan through the runtime's pinned
// staging (cuda/runtime.h), one launch for the whole call
// (several only past 2^31 - 1 rows, grid.x's limit: each launch then takes its slice of the plan).
// Every failure clears the thread's last error (common/host_check.cuh).
#include <algorithm>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../runtime.h"
#include "gather_rows_kernel.cuh"

namespace lk::cuda {

std::string gather_rows(const GatherParams& host) {
  discard_stale_error();
  if (host.rows <= 0) return std::string();
  const size_t n = (size_t)host.rows;
  Upload plan;  // one pinned staging buffer, one async copy, one device block from the cache
  const size_t sel_at = plan.add(host.src_sel, n);
  const size_t src_at = plan.add(host.src_row, n * 4), dst_at = plan.add(host.dst_row, n * 4);
  const size_t alpha_at = host.alpha ? plan.add(host.alpha, n * 4) : 0;
  std::string err = plan.commit("memory bank gather plan upload");
  unsigned char* dev = plan.device();
  if (err.empty()) {
    // 16-byte vectors when every row is whole 16-byte chunks at 16-byte aligned bases.
    const size_t elem = host.dtype == kFloat32 ? 4 : 2;
    bool vector = (host.width * (int64_t)elem) % 16 == 0 && (reinterpret_cast<uintptr_t>(host.dst) & 15u) == 0;
    for (const void* s : host.sources) vector = vector && (reinterpret_cast<uintptr_t>(s) & 15u) == 0;
    KernelSpan span;
    span.begin();
    for (int64_t r0 = 0; r0 < host.rows; r0 += kMaxGridX) {
      GatherParams p = host;
      p.rows = std::min<int64_t>(kMaxGridX, host.rows - r0);
      p.src_sel = dev + sel_at + r0;
      p.src_row = reinterpret_cast<const int32_t*>(dev + src_at) + r0;
      p.dst_row = reinterpret_cast<const int32_t*>(dev + dst_at) + r0;
      p.alpha = host.alpha ? reinterpret_cast<const float*>(dev + alpha_at) + r0 : nullptr;
      const dim3 grid((unsigned)((p.rows + kGatherRowsPerBlock - 1) / kGatherRowsPerBlock)), block(kGatherThreads);
      switch (host.dtype) {
        case kFloat16: {
          auto* k = vector ? gather_rows_kernel<__half, true> : gather_rows_kernel<__half, false>;
          LK_LAUNCH(k, grid, block, 0, stream())(p);
          break;
        }
        case kBFloat16: {
          auto* k = vector ? gather_rows_kernel<__nv_bfloat16, true> : gather_rows_kernel<__nv_bfloat16, false>;
          LK_LAUNCH(k, grid, block, 0, stream())(p);
          break;
        }
        default: {
          auto* k = vector ? gather_rows_kernel<float, true> : gather_rows_kernel<float, false>;
          LK_LAUNCH(k, grid, block, 0, stream())(p);
          break;
        }
      }
    }
    span.end();
    err = finish("memory bank gather");
  }
  return err;
}

}  // namespace lk::cuda
