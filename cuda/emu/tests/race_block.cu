// A missing __syncthreads: every thread writes its slot of a shared array, then reads its lower
// neighbour's slot. The consumer has the higher thread index, so an emulator running threads in
// index order and switching only at barriers always shows the written value: without race
// detection the bug is invisible (under LK_EMU_SEED the drawn order exposes it as NaN reads).
//   bad-static   static __shared__ array, no barrier between the write and the read
//   bad-dynamic  the same in dynamic shared memory
//   bad-atomic   atomicAdd into a shared counter, then a plain read of it with no barrier
//   good         a __syncthreads between write and read (and a barrier after the atomics)
#include "verify.h"

__global__ void neighbour_static(const float* in, float* out, bool barrier) {
  __shared__ float slots[128];
  const int t = threadIdx.x;
  slots[t] = in[blockIdx.x * blockDim.x + t];
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = t > 0 ? slots[t - 1] : 0.0f;
}

__global__ void neighbour_dynamic(const float* in, float* out, bool barrier) {
  LK_DYNAMIC_SHARED(float, slots);
  const int t = threadIdx.x;
  slots[t] = in[blockIdx.x * blockDim.x + t];
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = t > 0 ? slots[t - 1] : 0.0f;
}

__global__ void count_kernel(int* out, bool barrier) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  atomicAdd(&count, 1);
  if (barrier) __syncthreads();
  if (threadIdx.x == blockDim.x - 1) out[blockIdx.x] = count;
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-static | bad-dynamic | bad-atomic | good");
  const int blocks = 3, threads = 128, n = blocks * threads;
  float host_in[n], host_out[n];
  for (int i = 0; i < n; ++i) host_in[i] = (float)(i + 1);
  float *in, *out;
  int* counts;
  VERIFY_CUDA(cudaMalloc(&in, n * sizeof(float)));
  VERIFY_CUDA(cudaMalloc(&out, n * sizeof(float)));
  VERIFY_CUDA(cudaMalloc(&counts, blocks * sizeof(int)));
  VERIFY_CUDA(cudaMemcpy(in, host_in, sizeof host_in, cudaMemcpyHostToDevice));
  const bool good = c == "good";
  if (c == "bad-static" || good) LK_LAUNCH(neighbour_static, blocks, threads, 0, 0)(in, out, good);
  else if (c == "bad-dynamic") LK_LAUNCH(neighbour_dynamic, blocks, threads, threads * sizeof(float), 0)(in, out, false);
  else if (c == "bad-atomic") LK_LAUNCH(count_kernel, blocks, threads, 0, 0)(counts, false);
  else verify_unknown(c);
  if (good) LK_LAUNCH(count_kernel, blocks, threads, 0, 0)(counts, true);
  VERIFY_CUDA(cudaGetLastError());
  VERIFY_CUDA(cudaDeviceSynchronize());
  if (c != "bad-atomic") {
    VERIFY_CUDA(cudaMemcpy(host_out, out, sizeof host_out, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) {
      const float want = i % threads ? host_in[i - 1] : 0.0f;
      VERIFY(host_out[i] == want, "out[%d] = %g, expected %g", i, host_out[i], want);
    }
  }
  if (good || c == "bad-atomic") {
    int host_counts[blocks];
    VERIFY_CUDA(cudaMemcpy(host_counts, counts, sizeof host_counts, cudaMemcpyDeviceToHost));
    for (int b = 0; b < blocks; ++b) VERIFY(host_counts[b] == threads, "count[%d] = %d", b, host_counts[b]);
  }
  std::printf("ok\n");
  return 0;
}
