// Device copies of small host arrays and scratch buffers of one op, freed together when the owner
// goes out of scope — after the op has synchronized, so queued kernels never read freed memory.
#pragma once
#include <stddef.h>
#include <string>
#include <vector>

#include "compat.cuh"
#include "host_check.cuh"

namespace lk::cuda {

class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    for (void* p : owned_)
      if (cudaFree(p) != cudaSuccess) cudaGetLastError();
  }
  // A device copy of `count` elements (nullptr for a null host array, or once *err is set).
  template <typename T>
  const T* put(const T* host, size_t count, std::string* err) {
    if (!host || !err->empty()) return nullptr;
    T* dev = static_cast<T*>(scratch(count * sizeof(T), err));
    if (dev && count) *err = check(cudaMemcpy(dev, host, count * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    return err->empty() ? dev : nullptr;
  }
  // `bytes` of device memory (at least one, so the pointer is never null), or nullptr with *err set.
  void* scratch(size_t bytes, std::string* err) {
    if (!err->empty()) return nullptr;
    void* dev = nullptr;
    *err = check(cudaMalloc(&dev, bytes ? bytes : 1), "cudaMalloc(scratch)");
    if (!err->empty()) return nullptr;
    owned_.push_back(dev);
    return dev;
  }

 private:
  std::vector<void*> owned_;
};

}  // namespace lk::cuda
