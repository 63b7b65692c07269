#include "attention_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#include "../../cuda/common/ieee.h"
#include "../../cuda/common/tile_plan.h"
#include "../thread_pool.h"
#include "convert.h"
#include "attention_heads_cpu.h"
#include "attention_lanes_cpu.h"
#include "isa.h"
#include "mask_bits.h"
#include "mask_plan_cpu.h"
#include "phase_profile.h"
#include "simd.h"

#if LK_ISA_X86
#include <immintrin.h>
#endif

namespace lk::cpu {
namespace {

constexpr int kBlockM = kPlanBlockM;  // query rows per task (the plan's query tiles)
constexpr int kBlockN = kPlanBlockN;  // keys per block of the key loop (the plan's key tiles)
constexpr int kMaxRows = 36;   // kBlockM rounded up to any micro-kernel's row count
constexpr int kMaxCols = 256;  // value_dim rounded up to any micro-kernel's column count
constexpr int kWidestCols = 32;  // the widest micro-kernel's column count (GemmAvx512Tile::kCols)
// Heads one task computes together (a head group): the key tiles' classification, gathers and
// masks are shared by the group, and for few-query tiles every K / V row streams once per block.
constexpr int kMaxGroupHeads = 16;
constexpr float kNegInf = -INFINITY;
// Query tiles of at most kFewRows rows (cross attention of a few candidates over a long history)
// compute S^T = K Q^T: key rows are read in place as the GEMM's rows, instead of transposing a K
// block whose cost would be spread over only a few query rows.
constexpr int kFewRows = 8;
using GemmKeyMajor = GemmShape<v8f, 8, 1>;  // 8 keys x 8 query rows; 8 divides kBlockN
static_assert(kBlockN % GemmKeyMajor::kRows == 0, "key blocks must split into key-major GEMM rows");

// The AVX-512 entries' tiles: 8 x 32 (16 zmm accumulators): 4 x 32 (simd.h's GemmAvx512) keeps only
// the 8 accumulators that two FMA pipes of latency 4 need, and a 4-row block reads 2 B vectors per 4
// broadcasts. 8 rows took 5% off a causal call (8 x 1024, H4, D64) on the Zen 5 machine.
using GemmAvx512Tile = GemmShape<v16f, 8, 2>;
// The AVX512-BF16 entries: GemmAvx512Tile for everything float32, plus vdpbf16ps for bfloat16 blocks
// read from packed panels (bf16_scores / bf16_pv below).
struct GemmAvx512Bf16 : GemmAvx512Tile {
  static constexpr bool kNativeBf16 = true;
};
template <typename Shape, typename = void>
struct NativeBf16 : std::false_type {};
template <typename Shape>
struct NativeBf16<Shape, std::void_t<decltype(Shape::kNativeBf16)>> : std::true_type {};
// Bfloat16 pair panels are built only for value widths whose rows need no padding at this width
// (the native P V reads V rows of the panel in place, as the float32 path does).
constexpr int kBf16Cols = GemmAvx512Bf16::kCols;
// Test support: (block, head group)s whose two GEMMs ran natively on bfloat16 pairs.
std::atomic<int64_t> bf16_native_blocks{0};


// Per-worker tiles, padded so the micro-kernels never need edge cases. Q, O and the softmax state
// exist once per head of the group; the score, K and V blocks are reused head after head.
struct Scratch {
  FloatBuffer q, kt, s, v, o;
  FloatBuffer q_cols, s_keys;  // key-major path: Q^T [D][kFewRows] per head, S^T [kBlockN][kFewRows]
  FloatBuffer k_block, v_block;  // half types: the block's K / V rows of the group's kv heads, widened
  // Native bfloat16 blocks: unscaled Q rows as bf16 pairs [head][kMaxRows][(D + 1) / 2] and one row
  // block's P as bf16 pairs [kMaxRows][kBlockN / 2] (uint32 words in float storage).
  FloatBuffer q2, p2;
  size_t o_stride = 0;         // floats of one head's O tile
  float m[kMaxGroupHeads][kMaxRows], l[kMaxGroupHeads][kMaxRows];
  uint64_t allow[kMaxRows];  // masked blocks: bit j of row r set when the row may see key j
  int extent[kMaxRows];      // masked blocks: 1 + the row's last allowed key (0: none); padding rows 0
  bool seen[kMaxRows];       // the row has met an allowed key (the mask is the same for every head)
  int keys[kBlockN];  // key positions (inside the sequence) of the block being computed
  int32_t key_role[kBlockN], key_seg[kBlockN], key_pos[kBlockN];  // masked blocks: the keys' attributes
  void init(int head_dim, int value_dim, int group_heads, int group_kv_heads, DType dtype, bool bf16_pairs) {
    o_stride = (size_t)kMaxRows * round_up(value_dim, kWidestCols);
    q = alloc_floats((size_t)group_heads * kMaxRows * head_dim);
    kt = alloc_floats((size_t)head_dim * kBlockN);
    s = alloc_floats((size_t)kMaxRows * kBlockN);
    v = alloc_floats((size_t)kBlockN * kMaxCols);
    o = alloc_floats((size_t)group_heads * o_stride);
    q_cols = alloc_floats((size_t)group_heads * head_dim * kFewRows);
    s_keys = alloc_floats((size_t)kBlockN * kFewRows);
    if (dtype != kFloat32) {
      k_block = alloc_floats((size_t)kBlockN * group_kv_heads * head_dim);
      v_block = alloc_floats((size_t)kBlockN * group_kv_heads * value_dim);
    }
    if (bf16_pairs) {
      q2 = alloc_floats((size_t)group_heads * kMaxRows * ((head_dim + 1) / 2));
      p2 = alloc_floats((size_t)kMaxRows * kBlockN / 2);
    }
  }
};

struct Job {
  const AttentionParams* p;
  // float32 tensors, or null for float16 / bfloat16 ones: those are widened as they are loaded (Q
  // rows, panels, a block's K / V rows) and the output narrowed as it is written, never whole.
  const float* q;
  const float* k;
  const float* v;
  float* out;  // [tq, heads, value_dim]
  const TileSummary* q_tiles;  // every real query tile: sequence b's are [q_base[b], q_base[b + 1])
  const TileSummary* k_tiles;  // every real key tile, likewise by k_base
  const int32_t* q_base;
  const int32_t* k_base;
  // K^T panels [D][kBlockN] and V panels [kBlockN][Dv] per (kv head, packed key tile), packed once
  // and shared by every query tile of the sequence; panel_of_tile[key tile] numbers the packed tiles
  // (-1: not packed). Head-major, so the panels a task walks are consecutive in memory. No K^T
  // panels where kt2_panels exist.
  const float* kt_panels;
  const float* v_panels;
  const uint8_t* v_panel_finite;  // per (kv head, packed tile): every V value of the panel is finite
  const int64_t* panel_of_tile;
  int64_t panels;  // packed key tiles
  const KeyRun* runs;  // the plan's key runs (mask_plan.h)
  // bfloat16 on AVX512-BF16 (else null): the same tiles' panels as bf16 pairs, per (kv head, packed
  // tile) like the float32 ones. K^T: word (dim pair i, key j) holds K[j][2i], K[j][2i + 1] (0 past
  // an odd D), [(D + 1) / 2][kBlockN]. V: word (key pair kk, column c) holds V[2kk][c], V[2kk + 1][c],
  // [kBlockN / 2][Dv]. Zero past the tile's keys.
  const uint32_t* kt2_panels;
  const uint32_t* v2_panels;
};

// Everything one (sequence, query tile, head group) task needs while it walks its keys.
struct TileTask {
  const Job* job;
  Scratch* sc;
  int b, h0, group;  // heads [h0, h0 + group)
  int64_t q_start, k_start;
  int row0, rows, m_pad, align;
  int dv_pad;
  bool key_major;  // rows <= kFewRows
  // The block's keys as columns [panel_col, panel_col + count) of one key tile's packed K^T panels
  // (per kv head), or panel -1 when they are not consecutive inside a packed tile.
  int64_t panel;
  int panel_col;
  bool keys_consecutive;  // the block's keys are consecutive positions (set once per block by attend_keys)
  // Half types: the block's K / V rows of kv heads [block_g0, block_g0 + block_heads), widened by
  // attend_keys into Scratch::k_block / v_block (key j of the block is row j there).
  bool block_widened;
  int block_g0 = 0, block_heads = 0;
  // Native bfloat16 (set by attend_keys): S = Q K^T from the K^T pair panel wherever the block reads a
  // packed panel (native_bf16_s; the float32 K^T panels are then not packed at all), and P V from
  // the V pair panel where the float32 path would read its V panel in place too (native_bf16).
  bool native_bf16_s, native_bf16;
  TileBounds qb;
  // The head being computed inside the group, and its slices of the scratch.
  int h, g;
  float *q_rows, *q_cols, *o, *m, *l;
  const uint32_t* q2;  // native bfloat16: the head's unscaled Q rows as bf16 pairs
};

// The rule over a gathered block (keys sc.keys[0, count)): each row's allowed keys become a bit set
// (sc.allow), computed once for every head of the group. Key roles / segments / positions are read
// once per block; each row then costs ~10 vector operations per 8 keys, not a rule lookup per pair.
LK_INLINE void block_allowed_keys(const TileTask& t, int count) {
  LK_PROF_SCOPE(kMaskBits);
  const AttentionParams& p = *t.job->p;
  Scratch& sc = *t.sc;
  const int32_t* qseg = p.q_layout.segments;
  const uint8_t* qrole = p.q_layout.roles;
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;
  const int n8 = round_up(count, 8);
  for (int j = 0; j < n8; ++j) {  // padding keys get role -1: no flags, always masked
    const bool real = j < count;
    const int64_t ki = t.k_start + (real ? sc.keys[j] : 0);
    sc.key_role[j] = real ? (krole ? krole[ki] : 0) : -1;
    sc.key_seg[j] = real && kseg ? kseg[ki] : 0;
    sc.key_pos[j] = real ? sc.keys[j] : 0;
  }
  for (int r = 0; r < t.rows; ++r) {
    const int64_t qi = t.q_start + t.row0 + r;
    sc.allow[r] = row_allowed_bits(p.rule, qrole ? qrole[qi] : 0, qseg ? qseg[qi] : 0, t.row0 + r + t.align, sc.key_role, sc.key_seg,
                                   sc.key_pos, n8);
    sc.extent[r] = sc.allow[r] ? 64 - __builtin_clzll(sc.allow[r]) : 0;
  }
  for (int r = t.rows; r < kMaxRows; ++r) sc.extent[r] = 0;
}

// Eight key rows (null: a padding key, zero) as eight columns of a K^T block [D][kBlockN] starting at
// kt: 8 x 8 register transposes, the D % 8 last dimensions one by one.
LK_INLINE void transpose_key_rows(const float* const krows[8], int D, float* kt) {
  const int d8 = D / 8 * 8;
  for (int d = 0; d < d8; d += 8) {
    v8f x[8];
    for (int u = 0; u < 8; ++u) x[u] = krows[u] ? load8(krows[u] + d) : splat(0.0f);
    transpose8x8(x);
    for (int u = 0; u < 8; ++u) store8(kt + (d + u) * kBlockN, x[u]);
  }
  for (int d = d8; d < D; ++d)
    for (int u = 0; u < 8; ++u) kt[d * kBlockN + u] = krows[u] ? krows[u][d] : 0.0f;
}

// Lane i of the result is the NaN-keeping maximum of a[i]'s eight lanes: hsum8x8's tree with maxima.
LK_INLINE v8f pairwise_max_keep_nan(v8f a, v8f b) {
  return max_keep_nan8(__builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14), __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15));
}
LK_INLINE v8f hmax8x8_keep_nan(const v8f a[8]) {
  const v8f lo = pairwise_max_keep_nan(pairwise_max_keep_nan(a[0], a[1]), pairwise_max_keep_nan(a[2], a[3]));
  const v8f hi = pairwise_max_keep_nan(pairwise_max_keep_nan(a[4], a[5]), pairwise_max_keep_nan(a[6], a[7]));
  return max_keep_nan8(__builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11), __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15));
}

