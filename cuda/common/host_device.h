// Qualifiers for code shared by the CPU kernels (g++), the CUDA kernels (nvcc) and the
// emulated CUDA build (g++ with cuda/emu). One header so that every shared fact compiles everywhere.
#pragma once

// Under the emulator (and in CPU code) device functions are ordinary host functions.
#if defined(__CUDACC__)
#define LK_HD __host__ __device__ __forceinline__
#else
#define LK_HD inline
#endif
