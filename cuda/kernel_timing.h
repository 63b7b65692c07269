// Opt-in device timing of the kernels inside an op, for the standalone GPU check (tools/gpu-check):
// the addon never turns it on, and while it is off a KernelSpan costs one relaxed atomic load.
// Plain C++: the driver includes it without CUDA headers. Defined in cuda/runtime.cu.
#pragma once

namespace lk::cuda {

void set_kernel_timing(bool on);

// Milliseconds between the first and the last kernel of the last op this thread ran with timing
// on (CUDA events, on a GPU and on the emulator), or -1.
double last_kernel_ms();

// Inside an op: begin() right before its first launch, end() right after its last (before the
// op synchronizes). Without timing on, both do nothing.
class KernelSpan {
 public:
  KernelSpan();
  ~KernelSpan();
  KernelSpan(const KernelSpan&) = delete;
  KernelSpan& operator=(const KernelSpan&) = delete;
  void begin();
  void end();

 private:
  bool on_;
  bool begun_ = false;
  void* start_ = nullptr;  // cudaEvent_t
  void* stop_ = nullptr;
};

}  // namespace lk::cuda
