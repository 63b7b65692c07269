// cudaMemcpy / cudaMemcpyAsync / cudaMemset check their pointers as CUDA's unified addressing does:
// a device side must lie inside a device allocation, a host side must not (cudaErrorInvalidValue).
//   bad-swapped     cudaMemcpyDeviceToHost with the arguments the wrong way round
//   bad-host-src    cudaMemcpyDeviceToHost from a host pointer
//   bad-device-src  cudaMemcpyHostToDevice from a device pointer
//   bad-past-end    cudaMemcpyHostToDevice of one element more than the allocation holds
//   bad-async-kind  cudaMemcpyAsync with cudaMemcpyHostToDevice into host memory
//   bad-memset      cudaMemset of a host buffer
//   bad-free        cudaFree of a host pointer
//   good            every direction done right, cudaMemcpyDefault inferring it, pinned memory
#include <vector>

#include "verify.h"

int main(int argc, char** argv) {
  const std::string c = verify_case(argc, argv, "bad-swapped | bad-host-src | bad-device-src | bad-past-end | bad-async-kind | bad-memset | bad-free | good");
  const int n = 64;
  std::vector<int> host(n), back(n, -1);
  for (int i = 0; i < n; ++i) host[i] = i * 3;
  int *dev, *dev2, *pinned;
  VERIFY_CUDA(cudaMalloc(&dev, n * sizeof(int)));
  VERIFY_CUDA(cudaMalloc(&dev2, n * sizeof(int)));
  VERIFY_CUDA(cudaMallocHost(&pinned, n * sizeof(int)));
  const size_t bytes = n * sizeof(int);
  if (c == "bad-swapped") {
    VERIFY_CUDA(cudaMemcpy(dev, host.data(), bytes, cudaMemcpyHostToDevice));
    VERIFY_CUDA(cudaMemcpy(dev, back.data(), bytes, cudaMemcpyDeviceToHost));  // dst and src swapped
  } else if (c == "bad-host-src") {
    VERIFY_CUDA(cudaMemcpy(back.data(), host.data(), bytes, cudaMemcpyDeviceToHost));
  } else if (c == "bad-device-src") {
    VERIFY_CUDA(cudaMemcpy(dev2, dev, bytes, cudaMemcpyHostToDevice));
  } else if (c == "bad-past-end") {
    std::vector<int> more(n + 1, 7);
    VERIFY_CUDA(cudaMemcpy(dev, more.data(), bytes + sizeof(int), cudaMemcpyHostToDevice));
  } else if (c == "bad-async-kind") {
    VERIFY_CUDA(cudaMemcpyAsync(back.data(), host.data(), bytes, cudaMemcpyHostToDevice, 0));
  } else if (c == "bad-memset") {
    VERIFY_CUDA(cudaMemset(back.data(), 0, bytes));
  } else if (c == "bad-free") {
    VERIFY_CUDA(cudaFree(back.data()));
  } else if (c == "good") {
    VERIFY_CUDA(cudaMemcpy(dev, host.data(), bytes, cudaMemcpyHostToDevice));
    VERIFY_CUDA(cudaMemcpy(dev2, dev, bytes, cudaMemcpyDeviceToDevice));
    VERIFY_CUDA(cudaMemcpy(back.data(), dev2, bytes, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) VERIFY(back[i] == i * 3, "back[%d] = %d", i, back[i]);
    VERIFY_CUDA(cudaMemset(dev2, 0, bytes));
    VERIFY_CUDA(cudaMemcpy(dev2 + 8, host.data(), 8 * sizeof(int), cudaMemcpyDefault));  // inside, at an offset
    VERIFY_CUDA(cudaMemcpyAsync(pinned, dev2, bytes, cudaMemcpyDefault, 0));
    VERIFY_CUDA(cudaDeviceSynchronize());
    for (int i = 0; i < n; ++i) VERIFY(pinned[i] == (i >= 8 && i < 16 ? (i - 8) * 3 : 0), "pinned[%d] = %d", i, pinned[i]);
    VERIFY_CUDA(cudaMemcpy(back.data(), host.data(), bytes, cudaMemcpyHostToHost));
    VERIFY_CUDA(cudaMemcpy(dev, host.data(), 0, cudaMemcpyDeviceToHost));  // zero bytes: nothing to check
  } else {
    verify_unknown(c);
  }
  VERIFY_CUDA(cudaFreeHost(pinned));
  VERIFY_CUDA(cudaFree(dev));
  VERIFY_CUDA(cudaFree(dev2));
  std::printf("ok\n");
  return 0;
}
