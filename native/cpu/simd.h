// Portable 8-float vectors (GCC vector extensions). Code using them is compiled once per target by
// target_clones in the including kernel, so the same source becomes AVX-512 / AVX2+FMA / SSE2 code
// picked at run time: no -march=native anywhere.
#pragma once
#include <cstdint>
#include <cstring>

namespace lk::cpu {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LK_INLINE inline __attribute__((always_inline))

LK_INLINE v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
LK_INLINE v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
LK_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

LK_INLINE float hmax(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
LK_INLINE float hsum(v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// exp(x) for 8 lanes: 2^n * p(r) with r = x - n ln2 in [-ln2/2, ln2/2] and a degree-6 polynomial
// (relative error ~2e-7, inside SPEC §7's float32 tolerance). Underflow (incl. -inf) gives exactly 0,
// so masked scores contribute nothing.
LK_INLINE v8f exp8(v8f x) {
  const v8f hi = splat(88.3762626647949f), lo = splat(-87.3365478515625f);
  const v8f xc = x > hi ? hi : (x < lo ? lo : x);
  const v8f t = xc * splat(1.44269504088896341f);
  const v8f half = t >= splat(0.0f) ? splat(0.5f) : splat(-0.5f);
  const v8i n = __builtin_convertvector(t + half, v8i);  // round to nearest
  const v8f nf = __builtin_convertvector(n, v8f);
  v8f r = xc - nf * splat(0.693359375f);
  r = r - nf * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const v8i bits = (n + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const v8f y = p * scale;
  return x < lo ? splat(0.0f) : y;
}

// C[m x n] (+)= A[m x k] * B[k x n] for m % 4 == 0 and n % 16 == 0: a 4 x 16 register block,
// A broadcast one element at a time, B read as rows. Strides are in floats.
LK_INLINE void gemm_4x16_blocks(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                                float* c, int ldc, bool accumulate) {
  for (int i0 = 0; i0 < m; i0 += 4) {
    for (int j0 = 0; j0 < n; j0 += 16) {
      v8f acc[4][2];
      for (int r = 0; r < 4; ++r) {
        acc[r][0] = accumulate ? load8(c + (int64_t)(i0 + r) * ldc + j0) : splat(0.0f);
        acc[r][1] = accumulate ? load8(c + (int64_t)(i0 + r) * ldc + j0 + 8) : splat(0.0f);
      }
      const float* a_row = a + (int64_t)i0 * lda;
      for (int kk = 0; kk < k; ++kk) {
        const v8f b0 = load8(b + (int64_t)kk * ldb + j0);
        const v8f b1 = load8(b + (int64_t)kk * ldb + j0 + 8);
        for (int r = 0; r < 4; ++r) {
          const v8f av = splat(a_row[(int64_t)r * lda + kk]);
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        store8(c + (int64_t)(i0 + r) * ldc + j0, acc[r][0]);
        store8(c + (int64_t)(i0 + r) * ldc + j0 + 8, acc[r][1]);
      }
    }
  }
}

}  // namespace lk::cpu
