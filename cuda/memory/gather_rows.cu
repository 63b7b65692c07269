// Host side of the MemoryBank row gather on CUDA: uploads the plan, one launch for the whole call.
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "gather_rows_kernel.cuh"

namespace lk::cuda {

std::string gather_rows(const GatherParams& host) {
  if (host.rows == 0) return std::string();
  const size_t n = (size_t)host.rows;
  const size_t sel_at = 0, src_at = (n + 255) / 256 * 256, dst_at = src_at + n * 4, alpha_at = dst_at + n * 4;
  const size_t bytes = alpha_at + (host.alpha ? n * 4 : 0);
  std::vector<unsigned char> staging(bytes);
  std::memcpy(staging.data() + sel_at, host.src_sel, n);
  std::memcpy(staging.data() + src_at, host.src_row, n * 4);
  std::memcpy(staging.data() + dst_at, host.dst_row, n * 4);
  if (host.alpha) std::memcpy(staging.data() + alpha_at, host.alpha, n * 4);

  unsigned char* dev = nullptr;
  cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&dev), bytes);
  if (err != cudaSuccess) return std::string("cudaMalloc(gather plan): ") + cudaGetErrorString(err);
  err = cudaMemcpy(dev, staging.data(), bytes, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    GatherParams p = host;
    p.src_sel = dev + sel_at;
    p.src_row = reinterpret_cast<const int32_t*>(dev + src_at);
    p.dst_row = reinterpret_cast<const int32_t*>(dev + dst_at);
    p.alpha = host.alpha ? reinterpret_cast<const float*>(dev + alpha_at) : nullptr;
    const dim3 grid((unsigned)n), block(host.width >= 256 ? 256 : 64);
    switch (host.dtype) {
      case kFloat16: { auto* k = gather_rows_kernel<__half>; LK_LAUNCH(k, grid, block, 0, 0)(p); break; }
      case kBFloat16: { auto* k = gather_rows_kernel<__nv_bfloat16>; LK_LAUNCH(k, grid, block, 0, 0)(p); break; }
      default: { auto* k = gather_rows_kernel<float>; LK_LAUNCH(k, grid, block, 0, 0)(p); break; }
    }
    err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
  }
  cudaFree(dev);
  return err == cudaSuccess ? std::string() : std::string("memory bank gather: ") + cudaGetErrorString(err);
}

}  // namespace lk::cuda
