// Per-element-type helpers of the tensor-core attention kernel: the mma of the type, packing two
// floats into one A-operand register, non-finite tests on 16-bit storage, quad reductions (the 4
// lanes of an mma row group share each accumulator row).
#pragma once
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/ieee.h"
#include "../common/mma.cuh"

namespace lk::cuda {

// 16 bytes: one cp.async chunk, one vectorized shared / global access.
#ifdef LK_CUDA_EMULATE
struct alignas(16) TcChunk {
  uint32_t x, y, z, w;
};
#else
using TcChunk = uint4;
#endif

template <typename T>
struct TcElement;

template <>
struct TcElement<__half> {
  static constexpr uint32_t kExpMask = 0x7c00u;  // all-ones exponent: Inf or NaN
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_f16(d, a, b, d);
  }
  // Two floats as the register of two 16-bit elements, `lo` in the lower half (round to nearest even).
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
#ifdef LK_CUDA_EMULATE
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) | ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
#else
    const __half2 v = __floats2half2_rn(lo, hi);  // one cvt.rn.f16x2.f32
    return *reinterpret_cast<const uint32_t*>(&v);
#endif
  }
  // The lower / upper 16-bit element of a register as float.
  __device__ __forceinline__ static float lo(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r & 0xffffu))); }
  __device__ __forceinline__ static float hi(uint32_t r) { return __half2float(__ushort_as_half((unsigned short)(r >> 16))); }
};

template <>
struct TcElement<__nv_bfloat16> {
  static constexpr uint32_t kExpMask = 0x7f80u;
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mma_m16n8k16_bf16(d, a, b, d);
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
#ifdef LK_CUDA_EMULATE
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
#else
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // one cvt.rn.bf16x2.f32
    return *reinterpret_cast<const uint32_t*>(&v);
#endif
  }
  __device__ __forceinline__ static float lo(uint32_t r) { return __uint_as_float(r << 16); }
  __device__ __forceinline__ static float hi(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }
};

// Two m16n8k16 products sharing the A fragment `a`: B's 16 columns loaded by one ldmatrix .x4
// (transposed when kTranspose) from `b`, columns 0-7 accumulated into d0 and 8-15 into d1.
template <typename T, bool kTranspose>
__device__ __forceinline__ void mma_n16(float (&d0)[4], float (&d1)[4], const uint32_t (&a)[4], const uint16_t* b) {
  uint32_t b4[4];
  ldmatrix<4, kTranspose>(b4, b);
  const uint32_t b0[2] = {b4[0], b4[1]}, b1[2] = {b4[2], b4[3]};
  TcElement<T>::mma(d0, a, b0);
  TcElement<T>::mma(d1, a, b1);
}

// True when one of the 8 16-bit values of a 16-byte chunk is Inf or NaN.
template <typename T>
__device__ __forceinline__ bool chunk_nonfinite(const TcChunk& c) {
  constexpr uint32_t lo = TcElement<T>::kExpMask, hi = lo << 16;
  bool bad = false;
  const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) bad = bad || (w[i] & lo) == lo || (w[i] & hi) == hi;
  return bad;
}

// Reductions over the 4 lanes (threadID_in_group 0-3) holding one accumulator row.
__device__ __forceinline__ float quad_max(float x) {  // NaN wins, as the softmax maximum must
  x = max_keep_nan(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return max_keep_nan(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ uint32_t quad_or(uint32_t x) {
  x |= __shfl_xor_sync(0xffffffffu, x, 1);
  return x | __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace lk::cuda
