// The row gather / blend of GatherParams: one block per copied row, threads across its width.
#pragma once
#include "../attention/element.cuh"
#include "../common/compat.cuh"
#include "../common/gather_params.h"

namespace lk::cuda {

template <typename T>
__global__ void gather_rows_kernel(GatherParams p) {
  const int64_t i = blockIdx.x;
  if (i >= p.rows) return;
  // A select instead of p.sources[sel]: indexing a parameter array at run time would copy it to
  // local memory.
  const uint8_t sel = p.src_sel[i];
  const void* base = sel == 0 ? p.sources[0] : (sel == 1 ? p.sources[1] : p.sources[2]);
  const T* __restrict__ src = static_cast<const T*>(base) + (int64_t)p.src_row[i] * p.width;
  T* __restrict__ dst = static_cast<T*>(p.dst) + (int64_t)p.dst_row[i] * p.width;
  const float alpha = p.alpha ? p.alpha[i] : 1.0f;
  for (int64_t c = threadIdx.x; c < p.width; c += blockDim.x) {
    if (alpha == 1.0f) dst[c] = src[c];
    else dst[c] = from_float<T>(blend_element(alpha, to_float(src[c]), to_float(dst[c])));
  }
}

}  // namespace lk::cuda
