// Butterfly reductions across the 32 lanes of a warp; every lane gets the result.
#pragma once
#include "../common/compat.cuh"
#include "../common/ieee.h"

namespace lk::cuda {

// The softmax maximum: NaN when any lane holds NaN (as the reference's running max), not fmaxf's
// NaN-dropping max.
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = max_keep_nan(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

}  // namespace lk::cuda
