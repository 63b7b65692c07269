// The row gather / blend of GatherParams: a warp per copied row (kGatherRowsPerBlock rows per
// block), lanes across its width. Rows whose bytes are a multiple of 16 with 16-byte aligned bases
// move as 16-byte vectors (one load and one store per 4 floats / 8 halves per lane); others element
// by element.
#pragma once
#include "../attention/element.cuh"
#include "../attention/tc_fragments.cuh"  // TcChunk: one 16-byte vector
#include "../common/compat.cuh"
#include "../common/gather_params.h"

namespace lk::cuda {

constexpr int kGatherRowsPerBlock = 8;
constexpr int kGatherThreads = 32 * kGatherRowsPerBlock;

// One 16-byte chunk of `dst` blended with one of `src`, word by word in registers (no local array).
__device__ __forceinline__ uint32_t blend_word(float alpha, uint32_t in, uint32_t cur, float*) {
  return __float_as_uint(blend_element(alpha, __uint_as_float(in), __uint_as_float(cur)));
}
template <typename T>
__device__ __forceinline__ uint32_t blend_word(float alpha, uint32_t in, uint32_t cur, T*) {
  using E = TcElement<T>;
  return E::pack(blend_element(alpha, E::lo(in), E::lo(cur)), blend_element(alpha, E::hi(in), E::hi(cur)));
}
template <typename T>
__device__ __forceinline__ TcChunk blend_chunk(float alpha, const TcChunk& in, const TcChunk& cur) {
  T* tag = nullptr;
  return TcChunk{blend_word(alpha, in.x, cur.x, tag), blend_word(alpha, in.y, cur.y, tag), blend_word(alpha, in.z, cur.z, tag),
                 blend_word(alpha, in.w, cur.w, tag)};
}

// kVector: width * sizeof(T) is a multiple of 16 and every base 16-byte aligned (the host checks).
template <typename T, bool kVector>
__global__ void __launch_bounds__(kGatherThreads) gather_rows_kernel(GatherParams p) {
  const int64_t i = (int64_t)blockIdx.x * kGatherRowsPerBlock + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= p.rows) return;
  // A select instead of p.sources[sel]: indexing a parameter array at run time would copy it to
  // local memory.
  const uint8_t sel = p.src_sel[i];
  const void* base = sel == 0 ? p.sources[0] : (sel == 1 ? p.sources[1] : p.sources[2]);
  const T* __restrict__ src = static_cast<const T*>(base) + (int64_t)p.src_row[i] * p.width;
  T* __restrict__ dst = static_cast<T*>(p.dst) + (int64_t)p.dst_row[i] * p.width;
  const float alpha = p.alpha ? p.alpha[i] : 1.0f;
  if constexpr (kVector) {
    constexpr int kPer = 16 / sizeof(T);
    const int64_t chunks = p.width / kPer;
    const TcChunk* s = reinterpret_cast<const TcChunk*>(src);
    TcChunk* d = reinterpret_cast<TcChunk*>(dst);
    for (int64_t c = lane; c < chunks; c += 32) {
      d[c] = alpha == 1.0f ? s[c] : blend_chunk<T>(alpha, s[c], d[c]);
    }
  } else {
    for (int64_t c = lane; c < p.width; c += 32) {
      if (alpha == 1.0f) dst[c] = src[c];
      else dst[c] = from_float<T>(blend_element(alpha, to_float(src[c]), to_float(dst[c])));
    }
  }
}

}  // namespace lk::cuda