// Lane masks of 8 keys' allowed bits (all ones where bit u of the byte is set), so that the softmax
// selects allowed scores with one load per 8 keys instead of writing -inf into every head's scores.
struct LaneMasks {
  alignas(32) int32_t lanes[256][8];
  constexpr LaneMasks() : lanes() {
    for (int byte = 0; byte < 256; ++byte)
      for (int u = 0; u < 8; ++u) lanes[byte][u] = (byte >> u) & 1 ? -1 : 0;
  }
};
constexpr LaneMasks kLaneMasks;

// The softmax over a key block: inlined 8-lane code everywhere, and a 16-lane function compiled for
// AVX-512 that the AVX-512 entries call (softmax_block.inc).
namespace softmax8 {
#define LK_SOFTMAX_VEC v8f
#define LK_SOFTMAX_LINKAGE LK_INLINE
#include "softmax_block.inc"
#undef LK_SOFTMAX_VEC
#undef LK_SOFTMAX_LINKAGE
}  // namespace softmax8
#if LK_ISA_X86
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace softmax16 {
#include "vec_math.inc"
#define LK_SOFTMAX_VEC v16f
#define LK_SOFTMAX_LINKAGE __attribute__((noinline))
#include "softmax_block.inc"
#undef LK_SOFTMAX_VEC
#undef LK_SOFTMAX_LINKAGE
}  // namespace softmax16
#pragma GCC pop_options
#endif

// Native bfloat16 GEMMs (vdpbf16ps: a pair of bf16 products added to each float32 lane). Both read
// pair panels in place and keep float32 accumulators; vdpbf16ps takes denormal bf16 inputs as 0 and
// flushes denormal results, far below SPEC §7's bfloat16 tolerance. Rows in blocks of 8, 4 and 2
// (m is even): 8 rows x 32 columns keep 16 accumulators in flight.
#if LK_ISA_X86
// S[r][j] = scale * (Q_r . K_j) for R rows and the first n columns (a multiple of 32): q2 [R][D2],
// kt2 [D2] rows kBlockN words apart. Unscaled bf16 Q is exact; scaling the float32 sums here gives
// the scores no rounding beyond the float32 path's.
template <int R>
LK_TARGET_AVX512BF16 LK_INLINE void bf16_scores_rows(const uint32_t* q2, int D2, const uint32_t* kt2, int n, float scale, float* s) {
  for (int j0 = 0; j0 < n; j0 += 32) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int i = 0; i < D2; ++i) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(kt2 + (size_t)i * kBlockN + j0);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(kt2 + (size_t)i * kBlockN + j0 + 16);
      for (int r = 0; r < R; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32((int)q2[r * D2 + i]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    const __m512 sv = _mm512_set1_ps(scale);
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(s + r * kBlockN + j0, _mm512_mul_ps(acc[r][0], sv));
      _mm512_storeu_ps(s + r * kBlockN + j0 + 16, _mm512_mul_ps(acc[r][1], sv));
    }
  }
}
// O[r][c] += sum over key pairs kk < pairs of P pair p2[r][kk] . V pair v2[kk][c], R rows, Dv columns
// (a multiple of 32); p2 rows kBlockN / 2 words apart, O rows ldo floats apart.
template <int R>
LK_TARGET_AVX512BF16 LK_INLINE void bf16_pv_rows(const uint32_t* p2, int pairs, const uint32_t* v2, int Dv, float* o, int ldo) {
  for (int c0 = 0; c0 < Dv; c0 += 32) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm512_loadu_ps(o + (size_t)r * ldo + c0);
      acc[r][1] = _mm512_loadu_ps(o + (size_t)r * ldo + c0 + 16);
    }
    for (int kk = 0; kk < pairs; ++kk) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(v2 + (size_t)kk * Dv + c0);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(v2 + (size_t)kk * Dv + c0 + 16);
      for (int r = 0; r < R; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32((int)p2[r * (kBlockN / 2) + kk]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(o + (size_t)r * ldo + c0, acc[r][0]);
      _mm512_storeu_ps(o + (size_t)r * ldo + c0 + 16, acc[r][1]);
    }
  }
}
// Rows of a block starting at row i of m (even): 8, then 4 and 2. (Loops, not a lambda per block: a
// lambda would not carry the entry's target attribute.)
LK_INLINE int bf16_block_rows(int m, int i) { return m - i >= 8 ? 8 : m - i >= 4 ? 4 : 2; }
// Out-of-line entries of their own (a call per block and head): an always-inline function of one
// target cannot be inlined into the generic templates that reach it before they reach the entry.
// S = scale * Q K^T over m rows and n_pad columns, each row block up to its rows' extent (masked
// blocks; as gemm_rows, columns past it stay unwritten and are never read as allowed).
LK_TARGET_AVX512BF16 void bf16_scores(int m, int n_pad, const uint32_t* q2, int D2, const uint32_t* kt2, float scale, float* s,
                                                const int* extent) {
  LK_PROF_MACS((int64_t)m * n_pad * 2 * D2);
  for (int i = 0, R = 0; i < m; i += R) {
    R = bf16_block_rows(m, i);
    const int e = rows_extent(extent, i, R, n_pad, 32);
    if (e <= 0) continue;
    const uint32_t* q = q2 + (size_t)i * D2;
    float* srow = s + (size_t)i * kBlockN;
    if (R == 8) bf16_scores_rows<8>(q, D2, kt2, e, scale, srow);
    else if (R == 4) bf16_scores_rows<4>(q, D2, kt2, e, scale, srow);
    else bf16_scores_rows<2>(q, D2, kt2, e, scale, srow);
  }
}
// O += P V: each row block's P (float32, written for every column < n_pad, 0 where masked) is
// rounded to bf16 pairs of consecutive keys up to its rows' extent rounded up to a key pair.
LK_TARGET_AVX512BF16 void bf16_pv(int m, int n_pad, const float* s, uint32_t* p2, const uint32_t* v2, int Dv, float* o, int ldo,
                                            const int* extent) {
  LK_PROF_MACS((int64_t)m * n_pad * Dv);
  for (int i = 0, R = 0; i < m; i += R) {
    R = bf16_block_rows(m, i);
    const int e = rows_extent(extent, i, R, n_pad, 2);
    if (e <= 0) continue;
    const int e32 = round_up(e, 32);  // <= n_pad, a multiple of 32
    for (int r = 0; r < R; ++r) {
      const float* srow = s + (size_t)(i + r) * kBlockN;
      uint32_t* prow = p2 + (size_t)r * (kBlockN / 2);
      for (int j = 0; j < e32; j += 32)  // keys j..j+31 become words j/2..j/2+15: low halves the even keys
        _mm512_storeu_si512(prow + j / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(srow + j + 16), _mm512_loadu_ps(srow + j)));
    }
    float* orow = o + (size_t)i * ldo;
    if (R == 8) bf16_pv_rows<8>(p2, e / 2, v2, Dv, orow, ldo);
    else if (R == 4) bf16_pv_rows<4>(p2, e / 2, v2, Dv, orow, ldo);
    else bf16_pv_rows<2>(p2, e / 2, v2, Dv, orow, ldo);
  }
}
#else
// Only the AVX512-BF16 entries call these (never instantiated elsewhere).
inline void bf16_scores(int, int, const uint32_t*, int, const uint32_t*, float, float*, const int*) { std::abort(); }
inline void bf16_pv(int, int, const float*, uint32_t*, const uint32_t*, int, float*, int, const int*) { std::abort(); }
#endif

