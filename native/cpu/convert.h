// float16 / bfloat16 <-> float32 for the CPU kernels: vectorized per ISA (F16C on AVX2 and later,
// through native/cpu/isa.h's dispatch) and split over the thread pool, so converting a batch's
// inputs costs a pass over memory, not a serial loop in front of a parallel kernel.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// dst[i] = src[i] as float32, for i in [0, count); src holds `dtype` (kFloat16 or kBFloat16) bits.
void widen_to_float32(const uint16_t* src, DType dtype, float* dst, int64_t count);
// dst[i] = src[i] rounded to `dtype` (nearest even), in parallel.
void narrow_from_float32(const float* src, DType dtype, uint16_t* dst, int64_t count);
// One row's worth, on the calling thread (for conversions fused into a kernel's tile loads).
void widen_row(const uint16_t* src, DType dtype, float* dst, int64_t count);
// narrow_from_float32 for one row's worth, on the calling thread (outputs narrowed as they are written).
void narrow_row(const float* src, DType dtype, uint16_t* dst, int64_t count);

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;

// n floats, 64-byte aligned, uninitialized.
inline FloatBuffer alloc_floats(size_t n) {
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  return FloatBuffer(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// Inputs as float32: borrowed when already float32, converted otherwise.
struct Float32View {
  const float* data = nullptr;
  FloatBuffer owned;
};

inline Float32View as_float32(const void* src, DType dtype, int64_t count) {
  Float32View view;
  if (dtype == kFloat32) {
    view.data = static_cast<const float*>(src);
    return view;
  }
  view.owned = alloc_floats((size_t)count);
  widen_to_float32(static_cast<const uint16_t*>(src), dtype, view.owned.get(), count);
  view.data = view.owned.get();
  return view;
}

// An output as float32: the caller's buffer itself when float32, else a float32 buffer that
// finish() narrows into it.
struct Float32Output {
  float* data = nullptr;
  FloatBuffer owned;
  void* dst = nullptr;
  DType dtype = kFloat32;
  int64_t count = 0;
  void finish() {
    if (owned) narrow_from_float32(owned.get(), dtype, static_cast<uint16_t*>(dst), count);
  }
};

inline Float32Output float32_output(void* dst, DType dtype, int64_t count) {
  Float32Output o;
  o.dst = dst;
  o.dtype = dtype;
  o.count = count;
  if (dtype == kFloat32) {
    o.data = static_cast<float*>(dst);
  } else {
    o.owned = alloc_floats((size_t)count);
    o.data = o.owned.get();
  }
  return o;
}

}  // namespace lk::cpu
