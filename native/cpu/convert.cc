#include "convert.h"

#include <algorithm>

#include "../../cuda/common/half_convert.h"
#include "../thread_pool.h"
#include "isa.h"
#if LK_ISA_X86
#include <immintrin.h>
#endif

namespace lk::cpu {
namespace {

// bfloat16 is float32's top half: a shift the compiler vectorizes on every ISA.
inline void widen_bf16(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_to_float(src[i]);
}

void widen_portable(const uint16_t* src, DType dtype, float* dst, int64_t n) {
  if (dtype == kBFloat16) return widen_bf16(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

#if LK_ISA_X86
// vcvtph2ps is exact (every float16 is a float32), as half_to_float.
LK_TARGET_AVX2 void widen_avx2(const uint16_t* src, DType dtype, float* dst, int64_t n) {
  if (dtype == kBFloat16) return widen_bf16(src, dst, n);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
// GCC 12's avx512fintrin.h trips -Wmaybe-uninitialized inside _mm512_cvtph_ps (a header false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
LK_TARGET_AVX512 void widen_avx512(const uint16_t* src, DType dtype, float* dst, int64_t n) {
  if (dtype == kBFloat16) return widen_bf16(src, dst, n);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
#pragma GCC diagnostic pop
#endif

// Rounding stays the shared scalar code (cuda/common/half_convert.h): the one definition that the
// vector paths must match bit for bit (test/cpu-narrow.test.ts). bfloat16's is branch-free but for a
// select, so GCC vectorizes this loop inside each entry's target (inlined there).
inline __attribute__((always_inline)) void narrow_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bfloat16(src[i]);
}

void narrow_portable(const float* src, DType dtype, uint16_t* dst, int64_t n) {
  if (dtype == kFloat16)
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
  else
    narrow_bf16(src, dst, n);
}

#if LK_ISA_X86
// vcvtps2ph rounds to nearest even as float_to_half does (ties, subnormals, overflow to inf alike),
// but keeps a NaN's sign and top payload bits where float_to_half returns the canonical quiet NaN:
// NaN lanes become sign | 0x7fc00000 first, which converts to exactly sign | 0x7e00.
LK_TARGET_AVX2 void narrow_avx2(const float* src, DType dtype, uint16_t* dst, int64_t n) {
  if (dtype != kFloat16) return narrow_bf16(src, dst, n);
  const __m256 sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
  const __m256 quiet_nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m256 canonical = _mm256_or_ps(_mm256_and_ps(x, sign_bit), quiet_nan);
    const __m256 y = _mm256_blendv_ps(x, canonical, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
#endif

// No AVX-512 entry: it would be 16 lanes of the same instruction, and this bandwidth-bound loop gains
// little from it; AVX-512 CPUs take the AVX2 entry through the table's fallback.
using NarrowFn = void (*)(const float*, DType, uint16_t*, int64_t);
const IsaTable<NarrowFn> kNarrow = {{narrow_portable, nullptr, LK_IF_X86(narrow_avx2), nullptr, nullptr}};

using WidenFn = void (*)(const uint16_t*, DType, float*, int64_t);
const IsaTable<WidenFn> kWiden = {{widen_portable, nullptr, LK_IF_X86(widen_avx2), LK_IF_X86(widen_avx512), nullptr}};

constexpr int64_t kChunk = int64_t{1} << 16;  // elements per pool task

}  // namespace

void widen_row(const uint16_t* src, DType dtype, float* dst, int64_t count) { isa_pick(kWiden)(src, dtype, dst, count); }

void widen_to_float32(const uint16_t* src, DType dtype, float* dst, int64_t count) {
  const WidenFn widen = isa_pick(kWiden);
  ThreadPool::shared().parallel_for((count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t begin = c * kChunk;
    widen(src + begin, dtype, dst + begin, std::min(kChunk, count - begin));
  });
}

void narrow_row(const float* src, DType dtype, uint16_t* dst, int64_t count) { isa_pick(kNarrow)(src, dtype, dst, count); }

void narrow_from_float32(const float* src, DType dtype, uint16_t* dst, int64_t count) {
  ThreadPool::shared().parallel_for((count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t begin = c * kChunk;
    narrow_row(src + begin, dtype, dst + begin, std::min(kChunk, count - begin));
  });
}

}  // namespace lk::cpu