// Online-softmax update of the task's rows with `count` keys listed in sc.keys. `masked` asks for the
// per-element rule check (blocks gathered from partial tiles); full tiles skip it.
// Non-finite values follow IEEE arithmetic over allowed pairs only (SPEC §3, cuda/common/ieee.h): a
// row that may see none of the block's keys is left untouched, the running max keeps NaN, and when a
// masked block's V rows hold a NaN / Inf, P V is accumulated by selection over each row's allowed
// keys instead of the GEMM (where a masked key's 0 weight times its NaN would leak).
template <typename Shape, bool kFewQueries>
LK_INLINE void attend_head_keys(const TileTask& t, int count, bool masked) {
  const AttentionParams& p = *t.job->p;
  Scratch& sc = *t.sc;
  const int D = p.head_dim, Dv = p.value_dim, Hkv = p.kv_heads;
  const int n_pad = round_up(count, Shape::kCols);
  const int dvp = t.dv_pad;

  float* s = sc.s.get();
  // This head's K / V row of key `j` of the block: in the tensors (rows of all heads are Hkv * D
  // apart), or in the block's widened rows (half types), which are consecutive whatever the keys.
  const bool widened = t.block_widened;
  const int64_t k_stride = widened ? (int64_t)t.block_heads * D : (int64_t)Hkv * D;
  const int64_t v_stride = widened ? (int64_t)t.block_heads * Dv : (int64_t)Hkv * Dv;
  auto key_row = [&](int j) {
    return widened ? sc.k_block.get() + j * k_stride + (t.g - t.block_g0) * D : t.job->k + ((t.k_start + sc.keys[j]) * Hkv + t.g) * D;
  };
  auto value_row = [&](int j) {
    return widened ? sc.v_block.get() + j * v_stride + (t.g - t.block_g0) * Dv : t.job->v + ((t.k_start + sc.keys[j]) * Hkv + t.g) * Dv;
  };
  // Rows of the block's keys: read in place when they are consecutive and all allowed, else gathered
  // (a masked block's V rows are copied so that their finiteness can be checked).
  const bool consecutive = t.keys_consecutive || widened;
  // Masked blocks compute each row block's scores and P V terms up to its rows' last allowed key only
  // (a causal diagonal's upper right is skipped); score columns past it hold garbage that the mask
  // and the softmax never read as allowed.
  const int* row_extent = masked ? sc.extent : nullptr;
  LK_PROF_STMT(::lk::cpu::prof::Scope s_scope(::lk::cpu::prof::kSGemm));
  if (kFewQueries && D % 8 == 0) {
    // At most 4 queries: dot products of whole key rows (read in place or through the gather list)
    // with the 4 query rows, two keys at a time (dot_2keys_4rows).
    auto krow = key_row;
    const float* q = t.q_rows;  // rows past t.rows are zero (m_pad >= 4 for every shape)
    static_assert(Shape::kRows >= 4, "four query rows exist in the padded Q tile");
    for (int j = 0; j < count; j += 2) {
      const v8f dots = dot_2keys_4rows(krow(j), krow(std::min(j + 1, count - 1)), q, D, D);  // lane r: key j, query r; 4 + r: key j + 1
      for (int r = 0; r < t.rows; ++r) {
        s[r * kBlockN + j] = dots[r];
        if (j + 1 < count) s[r * kBlockN + j + 1] = dots[4 + r];
      }
    }
  } else if (t.key_major) {
    const int n8 = round_up(count, GemmKeyMajor::kRows);
    const float* a = key_row(0);
    int lda = (int)k_stride;
    if (!consecutive || n8 != count) {
      LK_PROF_SCOPE(kKGather);
      float* rows = sc.kt.get();  // [n8][D]
      for (int j = 0; j < n8; ++j) {
        if (j < count) std::memcpy(rows + (size_t)j * D, key_row(j), sizeof(float) * D);
        else std::fill(rows + (size_t)j * D, rows + (size_t)(j + 1) * D, 0.0f);
      }
      a = rows;
      lda = D;
    }
    float* st = sc.s_keys.get();
    gemm_blocks<GemmKeyMajor>(n8, kFewRows, D, a, lda, t.q_cols, kFewRows, st, kFewRows, false);
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < count; ++j) s[r * kBlockN + j] = st[j * kFewRows + r];
  } else if (kFewQueries) {
    // not reached (few-query tiles are key-major); ends the few-query instantiation's chain here
  } else if (t.panel >= 0) {
    bool native = false;
    if constexpr (NativeBf16<Shape>::value) {
      if (t.native_bf16_s) {
        const int D2 = (D + 1) / 2;
        const uint32_t* panel = t.job->kt2_panels + (t.g * t.job->panels + t.panel) * (int64_t)D2 * kBlockN + t.panel_col;
        bf16_scores(t.m_pad, n_pad, t.q2, D2, panel, p.scale, s, row_extent);
        native = true;
      }
    }
    if (!native) {
      const float* panel = t.job->kt_panels + (t.g * t.job->panels + t.panel) * (int64_t)D * kBlockN + t.panel_col;
      gemm_rows<Shape>(t.m_pad, n_pad, D, t.q_rows, D, panel, kBlockN, s, kBlockN, false, row_extent);
    }
  } else {
    // K^T block so that S = Q K^T reads both operands row-wise: 8 x 8 register transposes.
    float* kt = sc.kt.get();
    {
      LK_PROF_SCOPE(kKGather);
      for (int j0 = 0; j0 < n_pad; j0 += 8) {
        const float* krows[8];
        for (int u = 0; u < 8; ++u) krows[u] = j0 + u < count ? key_row(j0 + u) : nullptr;
        transpose_key_rows(krows, D, kt + j0);
      }
    }
    gemm_rows<Shape>(t.m_pad, n_pad, D, t.q_rows, D, kt, kBlockN, s, kBlockN, false, row_extent);
  }

  // Masked and padding scores are never rewritten: the softmax and silu read each row's allowed bits.
  static_assert(kBlockN <= 64, "one 64-bit allowed-key mask per row");
  const uint64_t all_keys = count == 64 ? ~uint64_t{0} : (uint64_t{1} << count) - 1;

  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kSoftmax));
  if (p.normalize == kSoftmax) {
    const uint64_t* allow = masked ? sc.allow : nullptr;
#if LK_ISA_X86
    if constexpr (Shape::kWidth == 16) {
      softmax16::softmax_block(s, n_pad, t.rows, allow, all_keys, t.m, t.l, t.o, dvp, sc.seen);
    } else
#endif
    {
      softmax8::softmax_block(s, n_pad, t.rows, allow, all_keys, t.m, t.l, t.o, dvp, sc.seen);
    }
  } else {
    // HSTU pointwise attention: silu(score) / divisor over allowed pairs (silu(-inf) is NaN, as in
    // the reference); masked and padding entries are 0 by selection.
    for (int r = 0; r < t.rows; ++r) {
      float* srow = s + r * kBlockN;
      const uint64_t bits = masked ? sc.allow[r] : all_keys;
      for (int j = 0; j < n_pad; ++j) {
        const float x = srow[j];
        srow[j] = (bits >> j) & 1u ? x / (1.0f + std::exp(-x)) * p.silu_inv_divisor : 0.0f;
      }
    }
  }
  for (int r = t.rows; r < t.m_pad; ++r) std::fill(s + r * kBlockN, s + r * kBlockN + n_pad, 0.0f);

  if constexpr (NativeBf16<Shape>::value) {
    if (t.native_bf16) {  // V from its pair panel in place (attend_keys checked what the float32 path would)
      LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kPVGemm));
      const uint32_t* v2 = t.job->v2_panels + ((t.g * t.job->panels + t.panel) * (kBlockN / 2) + t.panel_col / 2) * (int64_t)Dv;
      bf16_pv(t.m_pad, n_pad, s, reinterpret_cast<uint32_t*>(sc.p2.get()), v2, Dv, t.o, dvp, row_extent);
      return;
    }
  }
  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kVCopy));
  // V rows as the GEMM's B: in place when consecutive, unpadded and (in masked blocks, where a masked
  // key's 0 weight must not meet a NaN / Inf) finite, else copied into a padded block.
  const float* vb = value_row(0);
  int ldv = (int)v_stride;
  bool v_in_place = consecutive && count == n_pad && Dv == dvp;
  if (t.panel >= 0 && Dv == dvp && t.job->v_panels) {
    // The packed panel's rows past `count` weigh 0, which a NaN / Inf among them would turn NaN.
    const int64_t vp = t.g * t.job->panels + t.panel;
    vb = t.job->v_panels + (vp * kBlockN + t.panel_col) * Dv;
    ldv = Dv;
    v_in_place = t.job->v_panel_finite[vp] || (!masked && count == n_pad);
  } else {
    for (int j = 0; masked && v_in_place && j < count; ++j) v_in_place = all_finite(value_row(j), Dv);
  }
  if (!v_in_place) {
    float* vs = sc.v.get();
    for (int j = 0; j < n_pad; ++j) {
      float* dst = vs + j * dvp;
      if (j < count) {
        std::memcpy(dst, value_row(j), sizeof(float) * Dv);
        std::fill(dst + Dv, dst + dvp, 0.0f);
      } else {
        std::fill(dst, dst + dvp, 0.0f);
      }
    }
    vb = vs;
    ldv = dvp;
    if (masked && !all_finite(vs, n_pad * dvp)) {
      // Exact path: each row adds only its allowed keys' values (a masked NaN / Inf stays out).
      for (int r = 0; r < t.rows; ++r) {
        float* orow = t.o + r * dvp;
        const float* srow = s + r * kBlockN;
        for (uint64_t bits = sc.allow[r]; bits; bits &= bits - 1) {
          const int j = __builtin_ctzll(bits);
          const float pj = srow[j];
          const float* vrow = vs + j * dvp;
          for (int c = 0; c < dvp; ++c) orow[c] += pj * vrow[c];
        }
      }
      return;
    }
  }
  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kPVGemm));
  if constexpr (kFewQueries) {  // 4-row blocks, no padding rows to multiply
    using FourRows = GemmShape<typename Shape::Vec, 4, Shape::kVecsPerRow>;
    static_assert(FourRows::kCols == Shape::kCols, "the same column padding");
    gemm_blocks<FourRows>(4, dvp, n_pad, s, kBlockN, vb, ldv, t.o, dvp, true);
  } else {
    gemm_rows<Shape, true>(t.m_pad, dvp, n_pad, s, kBlockN, vb, ldv, t.o, dvp, true, row_extent);
  }
}

