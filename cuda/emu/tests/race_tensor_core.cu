// Races through the tensor-core primitives: cp.async writes and ldmatrix reads shared memory on a
// thread's behalf, and the race detector must see those accesses as the thread's own. 64 threads;
// each copies one 16-byte chunk of a 64-row x 8-element (16-bit) tile into shared memory, then the
// two warps read the tile with ldmatrix (each warp 32 rows).
//   bad-wait-no-barrier  cp_async_wait, but no __syncthreads before other threads' chunks are read
//   bad-overwrite        the tile is read by ldmatrix, then refilled by cp.async with no barrier
//                        between (the double-buffering bug: a stage overwritten while still read)
//   bad-ldmatrix         chunks stored with plain stores, read by another warp's ldmatrix, no barrier
//   good                 a __syncthreads after each wait and before each refill
#include "verify.h"
#include "common/mma.cuh"

constexpr int kRows = 64;

// Row r of the tile, as ldmatrix x4 delivers it: lane l of a warp reads row (warp * 32 + l) into
// matrix l / 8; the test only sums the 16-bit values each lane received.
__device__ unsigned sum_fragment(const uint32_t (&r)[4]) {
  unsigned s = 0;
  for (int i = 0; i < 4; ++i) s += (r[i] & 0xffffu) + (r[i] >> 16);
  return s;
}

__global__ void tile_kernel(const uint16_t* src, unsigned* out, int mode) {
  alignas(16) __shared__ uint16_t tile[kRows * 8];
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  // Each thread's chunk is row (t + 32) % 64: a warp's ldmatrix reads rows the other warp copied.
  const int row = (t + 32) % kRows;
  if (mode == 2) {
    for (int e = 0; e < 8; ++e) tile[row * 8 + e] = src[row * 8 + e];
  } else {
    lk::cuda::cp_async_16(&tile[row * 8], &src[row * 8]);
    lk::cuda::cp_async_commit();
    lk::cuda::cp_async_wait<0>();
  }
  if (mode == 3 || mode == 1) __syncthreads();
  uint32_t r[4];
  lk::cuda::ldmatrix_x4(r, &tile[(warp * 32 + lane) * 8]);
  unsigned s = sum_fragment(r);
  if (mode == 1 || mode == 3) {
    if (mode == 3) __syncthreads();  // every warp has read the tile before it is refilled
    lk::cuda::cp_async_16(&tile[row * 8], &src[kRows * 8 + row * 8]);
    lk::cuda::cp_async_commit();
    lk::cuda::cp_async_wait<0>();
    __syncthreads();
    lk::cuda::ldmatrix_x4(r, &tile[(warp * 32 + lane) * 8]);
    s += sum_fragment(r);
  }
  out[t] = s;
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-wait-no-barrier | bad-overwrite | bad-ldmatrix | good");
  const int mode = c == "bad-wait-no-barrier" ? 0 : c == "bad-overwrite" ? 1 : c == "bad-ldmatrix" ? 2 : c == "good" ? 3 : -1;
  if (mode < 0) verify_unknown(c);
  uint16_t host_src[2 * kRows * 8];
  for (int i = 0; i < 2 * kRows * 8; ++i) host_src[i] = (uint16_t)(i % 97 + 1);
  uint16_t* src;
  unsigned* out;
  VERIFY_CUDA(cudaMalloc(&src, sizeof host_src));
  VERIFY_CUDA(cudaMalloc(&out, 64 * sizeof(unsigned)));
  VERIFY_CUDA(cudaMemcpy(src, host_src, sizeof host_src, cudaMemcpyHostToDevice));
  LK_LAUNCH(tile_kernel, 1, 64, 0, 0)(src, out, mode);
  VERIFY_CUDA(cudaGetLastError());
  VERIFY_CUDA(cudaDeviceSynchronize());
  unsigned host[64];
  VERIFY_CUDA(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
  // ldmatrix x4: lane l supplies row l of the warp's 32 rows; each lane receives two 16-bit values
  // of each of the 4 matrices. Summed over the warp, every element of the warp's rows appears once.
  for (int w = 0; w < 2; ++w) {
    unsigned got = 0, want = 0;
    for (int l = 0; l < 32; ++l) got += host[w * 32 + l];
    for (int pass = 0; pass < (mode == 0 || mode == 2 ? 1 : 2); ++pass)
      for (int e = 0; e < 32 * 8; ++e) want += host_src[pass * kRows * 8 + w * 32 * 8 + e];
    VERIFY(got == want, "warp %d sums %u, expected %u", w, got, want);
  }
  cudaFree(src);
  cudaFree(out);
  std::printf("ok\n");
  return 0;
}
