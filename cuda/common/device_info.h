// What the host asks of the current CUDA device before choosing a tensor-core kernel (the masked
// attention's and the sparse path's), cached per device.
#pragma once
#include "compat.cuh"
#include "once_cache.h"

namespace lk::cuda {

// Compute capability (10 major + minor) and opt-in shared memory per block of the current device,
// asked of the runtime once per device. False when the runtime cannot say (then: no tensor cores).
inline bool tc_device_info(int* sm, int* smem_optin) {
  struct Info {
    int sm, optin;
  };
  static auto* cache = new OnceCache<int, Info>();  // never destroyed: calls may still ask at exit
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) {
    cudaGetLastError();
    return false;
  }
  Info info;
  const bool known = cache->get(device, &info, [device](Info* made) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    *made = Info{prop.major * 10 + prop.minor, (int)prop.sharedMemPerBlockOptin};
    return true;
  });
  if (!known) return false;
  *sm = info.sm;
  *smem_optin = info.optin;
  return true;
}

}  // namespace lk::cuda