// Points the task at head `i` of its group.
LK_INLINE void select_head(TileTask& t, int i) {
  const AttentionParams& p = *t.job->p;
  Scratch& sc = *t.sc;
  t.h = t.h0 + i;
  t.g = t.h / (p.heads / p.kv_heads);
  t.q_rows = sc.q.get() + (size_t)i * kMaxRows * p.head_dim;
  t.q_cols = sc.q_cols.get() + (size_t)i * p.head_dim * kFewRows;
  t.o = sc.o.get() + (size_t)i * sc.o_stride;
  t.m = sc.m[i];
  t.l = sc.l[i];
  t.q2 = sc.q2 ? reinterpret_cast<const uint32_t*>(sc.q2.get()) + (size_t)i * kMaxRows * ((p.head_dim + 1) / 2) : nullptr;
}

// One block of `count` keys (sc.keys) for every head of the group: the rule's bit sets are computed
// once, then each head runs its online-softmax step.
template <typename Shape, bool kFewQueries>
LK_INLINE void attend_keys(TileTask& t, int count, bool masked) {
  const AttentionParams& p = *t.job->p;
  // Consecutive keys inside one packed key tile (whole tiles, a causal diagonal's gathered keys, a
  // segment's run) read their K^T from its panel: no transpose per query tile.
  const int* keys = t.sc->keys;
  const int tile = keys[0] / kBlockN, col = keys[0] % kBlockN;
  t.panel = -1;
  t.panel_col = 0;
  bool consecutive = keys[count - 1] == keys[0] + count - 1;
  for (int j = 1; j < count - 1 && consecutive; ++j) consecutive = keys[j] == keys[0] + j;
  t.keys_consecutive = consecutive;
  if (!kFewQueries && consecutive && col + round_up(count, Shape::kCols) <= kBlockN) {
    t.panel = t.job->panel_of_tile[t.job->k_base[t.b] + tile];
    t.panel_col = col;
  }
  // Packed panels are consecutive per head, which hardware prefetchers follow; rows read in place
  // are not.
  if (t.panel < 0 && !masked && t.group < p.heads) {
    // The next block's rows of the group's kv heads (consecutive within a key row; the rows are all
    // heads' width apart, which hardware prefetchers miss).
    const int Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim;
    const int g_lo = t.h0 / (p.heads / Hkv), g_hi = (t.h0 + t.group - 1) / (p.heads / Hkv);
    const int64_t next = t.k_start + t.sc->keys[0] + kBlockN;
    const int ahead = (int)std::max<int64_t>(0, std::min<int64_t>(kBlockN, p.tk - next));
    const int elem = p.dtype == kFloat32 ? 4 : 2;
    const char* k_bytes = static_cast<const char*>(p.k);
    const char* v_bytes = static_cast<const char*>(p.v);
    for (int j = 0; j < ahead; ++j) {
      const char* krow = k_bytes + (next + j) * Hkv * D * elem;
      const char* vrow = v_bytes + (next + j) * Hkv * Dv * elem;
      for (int d = g_lo * D * elem; d < (g_hi + 1) * D * elem; d += 64) __builtin_prefetch(krow + d);
      for (int d = g_lo * Dv * elem; d < (g_hi + 1) * Dv * elem; d += 64) __builtin_prefetch(vrow + d);
    }
  }
  // Half types: the block's rows of the group's kv heads widened once for all its heads, unless every
  // head reads packed panels only (K^T, and V when its rows need no padding and, in masked or
  // padded blocks, its panel is all finite: else attend_head_keys copies V rows from the block).
  t.block_widened = false;
  bool panels_only = t.panel >= 0 && !t.key_major && p.value_dim == t.dv_pad;
  if (p.dtype != kFloat32 && panels_only && (masked || count != round_up(count, Shape::kCols))) {
    const int per_kv = p.heads / p.kv_heads;
    for (int g = t.h0 / per_kv; g <= (t.h0 + t.group - 1) / per_kv && panels_only; ++g)
      panels_only = t.job->v_panel_finite[g * t.job->panels + t.panel];
  }
  // Bfloat16 pair calls pack no float32 V panels: a block whose first key is not a pair's widens its rows.
  if (panels_only && !t.job->v_panels && t.panel_col % 2 != 0) panels_only = false;
  if (p.dtype != kFloat32 && !panels_only) {
    const int Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim;
    t.block_g0 = t.h0 / (p.heads / Hkv);
    t.block_heads = (t.h0 + t.group - 1) / (p.heads / Hkv) - t.block_g0 + 1;
    const uint16_t* k_half = static_cast<const uint16_t*>(p.k);
    const uint16_t* v_half = static_cast<const uint16_t*>(p.v);
    for (int j = 0; j < count; ++j) {
      const int64_t key = t.k_start + keys[j];
      widen_row(k_half + (key * Hkv + t.block_g0) * D, p.dtype, t.sc->k_block.get() + (int64_t)j * t.block_heads * D, (int64_t)t.block_heads * D);
      widen_row(v_half + (key * Hkv + t.block_g0) * Dv, p.dtype, t.sc->v_block.get() + (int64_t)j * t.block_heads * Dv, (int64_t)t.block_heads * Dv);
    }
    t.block_widened = true;
  }
  // Native bfloat16 where this block reads K^T and V from packed panels in place; a key pair of the V
  // pair panel must start at the block's first key (an even panel column).
  t.native_bf16_s = t.native_bf16 = false;
  if constexpr (NativeBf16<Shape>::value && !kFewQueries) {
    t.native_bf16_s = t.job->kt2_panels && t.panel >= 0 && !t.key_major;
    t.native_bf16 = t.native_bf16_s && panels_only && t.panel_col % 2 == 0;
    if (t.native_bf16) bf16_native_blocks.fetch_add(1, std::memory_order_relaxed);
  }
  if (masked) block_allowed_keys(t, count);
  LK_PROF_STMT(::lk::cpu::prof::totals.blocks.fetch_add(1, std::memory_order_relaxed));
  for (int i = 0; i < t.group; ++i) {
    select_head(t, i);
    LK_PROF_SCOPE(kSGemm);
    attend_head_keys<Shape, kFewQueries>(t, count, masked);
  }
}

