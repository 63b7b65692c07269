// What the host asks of the current CUDA device before choosing a tensor-core kernel (the masked
// attention's and the sparse path's), cached per device.
#pragma once
#include <mutex>

#include "compat.cuh"

namespace lk::cuda {

// Compute capability (10 major + minor) and opt-in shared memory per block of the current device,
// asked of the runtime once per device. False when the runtime cannot say (then: no tensor cores).
inline bool tc_device_info(int* sm, int* smem_optin) {
  struct Info {
    bool known;
    int sm, optin;
  };
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static Info cache[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  std::lock_guard<std::mutex> lock(mutex);
  Info& info = cache[device];
  if (!info.known) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    info = Info{true, prop.major * 10 + prop.minor, (int)prop.sharedMemPerBlockOptin};
  }
  *sm = info.sm;
  *smem_optin = info.optin;
  return true;
}

}  // namespace lk::cuda
