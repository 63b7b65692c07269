// Portable 8-float vectors (GCC vector extensions). Kernels using them are instantiated once per
// instruction set inside entry functions of native/cpu/isa.h's dispatch, so the same source becomes
// AVX-512 / AVX2+FMA / SSE2 / NEON code picked at run time: no -march=native anywhere.
#pragma once
#include <cstdint>
#include <cstring>

#include "phase_profile.h"

namespace lk::cpu {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
// 16-float vectors: only inside AVX-512 code (elsewhere GCC splits them; see vec_math.inc).
typedef float v16f __attribute__((vector_size(64)));
// The signed integer vector with V's lanes (what a lane-wise comparison of two V gives).
template <typename V>
using IntVec = decltype(V{} < V{});

#define LK_INLINE inline __attribute__((always_inline))

#include "vec_math.inc"

// x rounded up to a multiple of m (tile padding).
constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

LK_INLINE v8f splat(float x) { return splat_vec<v8f>(x); }
LK_INLINE v8i splat_int(int32_t x) { return splat_int_vec<v8i>(x); }
LK_INLINE v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
LK_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }

LK_INLINE v8f max_keep_nan8(v8f a, v8f b) { return max_keep_nan_vec(a, b); }
LK_INLINE float hmax_keep_nan(v8f v) {  // a tree of lane-wise maxima (NaN anywhere gives NaN)
  v8f m = max_keep_nan8(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));
  m = max_keep_nan8(m, __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5));
  m = max_keep_nan8(m, __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6));
  return m[0];
}
LK_INLINE float hsum(v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Bit u set when lane u of `lanes` (each 0 or -1) is set: a fold of three shuffles, where extracting
// the lanes one by one costs 8 scalar moves, shifts and ors.
LK_INLINE uint32_t lane_mask8(v8i lanes) {
  v8i x = lanes & v8i{1, 2, 4, 8, 16, 32, 64, 128};
  x |= __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
  x |= __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5);
  x |= __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
  return (uint32_t)x[0];
}

// Whether all n floats (n a multiple of 8) are finite: x * 0 is NaN exactly for +-Inf and NaN.
// Two accumulators halve the multiply-add latency chain (it checks every packed V panel and the V
// rows of masked blocks read in place).
LK_INLINE bool all_finite(const float* p, int n) {
  v8f acc[2] = {splat(0.0f), splat(0.0f)};
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc[0] += load8(p + i) * splat(0.0f);
    acc[1] += load8(p + i + 8) * splat(0.0f);
  }
  if (i < n) acc[0] += load8(p + i) * splat(0.0f);
  return hsum(acc[0] + acc[1]) == 0.0f;
}

