// Warp-level synchronization: lanes exchange values through shared memory. Lane l reads the slot
// its lower neighbour wrote: in index order the writer always ran first, so only race detection
// (or a drawn order, LK_EMU_SEED) shows the missing synchronization.
//   bad-warp       no __syncwarp between the write and the read
//   bad-crosswarp  a __syncwarp, but lane 0 of warp 1 reads lane 31 of warp 0: only __syncthreads orders that
//   good-syncwarp  a __syncwarp between the write and the read, within each warp
//   good-shuffle   a warp collective (__shfl_xor_sync) between them orders them as well
#include "verify.h"

__host__ __device__ int source_of(int t, bool across_warps) { return (t & 31) > 0 || (across_warps && t > 0) ? t - 1 : t; }

__global__ void neighbour_kernel(int* out, int mode) {
  __shared__ int slots[64];
  const int t = threadIdx.x;
  slots[t] = t * 10;
  int extra = 0;
  if (mode == 1 || mode == 2) __syncwarp();
  if (mode == 3) extra = __shfl_xor_sync(0xffffffffu, t, 1) - (t ^ 1);  // 0: only the ordering matters
  out[t] = slots[source_of(t, mode == 2)] + extra;
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-warp | bad-crosswarp | good-syncwarp | good-shuffle");
  const int mode = c == "bad-warp" ? 0 : c == "good-syncwarp" ? 1 : c == "bad-crosswarp" ? 2 : c == "good-shuffle" ? 3 : -1;
  if (mode < 0) verify_unknown(c);
  int* out;
  VERIFY_CUDA(cudaMalloc(&out, 64 * sizeof(int)));
  LK_LAUNCH(neighbour_kernel, 1, 64, 0, 0)(out, mode);
  VERIFY_CUDA(cudaGetLastError());
  VERIFY_CUDA(cudaDeviceSynchronize());
  int host[64];
  VERIFY_CUDA(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
  for (int t = 0; t < 64; ++t) VERIFY(host[t] == source_of(t, mode == 2) * 10, "out[%d] = %d", t, host[t]);
  std::printf("ok\n");
  return 0;
}
