// cudaMalloc gives exactly the bytes asked: a kernel writing one element past a device buffer is a
// heap-buffer-overflow under AddressSanitizer (this test is built with -fsanitize=address).
//   bad-kernel  a kernel's loop bound is off by one: it writes n + 1 floats into a buffer of n
//   bad-read    a kernel reads one element past its input
//   good        the same kernels with the right bounds
#include "verify.h"

__global__ void fill_kernel(float* out, int n, int extra) {
  for (int i = threadIdx.x; i < n + extra; i += blockDim.x) out[i] = (float)i;
}

__global__ void shift_kernel(const float* in, float* out, int n, int extra) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = in[i + extra];
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-kernel | bad-read | good");
  const int n = 37;  // not a multiple of any allocation granularity
  float *a, *b;
  VERIFY_CUDA(cudaMalloc(&a, n * sizeof(float)));
  VERIFY_CUDA(cudaMalloc(&b, n * sizeof(float)));
  VERIFY((reinterpret_cast<uintptr_t>(a) & 255) == 0, "cudaMalloc is 256-byte aligned");
  if (c == "bad-kernel" || c == "good") LK_LAUNCH(fill_kernel, 1, 32, 0, 0)(a, n, c == "good" ? 0 : 1);
  else if (c == "bad-read") LK_LAUNCH(fill_kernel, 1, 32, 0, 0)(a, n, 0);
  else verify_unknown(c);
  LK_LAUNCH(shift_kernel, 1, 32, 0, 0)(a, b, n, c == "bad-read" ? 1 : 0);
  VERIFY_CUDA(cudaGetLastError());
  VERIFY_CUDA(cudaDeviceSynchronize());
  float host[n];
  VERIFY_CUDA(cudaMemcpy(host, b, sizeof host, cudaMemcpyDeviceToHost));
  for (int i = 0; i < n; ++i) VERIFY(host[i] == (float)i, "b[%d] = %g", i, host[i]);
  VERIFY_CUDA(cudaFree(a));
  VERIFY_CUDA(cudaFree(b));
  std::printf("ok\n");
  return 0;
}
