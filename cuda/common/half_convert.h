// float <-> float16 / bfloat16 bit conversions (IEEE round-to-nearest-even), for host code:
// the CPU kernels and the tensor layer. Device code uses the CUDA intrinsics instead.
#pragma once
#include <stdint.h>
#include <string.h>

namespace lk {

inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in float
    const float v = (float)man * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;              // nan -> quiet nan
  if (abs >= 0x477ff000u) return sign | 0x7c00;             // rounds to >= 65520 -> inf
  if (abs < 0x38800000u) {                                  // below 2^-14: subnormal or zero
    // value / 2^-24 rounded to nearest even, as an integer mantissa
    const float scaled = bits_float(abs) * 16777216.0f;     // exact: power-of-two scaling
    uint32_t m = (uint32_t)scaled;
    const float rem = scaled - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) ++m;
    return sign | (uint16_t)m;                              // m == 0x400 becomes the smallest normal
  }
  // normal: drop 13 mantissa bits with round-to-nearest-even; a carry bumps the exponent correctly
  const uint32_t rebiased = abs - (112u << 23);
  const uint32_t rounded = rebiased + 0xfffu + ((rebiased >> 13) & 1u);
  return sign | (uint16_t)(rounded >> 13);
}

inline float bfloat16_to_float(uint16_t b) { return bits_float((uint32_t)b << 16); }

inline uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet nan
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(rounded >> 16);
}

}  // namespace lk
