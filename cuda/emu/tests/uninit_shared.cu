// Never-written shared memory reads as 0xff bytes (NaN floats) in every block, static and dynamic,
// so a kernel that forgets to initialise it computes NaN, not a plausible value left by the
// previous block.
//   bad-static   a static __shared__ accumulator never zeroed: the sum is NaN
//   bad-aligned  an alignas(16) __shared__ float4-style tile, one lane never written
//   bad-carry    block b reads the value block b - 1 left in a __shared__ variable
//   bad-dynamic  a dynamic shared buffer read before it is written
//   good         every one of them initialised first
#include "verify.h"

__global__ void sum_kernel(const float* in, float* out, bool init) {
  __shared__ float total;
  if (init && threadIdx.x == 0) total = 0.0f;
  __syncthreads();
  atomicAdd(&total, in[blockIdx.x * blockDim.x + threadIdx.x]);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

__global__ void aligned_kernel(float* out, bool init) {
  alignas(16) __shared__ float tile[4][4];
  const int t = threadIdx.x;  // 16 threads
  if (init || t != 5) tile[t / 4][t % 4] = (float)t;
  __syncthreads();
  out[t] = tile[t % 4][t / 4];
}

__global__ void carry_kernel(float* out, bool init) {
  __shared__ float last;
  if (threadIdx.x == 0) {
    if (init) last = 0.0f;
    out[blockIdx.x] = last;   // block b expects 0 (or forgets to initialise and hopes)
    last = (float)(blockIdx.x + 1);
  }
}

__global__ void dynamic_kernel(float* out, int n, bool init) {
  LK_DYNAMIC_SHARED(float, buf);
  if (init)
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += buf[i];
    out[blockIdx.x] = s;
  }
}

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-static | bad-aligned | bad-carry | bad-dynamic | good");
  const bool good = c == "good";
  if (!good && c != "bad-static" && c != "bad-aligned" && c != "bad-carry" && c != "bad-dynamic") verify_unknown(c);
  float host_in[256];
  for (int i = 0; i < 256; ++i) host_in[i] = 1.0f;
  float *in, *out;
  VERIFY_CUDA(cudaMalloc(&in, sizeof host_in));
  VERIFY_CUDA(cudaMalloc(&out, 64 * sizeof(float)));
  VERIFY_CUDA(cudaMemcpy(in, host_in, sizeof host_in, cudaMemcpyHostToDevice));
  float host[64];
  auto fetch = [&](int n) {
    VERIFY_CUDA(cudaGetLastError());
    VERIFY_CUDA(cudaDeviceSynchronize());
    VERIFY_CUDA(cudaMemcpy(host, out, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) VERIFY(!std::isnan(host[i]), "out[%d] is NaN: uninitialised shared memory was read", i);
  };
  if (good || c == "bad-static") {
    LK_LAUNCH(sum_kernel, 2, 128, 0, 0)(in, out, good);
    fetch(2);
    VERIFY(host[0] == 128.0f && host[1] == 128.0f, "sums %g %g", host[0], host[1]);
  }
  if (good || c == "bad-aligned") {
    LK_LAUNCH(aligned_kernel, 1, 16, 0, 0)(out, good);
    fetch(16);
    for (int t = 0; t < 16; ++t) VERIFY(host[t] == (float)((t % 4) * 4 + t / 4), "tile %d = %g", t, host[t]);
  }
  if (good || c == "bad-carry") {
    LK_LAUNCH(carry_kernel, 8, 32, 0, 0)(out, good);
    fetch(8);
    for (int b = 0; b < 8; ++b) VERIFY(host[b] == 0.0f, "block %d read %g", b, host[b]);
  }
  if (good || c == "bad-dynamic") {
    LK_LAUNCH(dynamic_kernel, 4, 64, 300 * sizeof(float), 0)(out, 300, good);
    fetch(4);
    for (int b = 0; b < 4; ++b) VERIFY(host[b] == 300.0f, "block %d sum %g", b, host[b]);
  }
  std::printf("ok\n");
  return 0;
}
