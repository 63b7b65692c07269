// float16 / bfloat16 <-> float32 for the CPU kernels: vectorized per ISA (F16C on AVX2 and later,
// through native/cpu/isa.h's dispatch) and split over the thread pool, so converting a batch's
// inputs costs a pass over memory, not a serial loop in front of a parallel kernel.
#pragma once
#include <cstdint>

#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// dst[i] = src[i] as float32, for i in [0, count); src holds `dtype` (kFloat16 or kBFloat16) bits.
void widen_to_float32(const uint16_t* src, DType dtype, float* dst, int64_t count);
// dst[i] = src[i] rounded to `dtype` (nearest even), in parallel.
void narrow_from_float32(const float* src, DType dtype, uint16_t* dst, int64_t count);
// One row's worth, on the calling thread (for conversions fused into a kernel's tile loads).
void widen_row(const uint16_t* src, DType dtype, float* dst, int64_t count);

}  // namespace lk::cpu
