// Qualifiers for code shared by the CPU kernels (g++), the CUDA kernels (nvcc) and the
// emulated CUDA build (g++ with cuda/emu). One header so that every shared fact compiles everywhere.
#pragma once

#if defined(__CUDACC__) || defined(LK_CUDA_EMULATE)
#define LK_HD __host__ __device__ __forceinline__
#else
#define LK_HD inline
#endif