// A gathered key list as one block. (A function, not a lambda: a lambda would not carry the
// entry's target attribute, and the kernel inlined into it would compile for the baseline ISA.)
template <typename Shape, bool kFewQueries>
LK_INLINE void run_gathered(TileTask& t, const int* keys, int count, bool masked) {
  std::memcpy(t.sc->keys, keys, sizeof(int) * count);
  attend_keys<Shape, kFewQueries>(t, count, masked);
}

// The plan's work item w (one query tile of one sequence) for one head group. Only the key tiles of
// its runs are visited: full tiles run without per-element checks, and from partial tiles only the
// keys that some query of the tile may see are gathered into dense blocks, so the work follows the
// allowed pairs even for masks as sparse as PerSRec's.
template <typename Shape, bool kFewQueries>
LK_INLINE void attend_rows(const Job& job, const PlanWork& w, int h0, int group, Scratch& sc, int row_lo, int row_hi) {
  LK_PROF_SCOPE(kClassify);
  const int b = w.seq, q_tile = w.tile;
  const AttentionParams& p = *job.p;
  TileTask t;
  t.job = &job;
  t.sc = &sc;
  t.b = b;
  t.h0 = h0;
  t.group = group;
  t.q_start = p.q_layout.offsets[b];
  t.k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)t.q_start;
  const int Lk = p.kv_layout.offsets[b + 1] - (int)t.k_start;
  const int tile_row0 = q_tile * kBlockM;
  const bool whole_tile = row_lo == 0 && row_hi == std::min(kBlockM, Lq - tile_row0);
  t.row0 = tile_row0 + row_lo;
  t.rows = row_hi - row_lo;
  // Few-query tiles read 4 padded rows (at least kRows); others pad to gemm_rows' even row count.
  t.m_pad = kFewQueries ? round_up(t.rows, Shape::kRows) : round_up(t.rows, 2);
  t.align = Lk - Lq;  // bottom-right causal alignment
  t.dv_pad = round_up(p.value_dim, Shape::kCols);
  const TileSummary q_sum = whole_tile ? job.q_tiles[job.q_base[b] + q_tile]
                                       : summarize_tokens(p.q_layout.segments, p.q_layout.roles, t.q_start + t.row0,
                                                          t.q_start + t.row0 + t.rows);
  t.qb = TileBounds{q_sum, t.row0 + t.align, t.row0 + t.rows - 1 + t.align};
  const int D = p.head_dim, H = p.heads;
  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kQSetup));

  // Scaled query rows per head; padding rows are zero and never written out.
  t.key_major = t.rows <= kFewRows;
  // Row by row over the group's heads: a row's heads are one run of group * D inputs, read in order.
  const float scale = p.scale;
  for (int r = 0; r < t.m_pad; ++r) {
    const int64_t offset = ((t.q_start + t.row0 + r) * H + h0) * D;
    for (int i = 0; i < group; ++i) {
      float* qs = sc.q.get() + ((size_t)i * kMaxRows + r) * D;
      if (r >= t.rows) {
        std::fill(qs, qs + D, 0.0f);
      } else if (job.q) {
        for (int d = 0; d < D; ++d) qs[d] = job.q[offset + i * D + d] * scale;
      } else {
        widen_row(static_cast<const uint16_t*>(p.q) + offset + i * D, p.dtype, qs, D);
        for (int d = 0; d < D; ++d) qs[d] *= scale;
      }
    }
  }
  if (job.kt2_panels && !kFewQueries && !t.key_major) {  // native bfloat16: unscaled Q rows as bf16 pairs, 0 past an odd D
    const int D2 = (D + 1) / 2;
    const uint16_t* qh = static_cast<const uint16_t*>(p.q);
    for (int i = 0; i < group; ++i) {
      uint32_t* q2 = reinterpret_cast<uint32_t*>(sc.q2.get()) + (size_t)i * kMaxRows * D2;
      for (int r = 0; r < t.m_pad; ++r) {
        uint32_t* row = q2 + (size_t)r * D2;
        if (r >= t.rows) {
          std::fill(row, row + D2, 0u);
          continue;
        }
        const uint16_t* src = qh + ((t.q_start + t.row0 + r) * H + h0 + i) * D;
        for (int d2 = 0; d2 < D2; ++d2) row[d2] = src[2 * d2] | (2 * d2 + 1 < D ? (uint32_t)src[2 * d2 + 1] << 16 : 0u);
      }
    }
  }
  for (int i = 0; i < group; ++i) {
    select_head(t, i);
    const float* qs = t.q_rows;
    if (t.key_major) {  // Q^T, scaled, zero columns past the tile's rows
      for (int d = 0; d < D; ++d)
        for (int r = 0; r < kFewRows; ++r) t.q_cols[d * kFewRows + r] = r < t.rows ? qs[r * D + d] : 0.0f;
    }
    std::fill(t.o, t.o + (size_t)t.m_pad * t.dv_pad, 0.0f);
    for (int r = 0; r < t.m_pad; ++r) {
      t.m[r] = kNegInf;
      t.l[r] = 0.0f;
    }
  }
  std::fill(sc.seen, sc.seen + t.m_pad, false);
  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kClassify));

  // Keys of partial tiles are classified one by one against the rows: those every row may see are
  // gathered into unmasked blocks (no rule check, read in place when consecutive), the others into
  // masked blocks; each list runs as soon as it holds a whole block.
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;
  int masked_keys[kBlockN], full_keys[kBlockN];
  int n_masked = 0, n_full = 0;
  KeyTileCursor cursor;
  cursor.start(job.runs, w);
  int kt = 0, cls = kTileSkip;
  while (cursor.next(&kt, &cls)) {
    const int col0 = kt * kBlockN;
    const int cols = std::min(kBlockN, Lk - col0);
    const TileBounds kb{job.k_tiles[job.k_base[b] + kt], col0, col0 + cols - 1};
    // The plan classified the key tile against the whole query tile; a row range may see more of it.
    if (cls == kTilePartial && !whole_tile) cls = classify_tile(p.rule, t.qb, kb);
    if (cls == kTileSkip) continue;
    if (cls == kTileFull) {
      for (int j = 0; j < cols; ++j) sc.keys[j] = col0 + j;
      attend_keys<Shape, kFewQueries>(t, cols, false);
      continue;
    }
    int8_t key_class[kBlockN];
    classify_partial_entries(p.rule, t.qb, kb, SplitSide::kKeys, kseg, krole, t.k_start + col0, col0, cols, key_class);
    for (int j = 0; j < cols; ++j) {
      if (key_class[j] == kTileFull) {
        full_keys[n_full++] = col0 + j;
        if (n_full == kBlockN) {
          run_gathered<Shape, kFewQueries>(t, full_keys, n_full, false);
          n_full = 0;
        }
      } else if (key_class[j] == kTilePartial) {
        masked_keys[n_masked++] = col0 + j;
        if (n_masked == kBlockN) {
          run_gathered<Shape, kFewQueries>(t, masked_keys, n_masked, true);
          n_masked = 0;
        }
      }
    }
  }
  // Leftovers that fit one block run as one masked block (a causal diagonal's seen and unseen keys):
  // one padded GEMM instead of two.
  if (n_full > 0 && n_masked > 0 && n_full + n_masked <= kBlockN) {
    int merged[kBlockN];  // in key order, as the plain gather had them
    std::merge(full_keys, full_keys + n_full, masked_keys, masked_keys + n_masked, merged);
    n_masked += n_full;
    n_full = 0;
    std::memcpy(masked_keys, merged, sizeof(int) * n_masked);
  }
  if (n_full > 0) run_gathered<Shape, kFewQueries>(t, full_keys, n_full, false);
  if (n_masked > 0) run_gathered<Shape, kFewQueries>(t, masked_keys, n_masked, true);

  const int Dv = p.value_dim;
  LK_PROF_STMT(::lk::cpu::prof::switch_to(::lk::cpu::prof::kOutput));
  for (int i = 0; i < group; ++i) {
    select_head(t, i);
    for (int r = 0; r < t.rows; ++r) {
      const int64_t qi = t.q_start + t.row0 + r;
      float* orow = t.o + r * t.dv_pad;
      // No allowed key: 0 and lse -inf. Allowed keys whose scores are all -inf: l is 0, the row NaN
      // (the reference's exp(-inf + inf)). Else l >= 1 (the max's own term) or NaN.
      const float l = t.l[r];
      const bool seen = sc.seen[r];
      float norm = 1.0f;
      if (p.normalize == kSoftmax) norm = !seen ? 0.0f : l == 0.0f ? quiet_nan() : 1.0f / l;
      if (job.out) {
        float* dst = job.out + (qi * H + t.h) * Dv;
        for (int c = 0; c < Dv; ++c) dst[c] = orow[c] * norm;
      } else {  // half types: narrowed as it is written (the O tile is not read again)
        for (int c = 0; c < Dv; ++c) orow[c] *= norm;
        narrow_row(orow, p.dtype, static_cast<uint16_t*>(p.out) + (qi * H + t.h) * Dv, Dv);
      }
      if (p.lse) p.lse[qi * H + t.h] = !seen ? kNegInf : l == 0.0f ? quiet_nan() : t.m[r] + std::log(l);
    }
  }
}

