// Launches CUDA refuses are refused, at launch time (cudaGetLastError right after the launch).
//   bad-grid-y        grid.y = 65,536
//   bad-grid-z        grid.z = 65,536
//   bad-threads       1,025 threads per block
//   bad-block-z       blockDim.z = 65
//   bad-static        a kernel with 49,152 + 4 bytes of static __shared__ variables
//   bad-dynamic       64 KiB of dynamic shared memory without cudaFuncSetAttribute
//   bad-attribute     cudaFuncSetAttribute above the device's 227 KiB opt-in limit
//   good              the largest launches CUDA accepts: grid.y = 65,535, 1,024 threads, 48 KiB
//                     static, 64 KiB dynamic after raising the kernel's attribute
#include "verify.h"

// Counts the grid's last thread (one per launch).
__global__ void tiny_kernel(int* out) {
  if (threadIdx.x == blockDim.x - 1 && threadIdx.z == blockDim.z - 1 && blockIdx.x == gridDim.x - 1 &&
      blockIdx.y == gridDim.y - 1 && blockIdx.z == gridDim.z - 1)
    atomicAdd(out, 1);
}

__global__ void static_48k_kernel(int* out) {
  __shared__ float a[8192];
  __shared__ float b[4096];  // 49,152 bytes in all: the limit
  a[threadIdx.x] = 1.0f;
  b[threadIdx.x] = 2.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = (int)(a[0] + b[0]);
}

__global__ void static_over_kernel(int* out) {
  __shared__ float a[8192];
  __shared__ float b[4096];
  __shared__ int one_more;  // 49,156 bytes
  a[threadIdx.x] = 1.0f;
  b[threadIdx.x] = 2.0f;
  one_more = 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = (int)(a[0] + b[0]) + one_more;
}

__global__ void dynamic_kernel(int* out, int n) {
  LK_DYNAMIC_SHARED(int, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buf[n - 1];
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-grid-y | bad-grid-z | bad-threads | bad-block-z | bad-static | bad-dynamic | bad-attribute | good");
  int* out;
  VERIFY_CUDA(cudaMalloc(&out, 2 * sizeof(int)));
  VERIFY_CUDA(cudaMemset(out, 0, 2 * sizeof(int)));
  const int dyn = 64 * 1024;
  if (c == "bad-grid-y") LK_LAUNCH(tiny_kernel, dim3(1, 65536), 32, 0, 0)(out);
  else if (c == "bad-grid-z") LK_LAUNCH(tiny_kernel, dim3(1, 1, 65536), 32, 0, 0)(out);
  else if (c == "bad-threads") LK_LAUNCH(tiny_kernel, 1, 1025, 0, 0)(out);
  else if (c == "bad-block-z") LK_LAUNCH(tiny_kernel, 1, dim3(1, 1, 65), 0, 0)(out);
  else if (c == "bad-static") LK_LAUNCH(static_over_kernel, 1, 32, 0, 0)(out);
  else if (c == "bad-dynamic") LK_LAUNCH(dynamic_kernel, 1, 128, dyn, 0)(out, dyn / 4);
  else if (c == "bad-attribute") VERIFY_CUDA(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024));
  else if (c == "good") {
    LK_LAUNCH(tiny_kernel, dim3(1, 65535), 1, 0, 0)(out);
    VERIFY_CUDA(cudaGetLastError());
    LK_LAUNCH(tiny_kernel, dim3(1, 1, 2), 1024, 0, 0)(out);
    VERIFY_CUDA(cudaGetLastError());
    VERIFY_CUDA(cudaDeviceSynchronize());
    int host[2];
    VERIFY_CUDA(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
    VERIFY(host[0] == 2, "the largest grid and block ran once each: %d", host[0]);
    LK_LAUNCH(static_48k_kernel, 1, 32, 0, 0)(out);
    VERIFY_CUDA(cudaGetLastError());
    VERIFY_CUDA(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn));
    LK_LAUNCH(dynamic_kernel, 1, 128, dyn, 0)(out + 1, dyn / 4);
  } else {
    verify_unknown(c);
  }
  VERIFY_CUDA(cudaGetLastError());
  VERIFY_CUDA(cudaDeviceSynchronize());
  int host[2];
  VERIFY_CUDA(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
  VERIFY(host[0] == 3 && host[1] == dyn / 4 - 1, "results %d %d", host[0], host[1]);
  std::printf("ok\n");
  return 0;
}