// Lane j of the result is the sum of a[j]'s eight lanes: eight dot products reduced together with
// pairwise adds (14 shuffles for 8 results instead of a full horizontal sum each).
LK_INLINE v8f pairwise_add(v8f a, v8f b) {  // [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}
LK_INLINE v8f hsum8x8(const v8f a[8]) {
  const v8f lo = pairwise_add(pairwise_add(a[0], a[1]), pairwise_add(a[2], a[3]));
  const v8f hi = pairwise_add(pairwise_add(a[4], a[5]), pairwise_add(a[6], a[7]));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
}

// Dot products of two key rows k0, k1 with four query rows q + r * q_stride (r < 4) over D floats
// (D a multiple of 8): lane r is k0 . q_r, lane 4 + r is k1 . q_r. Every multiply is useful for a
// few query rows, where a GEMM tile would spend most of its columns on absent ones.
LK_INLINE v8f dot_2keys_4rows(const float* k0, const float* k1, const float* q, size_t q_stride, int D) {
  v8f acc[8] = {};
  for (int d = 0; d < D; d += 8) {
    const v8f a0 = load8(k0 + d), a1 = load8(k1 + d);
    for (int r = 0; r < 4; ++r) {
      const v8f qv = load8(q + r * q_stride + d);
      acc[r] += a0 * qv;
      acc[4 + r] += a1 * qv;
    }
  }
  return hsum8x8(acc);
}

// In-place 8 x 8 transpose of the rows x[0..8): unpack pairs, then 64-bit pairs, then 128-bit halves.
LK_INLINE void transpose8x8(v8f x[8]) {
  v8f a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = __builtin_shufflevector(x[i], x[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    a[i + 1] = __builtin_shufflevector(x[i], x[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int k = 0; k < 2; ++k) {  // b[i + c] holds columns c and c + 4 of rows i..i+3
      b[i + 2 * k] = __builtin_shufflevector(a[i + k], a[i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      b[i + 2 * k + 1] = __builtin_shufflevector(a[i + k], a[i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int k = 0; k < 4; ++k) {
    x[k] = __builtin_shufflevector(b[k], b[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    x[k + 4] = __builtin_shufflevector(b[k], b[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

LK_INLINE v8f exp8(v8f x) { return exp_vec(x); }

// Register-blocked GEMM for one instruction set: C[m x n] (+)= A[m x k] * B[k x n] with
// m % kRows == 0 and n % kCols == 0. A is read one element at a time (broadcast), B by rows.
// Strides are in floats. Instantiated per ISA inside functions compiled for that ISA.
template <typename V, int kRowsT, int kVecs>
struct GemmShape {
  using Vec = V;
  static constexpr int kWidth = (int)(sizeof(V) / sizeof(float));
  static constexpr int kRows = kRowsT;
  static constexpr int kCols = kWidth * kVecs;
  static constexpr int kVecsPerRow = kVecs;
};

// Unaligned whole-vector load / store of any vector type V. Through a may_alias, 4-byte-aligned
// typedef rather than memcpy: GCC merges the memcpys of a row's accumulators into one block copy,
// which puts the accumulators on the stack and copies them in 16-byte pieces (a failed store-to-load
// forwarding per vector when the GEMM reads its C block back).
template <typename V>
LK_INLINE V load_vec(const float* p) {
  typedef V Unaligned __attribute__((aligned(4), may_alias));
  return *reinterpret_cast<const Unaligned*>(p);
}
template <typename V>
LK_INLINE void store_vec(float* p, V v) {
  typedef V Unaligned __attribute__((aligned(4), may_alias));
  *reinterpret_cast<Unaligned*>(p) = v;
}

template <typename Shape>
LK_INLINE void gemm_blocks(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                           int ldc, bool accumulate) {
  using V = typename Shape::Vec;
  constexpr int R = Shape::kRows, NV = Shape::kVecsPerRow, W = Shape::kWidth;
  LK_PROF_MACS((int64_t)m * n * k);
  for (int i0 = 0; i0 < m; i0 += R) {
    for (int j0 = 0; j0 < n; j0 += Shape::kCols) {
      V acc[R][NV];
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
          if (accumulate) acc[r][v] = load_vec<V>(c + (int64_t)(i0 + r) * ldc + j0 + v * W);
          else acc[r][v] = V{};
        }
      for (int kk = 0; kk < k; ++kk) {
        V bv[NV];
        for (int v = 0; v < NV; ++v) bv[v] = load_vec<V>(b + (int64_t)kk * ldb + j0 + v * W);
        for (int r = 0; r < R; ++r) {
          const V av = a[(int64_t)(i0 + r) * lda + kk] - V{};  // broadcast
          for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
        }
      }
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) store_vec<V>(c + (int64_t)(i0 + r) * ldc + j0 + v * W, acc[r][v]);
    }
  }
}

// The extent a block of rows [i, i + rows) needs: the largest of their extents rounded up to `unit`,
// at most `full` (all of it when there are no per-row extents).
LK_INLINE int rows_extent(const int* extent, int i, int rows, int full, int unit) {
  if (!extent) return full;
  int e = 0;
  for (int r = i; r < i + rows; ++r) e = extent[r] > e ? extent[r] : e;
  e = (e + unit - 1) / unit * unit;
  return e < full ? e : full;
}

// gemm_blocks for any even m: kRows-row blocks, then 4- and 2-row blocks for the rest. With 6-row
// blocks a 32-row query tile runs as 4 x 6 + 2 x 4 rows instead of being padded to 36 (11% of both
// GEMMs spent on zero rows); 4 x kCols keeps 8 accumulators, enough to hide the FMA latency.
// Optional per-row extents (row r needs only the first extent[r] columns, or with kRaggedDepth the
// first extent[r] terms of the sum, its A entries past them being 0) shorten each block to its rows'
// largest: a causal diagonal's upper right is neither multiplied nor accumulated. Blocks of extent 0
// are left unwritten.
template <typename Shape, bool kRaggedDepth = false>
LK_INLINE void gemm_rows(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                         bool accumulate, const int* extent = nullptr) {
  using V = typename Shape::Vec;
  using FourRows = GemmShape<V, 4, Shape::kVecsPerRow>;
  using TwoRows = GemmShape<V, 2, Shape::kVecsPerRow>;
  int whole = m / Shape::kRows * Shape::kRows;
  if (Shape::kRows == 6 && m - whole == 2 && whole > 0) whole -= 6;  // 6 + 2 rows -> 4 + 4
  const int full = kRaggedDepth ? k : n, unit = kRaggedDepth ? 1 : Shape::kCols;
  int i = 0;
  for (; i < whole; i += Shape::kRows) {
    const int e = rows_extent(extent, i, Shape::kRows, full, unit);
    if (e > 0)
      gemm_blocks<Shape>(Shape::kRows, kRaggedDepth ? n : e, kRaggedDepth ? e : k, a + (int64_t)i * lda, lda, b, ldb,
                         c + (int64_t)i * ldc, ldc, accumulate);
  }
  for (; m - i >= 4; i += 4) {
    const int e = rows_extent(extent, i, 4, full, unit);
    if (e > 0)
      gemm_blocks<FourRows>(4, kRaggedDepth ? n : e, kRaggedDepth ? e : k, a + (int64_t)i * lda, lda, b, ldb,
                            c + (int64_t)i * ldc, ldc, accumulate);
  }
  if (m > i) {
    const int e = rows_extent(extent, i, m - i, full, unit);
    if (e > 0)
      gemm_blocks<TwoRows>(m - i, kRaggedDepth ? n : e, kRaggedDepth ? e : k, a + (int64_t)i * lda, lda, b, ldb,
                           c + (int64_t)i * ldc, ldc, accumulate);
  }
}

// Measured on this project's 2-core AVX-512 machines (64^3 blocks, one core): 4 x 32 zmm ~117 GFLOP/s,
// 6 x 16 ymm (AVX2) ~47 GFLOP/s, against ~27 for a 4 x 16 ymm block.
using GemmAvx512 = GemmShape<v16f, 4, 2>;
using GemmAvx2 = GemmShape<v8f, 6, 2>;
using GemmBaseline = GemmShape<v8f, 4, 2>;
// arm64 has 32 128-bit registers: 6 x 16 floats is 24 accumulators + 4 B vectors + a broadcast.
using GemmNeon = GemmShape<v8f, 6, 2>;
// Tall blocks of one vector for GEMMs with at most 8 / 16 columns (the indexer's queries x heads).
using GemmNarrow8 = GemmShape<v8f, 12, 1>;
using GemmNarrow16 = GemmShape<v16f, 12, 1>;

}  // namespace lk::cpu