// Query tiles whose rows span several segments run one row range per segment (at most
// kMaxRowRanges), each classified on its own: under per-segment rules a tile straddling a segment
// boundary then sees most key tiles whole or not at all, instead of every key tile as partial.
constexpr int kMaxRowRanges = 4;
template <typename Shape, bool kFewQueries>
LK_INLINE void attend_tile_impl(const Job& job, const PlanWork& w, int h0, int group, Scratch& sc) {
  const AttentionParams& p = *job.p;
  const int64_t q0 = p.q_layout.offsets[w.seq] + (int64_t)w.tile * kBlockM;
  const int rows = (int)std::min<int64_t>(kBlockM, p.q_layout.offsets[w.seq + 1] - q0);
  const int32_t* qseg = p.q_layout.segments;
  int cut[kMaxRowRanges + 1] = {0};
  int ranges = 1;
  for (int r = 1; qseg && r < rows; ++r) {
    if (qseg[q0 + r] == qseg[q0 + r - 1]) continue;
    if (ranges == kMaxRowRanges) {  // too many short segments: one range, masked as before
      ranges = 1;
      break;
    }
    cut[ranges++] = r;
  }
  cut[ranges] = rows;
  for (int i = 0; i < ranges; ++i) attend_rows<Shape, kFewQueries>(job, w, h0, group, sc, cut[i], cut[i + 1]);
}

// One key tile's panels for every kv head: K^T [D][kBlockN] by 8 x 8 register transposes and V rows
// [kBlockN][Dv], zero past the tile's `cols` keys, head g's at kt_panels + g * kt_head_stride and
// v_panels + g * v_head_stride (tensor rows hold `heads` heads, of `dtype`: half types are widened as
// they are packed, 8 K rows at a time through `k_widened`, 8 x D floats). The tile's rows are read
// whole and in order, one stream per tensor that hardware prefetchers follow (a task per head read
// 256-byte slices 1 KB apart, fetched late). finite[g * finite_stride]: every V value of head g's
// panel is finite.
LK_INLINE void pack_panels(const void* k_rows, const void* v_rows, DType dtype, int heads, int D, int Dv, int cols, float* k_widened,
                           float* kt_panels, float* v_panels, int64_t kt_head_stride, int64_t v_head_stride, uint8_t* finite,
                           int64_t finite_stride) {
  const bool f32 = dtype == kFloat32;
  const int64_t k_stride = (int64_t)heads * D, v_stride = (int64_t)heads * Dv;
  for (int j0 = 0; kt_panels && j0 < kBlockN; j0 += 8)  // null: bfloat16 reads K^T pair panels only
    for (int g = 0; g < heads; ++g) {
      const float* krows[8];
      for (int u = 0; u < 8; ++u) {
        const int64_t offset = (j0 + u) * k_stride + (int64_t)g * D;
        krows[u] = j0 + u >= cols ? nullptr : f32 ? static_cast<const float*>(k_rows) + offset : k_widened + u * D;
        if (!f32 && krows[u]) widen_row(static_cast<const uint16_t*>(k_rows) + offset, dtype, k_widened + u * D, D);
      }
      transpose_key_rows(krows, D, kt_panels + g * kt_head_stride + j0);
    }
  if (!v_panels) return;  // bfloat16 pairs: V pair panels only, finiteness from their bits (pack_bf16_pairs)
  for (int j = 0; j < kBlockN; ++j)
    for (int g = 0; g < heads; ++g) {
      float* vrow = v_panels + g * v_head_stride + (int64_t)j * Dv;
      const int64_t offset = j * v_stride + (int64_t)g * Dv;
      if (j >= cols) std::fill(vrow, vrow + Dv, 0.0f);
      else if (f32) std::memcpy(vrow, static_cast<const float*>(v_rows) + offset, sizeof(float) * Dv);
      else widen_row(static_cast<const uint16_t*>(v_rows) + offset, dtype, vrow, Dv);
    }
  for (int g = 0; g < heads; ++g) finite[g * finite_stride] = all_finite(v_panels + g * v_head_stride, kBlockN * Dv);  // kBlockN * Dv: a multiple of 8
}

// The same tile's bfloat16 pair panels (Job::kt2_panels / v2_panels), head g's at kt2 + g *
// kt2_head_stride and v2 + g * v2_head_stride, straight from the bf16 bits. K^T: 8 keys' rows of
// words (a key row read as (D + 1) / 2 words, 0 past an odd D) through k_words (8 x D floats) and
// the 8 x 8 register transposes of 32-bit lanes (shuffles: the bits are moved, never converted).
LK_INLINE void pack_bf16_pairs(const uint16_t* k_rows, const uint16_t* v_rows, int heads, int D, int Dv, int cols, float* k_words,
                               uint32_t* kt2, uint32_t* v2, int64_t kt2_head_stride, int64_t v2_head_stride, uint8_t* finite,
                               int64_t finite_stride) {
  const int D2 = (D + 1) / 2, d8 = D2 / 8 * 8;
  const int64_t k_stride = (int64_t)heads * D, v_stride = (int64_t)heads * Dv;
  uint32_t* words = reinterpret_cast<uint32_t*>(k_words);  // [8][D2]
  for (int j0 = 0; j0 < kBlockN; j0 += 8)
    for (int g = 0; g < heads; ++g) {
      for (int u = 0; u < 8; ++u) {
        uint32_t* w = words + u * D2;
        if (j0 + u >= cols) {
          std::fill(w, w + D2, 0u);
          continue;
        }
        const uint16_t* src = k_rows + (j0 + u) * k_stride + (int64_t)g * D;
        std::memcpy(w, src, sizeof(uint16_t) * D);
        if (D % 2) w[D2 - 1] &= 0xffffu;  // little-endian: the pad is the high half
      }
      uint32_t* kt = kt2 + g * kt2_head_stride + j0;
      for (int d = 0; d < d8; d += 8) {
        v8f x[8];
        for (int u = 0; u < 8; ++u) std::memcpy(&x[u], words + u * D2 + d, sizeof x[u]);
        transpose8x8(x);
        for (int u = 0; u < 8; ++u) std::memcpy(kt + (d + u) * kBlockN, &x[u], sizeof x[u]);
      }
      for (int d = d8; d < D2; ++d)
        for (int u = 0; u < 8; ++u) kt[d * kBlockN + u] = words[u * D2 + d];
    }
  // V: rows 2kk and 2kk + 1 interleaved, 16 columns at a time.
  typedef uint16_t v16u __attribute__((vector_size(32)));
  typedef uint16_t v32u __attribute__((vector_size(64)));
  const int c16 = Dv / 16 * 16;
  for (int kk = 0; kk < kBlockN / 2; ++kk)
    for (int g = 0; g < heads; ++g) {
      const int j = 2 * kk;
      const uint16_t* a = j < cols ? v_rows + j * v_stride + (int64_t)g * Dv : nullptr;
      const uint16_t* b = j + 1 < cols ? v_rows + (j + 1) * v_stride + (int64_t)g * Dv : nullptr;
      uint32_t* dst = v2 + g * v2_head_stride + (int64_t)kk * Dv;
      for (int c = 0; c < c16; c += 16) {
        v16u x = {}, y = {};
        if (a) std::memcpy(&x, a + c, sizeof x);
        if (b) std::memcpy(&y, b + c, sizeof y);
        const v32u xy = __builtin_shufflevector(x, y, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27,
                                                12, 28, 13, 29, 14, 30, 15, 31);
        std::memcpy(dst + c, &xy, sizeof xy);
      }
      for (int c = c16; c < Dv; ++c) dst[c] = (a ? a[c] : 0u) | (b ? (uint32_t)b[c] << 16 : 0u);
    }
  // finite[g]: no bf16 of head g's V pair panel has an all-ones exponent (Inf / NaN); the padding is 0.
  for (int g = 0; g < heads; ++g) {
    const uint32_t* w = v2 + g * v2_head_stride;
    uint32_t any = 0;
    for (int64_t i = 0; i < (int64_t)kBlockN / 2 * Dv; ++i) {
      const uint32_t x = w[i];
      any |= ((x & 0x7f80u) == 0x7f80u) | ((x & 0x7f800000u) == 0x7f800000u);
    }
    finite[g * finite_stride] = any == 0;
  }
}

// kt2 / v2 (bfloat16 pair panels) are null except for bfloat16 on the AVX512-BF16 path.
#define LK_PACK_ENTRY(name, attr)                                                                                     \
  attr void name(const void* k, const void* v, DType dtype, int heads, int D, int Dv, int cols, float* kw, float* kt, float* vp, \
                 int64_t kt_stride, int64_t v_stride, uint8_t* finite, int64_t finite_stride, uint32_t* kt2, uint32_t* v2,     \
                 int64_t kt2_stride, int64_t v2_stride) {                                                                       \
    pack_panels(k, v, dtype, heads, D, Dv, cols, kw, kt, vp, kt_stride, v_stride, finite, finite_stride);                      \
    if (kt2)                                                                                                                    \
      pack_bf16_pairs(static_cast<const uint16_t*>(k), static_cast<const uint16_t*>(v), heads, D, Dv, cols, kw, kt2, v2,        \
                      kt2_stride, v2_stride, finite, finite_stride);                                                            \
  }
