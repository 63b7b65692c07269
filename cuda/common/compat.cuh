// Real CUDA or the CPU emulation (cuda/emu), chosen at build time. Kernel and launch code include
// only this header, so the very same source runs on a GPU and, without one, on the emulator.
#pragma once

#ifdef LK_CUDA_EMULATE
#include "../emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LK_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif

// `T* name` pointing at the launch's dynamic shared memory (the launch's shared_bytes).
#ifdef LK_CUDA_EMULATE
#define LK_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::lk_emu::dynamic_shared())
#else
#define LK_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char lk_dynamic_shared[]; \
  T* name = reinterpret_cast<T*>(lk_dynamic_shared)
#endif

#include "host_device.h"
