// The few CUDA runtime calls the GPU check makes itself (everything else goes through the backend,
// cuda/backend.h): device facts, a device-to-device copy ceiling, and a deliberately failing call.
// On a GPU this is plain C++ against cuda_runtime_api.h; with LK_CUDA_EMULATE, the emulator.
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>

#ifdef LK_CUDA_EMULATE
#include "../../cuda/emu/cuda_emu.h"
#else
#include <cuda_runtime_api.h>
#endif

#include "check.h"

namespace lk::check {

double host_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

DevBuf::DevBuf(size_t bytes) : bytes_(bytes) {
  const std::string err = cuda::alloc(bytes, &ptr_);
  if (!err.empty()) throw std::runtime_error("device allocation of " + std::to_string(bytes) + " bytes: " + err);
}
DevBuf::DevBuf(const void* host, size_t bytes) : DevBuf(bytes) { upload(host); }
DevBuf::~DevBuf() { cuda::release(ptr_); }
DevBuf& DevBuf::operator=(DevBuf&& o) noexcept {
  if (this != &o) {
    cuda::release(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void DevBuf::upload(const void* host) {
  const std::string err = cuda::copy_to_device(ptr_, host, bytes_);
  if (!err.empty()) throw std::runtime_error("upload: " + err);
}
void DevBuf::poison() {
  if (!bytes_) return;
  std::vector<unsigned char> ff(bytes_, 0xff);
  upload(ff.data());
}
std::vector<unsigned char> DevBuf::download() const {
  std::vector<unsigned char> out(bytes_);
  const std::string err = cuda::copy_to_host(out.data(), ptr_, bytes_);
  if (!err.empty()) throw std::runtime_error("download: " + err);
  return out;
}

GpuInfo gpu_info() {
  GpuInfo g;
  int device = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    g.name = prop.name;
    g.compute_capability = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    g.multiprocessors = prop.multiProcessorCount;
    g.memory_bytes = (double)prop.totalGlobalMem;
#ifndef LK_CUDA_EMULATE
    g.l2_bytes = (double)prop.l2CacheSize;
#endif
  }
#ifdef LK_CUDA_EMULATE
  g.driver_version = "emulator";
  g.runtime_version = "emulator";
#else
  int v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess) g.driver_version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  if (cudaRuntimeGetVersion(&v) == cudaSuccess) g.runtime_version = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
#endif
  cudaGetLastError();
  return g;
}

double copy_bandwidth_gbps(size_t bytes, int iters, double* ms_out) {
  DevBuf a(bytes), b(bytes);
  a.poison();
#ifdef LK_CUDA_EMULATE
  cuda::copy_on_device(b.get(), a.get(), bytes);  // warm-up
  const double t0 = host_ms();
  for (int i = 0; i < iters; ++i) cuda::copy_on_device(b.get(), a.get(), bytes);
  const double ms = (host_ms() - t0) / iters;
#else
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; i < 3; ++i) cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, 0);
  cudaEventRecord(e0, 0);
  for (int i = 0; i < iters; ++i) cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, 0);
  cudaEventRecord(e1, 0);
  cudaEventSynchronize(e1);
  float total = 0.0f;
  cudaEventElapsedTime(&total, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double ms = total / iters;
  if (cudaGetLastError() != cudaSuccess) return -1.0;
#endif
  if (ms_out) *ms_out = ms;
  return ms > 0 ? 2.0 * (double)bytes / (ms * 1e6) : -1.0;
}

bool inject_stale_error() {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, (size_t)1 << 50);  // 1 PiB: more than any device
  if (e == cudaSuccess) { cudaFree(p); return false; }
  return cudaPeekAtLastError() != cudaSuccess;
}

bool last_error_pending() { return cudaPeekAtLastError() != cudaSuccess; }

}  // namespace lk::check
