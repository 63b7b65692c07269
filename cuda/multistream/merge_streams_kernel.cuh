// The merge of multi-stream attention (SPEC §12): one thread per output element, the row's weights
// recomputed per thread from at most three LSEs (cheaper than sharing them through memory).
#pragma once
#include "../attention/element.cuh"
#include "../common/compat.cuh"
#include "../common/stream_merge.h"

namespace lk::cuda {

// Stream s's pointer by a select, never by indexing the parameter array at run time (which would
// copy it to local memory).
template <typename P>
__device__ __forceinline__ P stream_at(const P (&list)[kMaxStreams], int s) {
  return s == 0 ? list[0] : (s == 1 ? list[1] : list[2]);
}

template <typename T>
__global__ void merge_streams_kernel(MergeParams p) {
  const int64_t total = p.rows * p.value_dim;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = e / p.value_dim;
    float weight[kMaxStreams] = {1.0f, 1.0f, 1.0f};
    if (p.fusion == kFusionUnion) {
      float lse[kMaxStreams];
#pragma unroll
      for (int s = 0; s < kMaxStreams; ++s) lse[s] = s < p.streams ? stream_at(p.lses, s)[row] : -INFINITY;
      float row_lse;
      merge_union_weights(lse, kMaxStreams, weight, &row_lse);
      if (e % p.value_dim == 0) p.lse[row] = row_lse;
    }
    float acc = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxStreams; ++s)
      if (s < p.streams && weight[s] != 0.0f) acc += weight[s] * to_float(static_cast<const T*>(stream_at(p.outs, s))[e]);
    static_cast<T*>(p.out)[e] = from_float<T>(acc);
  }
}

}  // namespace lk::cuda
