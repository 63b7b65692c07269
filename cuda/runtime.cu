// Device discovery and memory for the binding. cudart is linked statically, so this loads on
// machines without a driver and reports why CUDA is unusable instead of failing to load.
// Every failure here clears the thread's last error (common/host_check.cuh): a failed allocation
// of a tensor is that call's error, never the next op's.
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "common/compat.cuh"
#include "common/host_check.cuh"
#include "kernel_timing.h"

namespace lk::cuda {
namespace {

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
  // Exactly the bytes asked (one for an empty tensor, so the pointer is never null): on the
  // emulator under AddressSanitizer a kernel reading one element too far is caught.
  std::string err = check(cudaMalloc(ptr, bytes ? bytes : 1), "cudaMalloc");
  if (!err.empty()) *ptr = nullptr;
  return err;
}

void release(void* ptr) {
  if (ptr && cudaFree(ptr) != cudaSuccess) cudaGetLastError();  // nothing to report to (destructors)
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

// ---------------------------------------------------------------- kernel timing (kernel_timing.h)

namespace {
std::atomic<bool> g_kernel_timing{false};
thread_local double t_last_kernel_ms = -1.0;
}  // namespace

void set_kernel_timing(bool on) { g_kernel_timing.store(on); }
double last_kernel_ms() { return t_last_kernel_ms; }

KernelSpan::KernelSpan() : on_(g_kernel_timing.load(std::memory_order_relaxed)) {
  if (on_) t_last_kernel_ms = -1.0;
}

KernelSpan::~KernelSpan() {
  if (start_) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

// CUDA events on a GPU and on the emulator alike (its events time the queued work when it runs).
void KernelSpan::begin() {
  if (!on_ || begun_) return;
  begun_ = true;
  cudaEvent_t a = nullptr, b = nullptr;
  if (cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess || cudaEventRecord(a, 0) != cudaSuccess) {
    cudaGetLastError();
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    on_ = false;
    return;
  }
  start_ = a;
  stop_ = b;
}

void KernelSpan::end() {
  if (!on_ || !begun_) return;
  on_ = false;
  cudaEvent_t a = static_cast<cudaEvent_t>(start_), b = static_cast<cudaEvent_t>(stop_);
  float ms = -1.0f;
  // An error here is left for the op's own check (a failed launch fails the events too).
  if (cudaEventRecord(b, 0) != cudaSuccess || cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&ms, a, b) != cudaSuccess)
    ms = -1.0f;
  t_last_kernel_ms = ms;
}

}  // namespace lk::cuda
