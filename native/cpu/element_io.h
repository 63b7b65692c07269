// One element of a float32 / float16 / bfloat16 host array, read or written as float32.
#pragma once
#include <stdint.h>

#include "../../cuda/common/attention_params.h"
#include "../../cuda/common/half_convert.h"

namespace lk::cpu {

inline float load_element(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case kBFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void store_element(void* base, DType dtype, int64_t i, float x) {
  switch (dtype) {
    case kFloat16: static_cast<uint16_t*>(base)[i] = float_to_half(x); break;
    case kBFloat16: static_cast<uint16_t*>(base)[i] = float_to_bfloat16(x); break;
    default: static_cast<float*>(base)[i] = x; break;
  }
}

}  // namespace lk::cpu
