// Device discovery and memory for the binding. cudart is linked statically, so this loads on
// machines without a driver and reports why CUDA is unusable instead of failing to load.
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "common/compat.cuh"

namespace lk::cuda {
namespace {

std::string check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return std::string();
  return std::string(what) + ": " + cudaGetErrorString(err);
}

struct Probe {
  bool ok = false;
  std::string reason;
  std::vector<DeviceInfo> devices;
};

const Probe& probe() {
  static Probe result;
  static std::once_flag once;
  std::call_once(once, [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorInsufficientDriver) {
      result.reason = "no NVIDIA driver found (cudaGetDeviceCount: insufficient driver)";
    } else if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
      result.reason = "no CUDA device found";
    } else if (err != cudaSuccess) {
      result.reason = std::string("CUDA runtime unusable: ") + cudaGetErrorString(err);
    } else {
      for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        DeviceInfo info;
        info.name = prop.name;
        info.compute_capability = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        info.total_memory = prop.totalGlobalMem;
        result.devices.push_back(info);
      }
      result.ok = !result.devices.empty();
      if (!result.ok) result.reason = "no usable CUDA device";
    }
    cudaGetLastError();  // clear the sticky-less error so later calls start clean
  });
  return result;
}

}  // namespace

bool available(std::string* reason, std::vector<DeviceInfo>* devices) {
  const Probe& p = probe();
  if (reason) *reason = p.reason;
  if (devices) *devices = p.devices;
  return p.ok;
}

bool emulated() {
#ifdef LK_CUDA_EMULATE
  return true;
#else
  return false;
#endif
}

std::string alloc(size_t bytes, void** ptr) {
  *ptr = nullptr;
  return check(cudaMalloc(ptr, bytes < 256 ? 256 : bytes), "cudaMalloc");
}

void release(void* ptr) {
  if (ptr) cudaFree(ptr);
}

std::string copy_to_device(void* dst, const void* src, size_t bytes) {
  return bytes ? check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device)") : "";
}

std::string copy_to_host(void* dst, const void* src, size_t bytes) {
  return bytes ? check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(device to host)") : "";
}

std::string copy_on_device(void* dst, const void* src, size_t bytes) {
  return bytes ? check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy(device to device)") : "";
}

std::string zero(void* ptr, size_t bytes) {
  return bytes ? check(cudaMemset(ptr, 0, bytes), "cudaMemset") : "";
}

}  // namespace lk::cuda