#if LK_ISA_X86
LK_PACK_ENTRY(pack_panels_avx512bf16, LK_TARGET_AVX512BF16)
LK_PACK_ENTRY(pack_panels_avx512, LK_TARGET_AVX512)
LK_PACK_ENTRY(pack_panels_avx2, LK_TARGET_AVX2)
#endif
LK_PACK_ENTRY(pack_panels_portable, )
#undef LK_PACK_ENTRY
using PackPanelFn = void (*)(const void*, const void*, DType, int, int, int, int, float*, float*, float*, int64_t, int64_t, uint8_t*,
                             int64_t, uint32_t*, uint32_t*, int64_t, int64_t);
const IsaTable<PackPanelFn> kPackPanel = {{pack_panels_portable, nullptr, LK_IF_X86(pack_panels_avx2), LK_IF_X86(pack_panels_avx512),
                                           LK_IF_X86(pack_panels_avx512bf16)}};

// One entry per instruction set, each compiled for it (native/cpu/isa.h). Tiles of at most 4 queries
// have their own entries (dot-product Q K^T, 4-row P V), so the large tiles' code stays compact.
#define LK_ATTEND_ENTRIES(name, attr, Shape)                                                          \
  attr void name(const Job& j, const PlanWork& w, int h, int n, Scratch& s) {                       \
    attend_tile_impl<Shape, false>(j, w, h, n, s);                                                    \
  }                                                                                                   \
  attr void name##_few(const Job& j, const PlanWork& w, int h, int n, Scratch& s) {                 \
    attend_tile_impl<Shape, true>(j, w, h, n, s);                                                     \
  }
#if LK_ISA_X86
LK_ATTEND_ENTRIES(attend_tile_avx512bf16, LK_TARGET_AVX512BF16, GemmAvx512Bf16)
LK_ATTEND_ENTRIES(attend_tile_avx512, LK_TARGET_AVX512, GemmAvx512Tile)
LK_ATTEND_ENTRIES(attend_tile_avx2, LK_TARGET_AVX2, GemmAvx2)
#endif
#if LK_ISA_NEON
LK_ATTEND_ENTRIES(attend_tile_neon, , GemmNeon)
#endif
LK_ATTEND_ENTRIES(attend_tile_portable, , GemmBaseline)
#undef LK_ATTEND_ENTRIES

// (job, work item, first head, heads in the group, scratch)
using AttendTileFn = void (*)(const Job&, const PlanWork&, int, int, Scratch&);
const IsaTable<AttendTileFn> kAttendTile = {{attend_tile_portable, LK_IF_NEON(attend_tile_neon), LK_IF_X86(attend_tile_avx2),
                                             LK_IF_X86(attend_tile_avx512), LK_IF_X86(attend_tile_avx512bf16)}};
const IsaTable<AttendTileFn> kAttendFewTile = {{attend_tile_portable_few, LK_IF_NEON(attend_tile_neon_few),
                                                LK_IF_X86(attend_tile_avx2_few), LK_IF_X86(attend_tile_avx512_few),
                                                LK_IF_X86(attend_tile_avx512bf16_few)}};

// Heads per task: up to kGroupColumns columns of Q K^T work, so that the group shares one
// classification, mask bit set and row-range split per key block, and reads its Q and writes its O
// rows as whole H * D runs. At D = 64 one head per task redid them for every head: with memory-token
// masks (~100 keys per row) they took ~15% of the kernel (phase profile, README #14). When every
// query tile is a few-query tile (cross attention of a few candidates over a long history), all heads
// are grouped so that whole K / V rows stream once per key block. Groups shrink while there would be
// too few tasks to balance the pool.
constexpr int kGroupColumns = 256;
int group_heads(const AttentionParams& p, const std::vector<int32_t>& q_base, int threads) {
  int max_rows = 0;
  for (int b = 0; b < p.batch; ++b) max_rows = std::max(max_rows, p.q_layout.offsets[b + 1] - p.q_layout.offsets[b]);
  int group = max_rows <= kFewRows ? p.heads : std::max(1, kGroupColumns / std::max(p.head_dim, p.value_dim));
  group = std::min({group, p.heads, kMaxGroupHeads});
  const int64_t tiles = q_base[(size_t)p.batch];
  while (group > 1 && tiles * ((p.heads + group - 1) / group) < 4 * (int64_t)threads) group = (group + 1) / 2;
  return group;
}

// Panel storage kept between calls: a fresh multi-megabyte allocation is mapped anew by the C library
// and each of its 4 KiB pages faults and is zeroed on first touch (~10% of a memory-token mask's
// call on 8 x 1024 tokens). One spare of at most kMaxSpareFloats is kept (the largest given back),
// so the memory retained is bounded.
constexpr size_t kMaxSpareFloats = size_t{16} << 20;  // 64 MiB
struct PanelStorage {
  FloatBuffer data;
  size_t floats = 0;
};
std::mutex spare_panels_mutex;
PanelStorage spare_panels;

PanelStorage take_panel_storage(size_t floats) {
  {
    std::lock_guard<std::mutex> lock(spare_panels_mutex);
    if (spare_panels.data && spare_panels.floats >= floats) {
      PanelStorage s{std::move(spare_panels.data), spare_panels.floats};
      spare_panels.floats = 0;
      return s;
    }
  }
  return PanelStorage{alloc_floats(floats), floats};
}

void give_back_panel_storage(PanelStorage s) {
  if (s.floats > kMaxSpareFloats) return;
  std::lock_guard<std::mutex> lock(spare_panels_mutex);
  if (!spare_panels.data || s.floats > spare_panels.floats) spare_panels = std::move(s);
}

// The order in which the pool hands out (work item, head group) tasks: per sequence and head group,
// the plan's work items heaviest first, and the (sequence, head group)s in the order of their
// heaviest item. Consecutive tasks then walk the same packed K^T / V panels (512 KB for 1,024 keys
// at D = 64) while they are still in the core's L2; one query tile's heads one after another (the
// plan's order with the heads innermost) fetched every block's panels from L3 (a 16-tile walk took
// ~9.0 instead of ~5.8 us per block in a microbenchmark, AVX2).
struct TaskRef {
  int32_t work, head_group;
};
std::vector<TaskRef> task_order(const std::vector<PlanWork>& work, int batch, int n_groups) {
  std::vector<int32_t> rank((size_t)batch, -1), seq_of_rank;  // sequences by their heaviest item
  std::vector<int32_t> items((size_t)batch + 1, 0);           // work items per sequence, then prefix sums
  for (const PlanWork& w : work) {
    if (rank[(size_t)w.seq] < 0) {
      rank[(size_t)w.seq] = (int32_t)seq_of_rank.size();
      seq_of_rank.push_back(w.seq);
    }
    ++items[(size_t)w.seq + 1];
  }
  for (int b = 0; b < batch; ++b) items[(size_t)b + 1] += items[(size_t)b];
  std::vector<int32_t> by_seq(work.size()), fill(items.begin(), items.end() - 1);
  for (size_t i = 0; i < work.size(); ++i) by_seq[(size_t)fill[(size_t)work[i].seq]++] = (int32_t)i;  // stable
  std::vector<TaskRef> order;
  order.reserve(work.size() * (size_t)n_groups);
  for (const int32_t b : seq_of_rank)
    for (int hg = 0; hg < n_groups; ++hg)
      for (int32_t i = items[(size_t)b]; i < items[(size_t)b + 1]; ++i) order.push_back(TaskRef{by_seq[(size_t)i], hg});
  return order;
}

}  // namespace

void masked_attention(const AttentionParams& p, PlanState* plan) {
  if (heads_major_fits(p)) {  // few-query cross attention, small heads (attention_heads_cpu.h)
    heads_major_attention(p);
    return;
  }
  if (heads_lanes_fits(p)) {  // several small heads over short sequences (attention_lanes_cpu.h)
    heads_lanes_attention(p);
    return;
  }
  // float32 tensors are read and written in place; half types are widened and narrowed as the
  // kernel loads and stores them (Job).
  const bool f32 = p.dtype == kFloat32;
  const float* q = f32 ? static_cast<const float*>(p.q) : nullptr;
  const float* k = f32 ? static_cast<const float*>(p.k) : nullptr;
  const float* v = f32 ? static_cast<const float*>(p.v) : nullptr;
  float* out = f32 ? static_cast<float*>(p.out) : nullptr;

  // The plan: the MaskPlan's (built once, kept) or one for this call. Only real tiles exist: an
  // empty sequence costs a prefix-sum entry, whatever the longest one is.
  std::unique_ptr<CpuPlanGeometry> own;
  const CpuPlanGeometry* g = nullptr;
  if (plan) {
    g = &cpu_plan_geometry(*plan);
  } else {
    own = build_cpu_plan(plan_inputs_of(p));
    g = own.get();
  }
  const std::vector<int32_t>& q_base = g->q_base;
  const std::vector<int32_t>& k_base = g->k_base;
  ThreadPool& pool = ThreadPool::shared();
  // K^T panels for key tiles that several query tiles visit and at least one sees whole (one
  // transpose per key tile and head instead of one per query tile; partial tiles are gathered and
  // never read a panel); zero columns past a short tile's keys.
  std::vector<int64_t> panel_of_tile((size_t)k_base[(size_t)p.batch], -1);
  std::vector<std::pair<int, int>> panel_tiles;  // (sequence, key tile)
  for (int b = 0; b < p.batch; ++b) {
    const int n_q = q_base[(size_t)b + 1] - q_base[(size_t)b];
    if (n_q < 2) continue;
    const int Lq = p.q_layout.offsets[b + 1] - p.q_layout.offsets[b];
    const int Lk = p.kv_layout.offsets[b + 1] - p.kv_layout.offsets[b];
    for (int t = 0; t < k_base[(size_t)b + 1] - k_base[(size_t)b]; ++t) {
      const int col0 = t * kBlockN;
      const TileBounds kb{g->k_tiles[(size_t)(k_base[(size_t)b] + t)], col0, std::min(Lk, col0 + kBlockN) - 1};
      bool full_somewhere = false;
      for (int qt = 0; qt < n_q && !full_somewhere; ++qt) {
        const int row0 = qt * kBlockM, rows = std::min(kBlockM, Lq - row0);
        const TileBounds qb{g->q_tiles[(size_t)(q_base[(size_t)b] + qt)], row0 + Lk - Lq, row0 + rows - 1 + Lk - Lq};
        full_somewhere = classify_tile(p.rule, qb, kb) == kTileFull;
      }
      if (!full_somewhere) continue;
      panel_of_tile[(size_t)(k_base[(size_t)b] + t)] = (int64_t)panel_tiles.size();
      panel_tiles.emplace_back(b, t);
    }
  }
  const int D = p.head_dim, Dv = p.value_dim, Hkv = p.kv_heads;
  const int64_t panels = (int64_t)panel_tiles.size();
  // bfloat16 on AVX512-BF16: pair panels (the native blocks' operands, words in float storage) in
  // place of the float32 K^T panels, and beside the float32 V panels (blocks whose P V is not native).
  const bool bf16_pairs = p.dtype == kBFloat16 && active_isa() == Isa::kAvx512Bf16 && Dv % kBf16Cols == 0;
  const size_t kt_floats = bf16_pairs ? 0 : (size_t)D * kBlockN, v_floats = bf16_pairs ? 0 : (size_t)kBlockN * Dv;
  const size_t kt2_words = bf16_pairs ? (size_t)((D + 1) / 2) * kBlockN : 0, v2_words = bf16_pairs ? (size_t)kBlockN / 2 * Dv : 0;
  PanelStorage storage = take_panel_storage(panels * Hkv * (kt_floats + v_floats + kt2_words + v2_words));
  float* const kt_panels = storage.data.get();
  float* const v_panels = bf16_pairs ? nullptr : kt_panels + panels * Hkv * kt_floats;  // bfloat16 pairs: V pair panels only
  uint32_t* const kt2_panels = bf16_pairs ? reinterpret_cast<uint32_t*>(kt_panels) : nullptr;
  uint32_t* const v2_panels = bf16_pairs ? kt2_panels + panels * Hkv * kt2_words : nullptr;
  std::vector<uint8_t> v_panel_finite((size_t)(panels * Hkv));
  const PackPanelFn pack = isa_pick(kPackPanel);
  const size_t elem = f32 ? 4 : 2;
  std::vector<FloatBuffer> k_widened(pool.size());  // per worker: 8 widened K rows of half types
  if (!f32)
    for (auto& rows : k_widened) rows = alloc_floats((size_t)8 * D);
  LK_PROF_STMT(::lk::cpu::prof::totals.calls.fetch_add(1); std::atomic<uint64_t> prof_busy{0}; uint64_t prof_t0 = __rdtsc());
  pool.parallel_for(panels, [&](int64_t i, int worker) {  // i = packed tile, all kv heads
    LK_PROF_STMT(const uint64_t task_t0 = __rdtsc(); ::lk::cpu::prof::switch_to(::lk::cpu::prof::kPack));
    const auto [b, t] = panel_tiles[(size_t)i];
    const int64_t key0 = p.kv_layout.offsets[b] + (int64_t)t * kBlockN;
    const int cols = (int)std::min<int64_t>(kBlockN, p.kv_layout.offsets[b + 1] - key0);
    pack(static_cast<const char*>(p.k) + key0 * Hkv * D * elem, static_cast<const char*>(p.v) + key0 * Hkv * Dv * elem, p.dtype, Hkv, D,
         Dv, cols, k_widened[(size_t)worker].get(), bf16_pairs ? nullptr : kt_panels + (size_t)i * kt_floats, bf16_pairs ? nullptr : v_panels + (size_t)i * v_floats,
         panels * (int64_t)kt_floats, panels * (int64_t)v_floats, v_panel_finite.data() + i, panels,
         bf16_pairs ? kt2_panels + (size_t)i * kt2_words : nullptr, bf16_pairs ? v2_panels + (size_t)i * v2_words : nullptr,
         panels * (int64_t)kt2_words, panels * (int64_t)v2_words);
    LK_PROF_STMT(::lk::cpu::prof::stop(); prof_busy.fetch_add(__rdtsc() - task_t0));
  });
  const Job job{&p, q, k, v, out, g->q_tiles.data(), g->k_tiles.data(), q_base.data(), k_base.data(),
                kt_panels, v_panels, v_panel_finite.data(), panel_of_tile.data(), panels, g->runs.data(), kt2_panels, v2_panels};

  // Tasks = (work item, head group), heaviest work items first.
  const std::vector<PlanWork>& tasks = g->work;

  const int group = group_heads(p, q_base, pool.size());
  const int n_groups = (p.heads + group - 1) / group;
  std::vector<Scratch> scratch(pool.size());
  // The kv heads of a group's heads (GQA): group consecutive heads span at most this many.
  const int group_kv_heads = std::min(p.kv_heads, (group - 1) / (p.heads / p.kv_heads) + 2);
  for (auto& sc : scratch) sc.init(p.head_dim, p.value_dim, group, group_kv_heads, p.dtype, bf16_pairs);
  const AttendTileFn attend_tile = isa_pick(kAttendTile);  // one path for the whole call
  const AttendTileFn attend_few_tile = isa_pick(kAttendFewTile);
  const std::vector<TaskRef> order = task_order(tasks, p.batch, n_groups);
  pool.parallel_for((int64_t)order.size(), [&](int64_t i, int worker) {
    LK_PROF_STMT(const uint64_t task_t0 = __rdtsc());
    const PlanWork& w = tasks[(size_t)order[(size_t)i].work];
    const int h0 = order[(size_t)i].head_group * group;
    const int rows = p.q_layout.offsets[w.seq + 1] - p.q_layout.offsets[w.seq] - w.tile * kBlockM;
    (rows <= 4 ? attend_few_tile : attend_tile)(job, w, h0, std::min(group, p.heads - h0), scratch[worker]);
    LK_PROF_STMT(::lk::cpu::prof::stop(); prof_busy.fetch_add(__rdtsc() - task_t0));
  });
  // Idle: the threads' time inside the two parallel_fors (and the scratch set-up between them) that no task used.
  LK_PROF_STMT(::lk::cpu::prof::totals.cycles[::lk::cpu::prof::kIdle].fetch_add((__rdtsc() - prof_t0) * pool.size() - prof_busy.load()));

  give_back_panel_storage(std::move(storage));
}

// exp_vec over n floats on the active ISA's code generation, for its accuracy test (test/cpu-exp.test.ts):
// the softmax's exp as the kernels compile it, not a copy; 16 lanes on AVX-512 (the tiled softmax's
// width there), 8 elsewhere.
#if LK_ISA_X86
LK_TARGET_AVX512 void exp_lanes_avx512(const float* in, float* out, int64_t n) { softmax16::exp_array<v16f>(in, out, n); }
LK_TARGET_AVX2 void exp_lanes_avx2(const float* in, float* out, int64_t n) { exp_array<v8f>(in, out, n); }
#endif
void exp_lanes_portable(const float* in, float* out, int64_t n) { exp_array<v8f>(in, out, n); }
using ExpLanesFn = void (*)(const float*, float*, int64_t);
const IsaTable<ExpLanesFn> kExpLanes = {{exp_lanes_portable, nullptr, LK_IF_X86(exp_lanes_avx2), LK_IF_X86(exp_lanes_avx512), nullptr}};

void exp_lanes(const float* in, float* out, int64_t n) { isa_pick(kExpLanes)(in, out, n); }

int64_t bf16_native_block_count() { return bf16_native_blocks.load(std::memory_order_relaxed); }

}  // namespace lk::cpu
