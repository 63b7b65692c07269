#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <vector>

#include "../../cuda/common/half_convert.h"
#include "../../cuda/common/ieee.h"
#include "../../cuda/common/tile_plan.h"
#include "../thread_pool.h"
#include "convert.h"
#include "isa.h"
#include "simd.h"

namespace lk::cpu {
namespace {

constexpr int kBlockM = 32;    // query rows per task
constexpr int kBlockN = 64;    // keys per block of the key loop
constexpr int kMaxRows = 36;   // kBlockM rounded up to any micro-kernel's row count
constexpr int kMaxCols = 256;  // value_dim rounded up to any micro-kernel's column count
constexpr float kNegInf = -INFINITY;
// Query tiles of at most kFewRows rows (cross attention of a few candidates over a long history)
// compute S^T = K Q^T: key rows are read in place as the GEMM's rows, instead of transposing a K
// block whose cost would be spread over only a few query rows.
constexpr int kFewRows = 8;
using GemmKeyMajor = GemmShape<v8f, 8, 1>;  // 8 keys x 8 query rows; 8 divides kBlockN
static_assert(kBlockN % GemmKeyMajor::kRows == 0, "key blocks must split into key-major GEMM rows");

int round_up(int x, int m) { return (x + m - 1) / m * m; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using FloatBuffer = std::unique_ptr<float[], AlignedFree>;

FloatBuffer alloc_floats(size_t n) {
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  return FloatBuffer(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// Inputs as float32: borrowed when already float32, converted otherwise.
struct Float32View {
  const float* data = nullptr;
  FloatBuffer owned;
};

Float32View as_float32(const void* src, DType dtype, int64_t count) {
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

// Per-worker tiles, padded so the micro-kernels never need edge cases.
struct Scratch {
  FloatBuffer q, kt, s, v, o;
  FloatBuffer q_cols, s_keys;  // key-major path: Q^T [D][kFewRows], S^T [kBlockN][kFewRows]
  float m[kMaxRows], l[kMaxRows];
  uint64_t allow[kMaxRows];  // masked blocks: bit j of row r set when the row may see key j
  bool seen[kMaxRows];       // the row has met an allowed key
  int keys[kBlockN];  // key positions (inside the sequence) of the block being computed
  int32_t key_role[kBlockN], key_seg[kBlockN], key_pos[kBlockN];  // masked blocks: the keys' attributes
  void init(int head_dim) {
    q = alloc_floats((size_t)kMaxRows * head_dim);
    kt = alloc_floats((size_t)head_dim * kBlockN);
    s = alloc_floats((size_t)kMaxRows * kBlockN);
    v = alloc_floats((size_t)kBlockN * kMaxCols);
    o = alloc_floats((size_t)kMaxRows * kMaxCols);
    q_cols = alloc_floats((size_t)head_dim * kFewRows);
    s_keys = alloc_floats((size_t)kBlockN * kFewRows);
  }
};

struct Job {
  const AttentionParams* p;
  const float* q;
  const float* k;
  const float* v;
  float* out;  // float32 [tq, heads, value_dim]
  const TileSummary* q_tiles;  // every real query tile: sequence b's are [q_base[b], q_base[b + 1])
  const TileSummary* k_tiles;  // every real key tile, likewise by k_base
  const int32_t* q_base;
  const int32_t* k_base;
  // K^T panels [D][kBlockN] per (key tile, kv head), packed once and shared by every query tile of
  // the sequence: panel_of_tile[key tile] indexes them, -1 for sequences of one query tile.
  const float* kt_panels;
  const int64_t* panel_of_tile;
};

// Everything one (sequence, query tile, head) task needs while it walks its keys.
struct TileTask {
  const Job* job;
  Scratch* sc;
  int b, h, g;
  int64_t q_start, k_start;
  int row0, rows, m_pad, align;
  int dv_pad;
  bool key_major;  // rows <= kFewRows
  const float* panel;  // the current full key tile's packed K^T panel, or null
  TileBounds qb;
};

// seg_admits (cuda/common/mask_rules.h) as flags over the cases a key's segment / position can be
// in relative to the query's, so that a row's mask over a block is a few lane-wise operations.
constexpr int32_t kAdmitSame = 1, kAdmitEarlier = 2, kAdmitLater = 4, kAdmitSelf = 8;
inline int32_t seg_admit_flags(uint8_t rel) {
  switch (rel) {
    case kSegSelf: return kAdmitSelf;
    case kSegSame: return kAdmitSame;
    case kSegEarlier: return kAdmitEarlier;
    case kSegSameOrEarlier: return kAdmitSame | kAdmitEarlier;
    case kSegAny: return kAdmitSame | kAdmitEarlier | kAdmitLater;
    default: return 0;
  }
}

// Masks the scores of a gathered block (keys sc.keys[0, count)) by the rule: each row's allowed keys
// become a bit set (sc.allow) and its masked scores -inf. Key roles / segments / positions are read
// once per block; each row then costs ~10 vector operations per 8 keys, not a rule lookup per pair.
LK_INLINE void apply_block_mask(const TileTask& t, int count) {
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
    float* srow = sc.s.get() + r * kBlockN;
    const int64_t qi = t.q_start + t.row0 + r;
    const int rq = qrole ? qrole[qi] : 0;
    const v8i sq = splat_int(qseg ? qseg[qi] : 0), pq = splat_int(t.row0 + r + t.align);
    v8i flags_of[kNumRoles], causal_of[kNumRoles];
    for (int rk = 0; rk < kNumRoles; ++rk) {
      flags_of[rk] = splat_int(seg_admit_flags(p.rule.seg[rq][rk]));
      causal_of[rk] = splat_int(p.rule.causal[rq][rk] ? -1 : 0);
    }
    uint64_t bits = 0;
    for (int j = 0; j < n8; j += 8) {
      v8i role, seg, pos;
      std::memcpy(&role, sc.key_role + j, sizeof role);
      std::memcpy(&seg, sc.key_seg + j, sizeof seg);
      std::memcpy(&pos, sc.key_pos + j, sizeof pos);
      const v8i flags = role == 0 ? flags_of[0] : (role == 1 ? flags_of[1] : (role == 2 ? flags_of[2] : v8i{}));
      const v8i causal = role == 0 ? causal_of[0] : (role == 1 ? causal_of[1] : causal_of[2]);
      const v8i admit = ((seg == sq) & ((flags & kAdmitSame) != 0)) | ((seg < sq) & ((flags & kAdmitEarlier) != 0)) |
                        ((seg > sq) & ((flags & kAdmitLater) != 0)) | ((pos == pq) & ((flags & kAdmitSelf) != 0));
      const v8i ok = admit & (~causal | (pos <= pq));
      v8f sv;
      std::memcpy(&sv, srow + j, sizeof sv);
      sv = ok != 0 ? sv : splat(kNegInf);
      std::memcpy(srow + j, &sv, sizeof sv);
      for (int u = 0; u < 8; ++u) bits |= (uint64_t)(ok[u] & 1) << (j + u);
    }
    sc.allow[r] = bits;
  }
}

// Online-softmax update of the task's rows with `count` keys listed in sc.keys. `masked` asks for the
// per-element rule check (blocks gathered from partial tiles); full tiles skip it.
// Non-finite values follow IEEE arithmetic over allowed pairs only (SPEC §3, cuda/common/ieee.h): a
// row that may see none of the block's keys is left untouched, the running max keeps NaN, and when a
// masked block's V rows hold a NaN / Inf, P V is accumulated by selection over each row's allowed
// keys instead of the GEMM (where a masked key's 0 weight times its NaN would leak).
template <typename Shape>
LK_INLINE void attend_keys(const TileTask& t, int count, bool masked) {
  const AttentionParams& p = *t.job->p;
  Scratch& sc = *t.sc;
  const int D = p.head_dim, Dv = p.value_dim, Hkv = p.kv_heads;
  const int n_pad = round_up(count, Shape::kCols);
  const int dvp = t.dv_pad;

  float* s = sc.s.get();
  // This head's K / V row of key `j` of the packed batch (rows of all heads are Hkv * D apart).
  auto key_row = [&](int64_t j) { return t.job->k + (j * Hkv + t.g) * D; };
  auto value_row = [&](int64_t j) { return t.job->v + (j * Hkv + t.g) * Dv; };
  // Rows of the block's keys: read in place when they are consecutive (full tiles), else gathered.
  const bool in_place = !masked;
  const int64_t first = t.k_start + sc.keys[0];
  if (in_place) {  // the next block's rows: strided by all heads' width, which hardware prefetchers miss
    const int64_t next = first + kBlockN;
    const int ahead = (int)std::max<int64_t>(0, std::min<int64_t>(kBlockN, p.tk - next));
    for (int j = 0; j < ahead; ++j) {
      for (int d = 0; d < D; d += 16) __builtin_prefetch(key_row(next + j) + d);
      for (int d = 0; d < Dv; d += 16) __builtin_prefetch(value_row(next + j) + d);
    }
  }
  if (t.key_major) {
    const int n8 = round_up(count, GemmKeyMajor::kRows);
    const float* a = key_row(first);
    int lda = Hkv * D;
    if (!in_place || n8 != count) {
      float* rows = sc.kt.get();  // [n8][D]
      for (int j = 0; j < n8; ++j) {
        if (j < count) std::memcpy(rows + (size_t)j * D, key_row(t.k_start + sc.keys[j]), sizeof(float) * D);
        else std::fill(rows + (size_t)j * D, rows + (size_t)(j + 1) * D, 0.0f);
      }
      a = rows;
      lda = D;
    }
    float* st = sc.s_keys.get();
    gemm_blocks<GemmKeyMajor>(n8, kFewRows, D, a, lda, sc.q_cols.get(), kFewRows, st, kFewRows, false);
    for (int r = 0; r < t.rows; ++r)
      for (int j = 0; j < count; ++j) s[r * kBlockN + j] = st[j * kFewRows + r];
  } else if (!masked && t.panel) {
    gemm_blocks<Shape>(t.m_pad, n_pad, D, sc.q.get(), D, t.panel, kBlockN, s, kBlockN, false);
  } else {
    // K^T block so that S = Q K^T reads both operands row-wise.
    float* kt = sc.kt.get();
    for (int j = 0; j < n_pad; ++j) {
      if (j < count) {
        const float* krow = key_row(t.k_start + sc.keys[j]);
        for (int d = 0; d < D; ++d) kt[d * kBlockN + j] = krow[d];
      } else {
        for (int d = 0; d < D; ++d) kt[d * kBlockN + j] = 0.0f;
      }
    }
    gemm_blocks<Shape>(t.m_pad, n_pad, D, sc.q.get(), D, kt, kBlockN, s, kBlockN, false);
  }

  for (int r = 0; r < t.rows; ++r)
    for (int j = count; j < n_pad; ++j) s[r * kBlockN + j] = kNegInf;
  if (masked) apply_block_mask(t, count);
  static_assert(kBlockN <= 64, "one 64-bit allowed-key mask per row");
  const uint64_t all_keys = count == 64 ? ~uint64_t{0} : (uint64_t{1} << count) - 1;
  auto allowed_keys = [&](int r) { return masked ? sc.allow[r] : all_keys; };

  if (p.normalize == kSoftmax) {
    for (int r = 0; r < t.rows; ++r) {
      float* srow = s + r * kBlockN;
      if (allowed_keys(r) == 0) {  // the row sees none of these keys: they contribute nothing
        std::fill(srow, srow + n_pad, 0.0f);
        continue;
      }
      sc.seen[r] = true;
      v8f mx = splat(kNegInf);
      for (int j = 0; j < n_pad; j += 8) mx = max_keep_nan8(mx, load8(srow + j));
      // m_old is -inf (and l 0) until the row met an allowed score above -inf. An allowed +inf or
      // NaN turns the row NaN through exp(inf - inf) or the NaN max, as in the reference; masked
      // entries (-inf) weigh exactly 0 whenever the row is not NaN anyway.
      const float m_old = sc.m[r];
      const float m_new = max_keep_nan(m_old, hmax_keep_nan(mx));
      if (m_new == kNegInf) {  // allowed scores all -inf so far: weight 0 for now (NaN at the end if it stays so)
        std::fill(srow, srow + n_pad, 0.0f);
        continue;
      }
      v8f sum = splat(0.0f);
      for (int j = 0; j < n_pad; j += 8) {
        const v8f e = exp8(load8(srow + j) - splat(m_new));
        store8(srow + j, e);
        sum += e;
      }
      const float alpha = std::exp(m_old - m_new);
      sc.l[r] = sc.l[r] * alpha + hsum(sum);
      sc.m[r] = m_new;
      if (alpha != 1.0f) {
        float* orow = sc.o.get() + r * dvp;
        for (int c = 0; c < dvp; ++c) orow[c] *= alpha;
      }
    }
  } else {
    // HSTU pointwise attention: silu(score) / divisor over allowed pairs (silu(-inf) is NaN, as in
    // the reference); masked and padding entries are 0 by selection.
    for (int r = 0; r < t.rows; ++r) {
      float* srow = s + r * kBlockN;
      const uint64_t bits = allowed_keys(r);
      for (int j = 0; j < n_pad; ++j) {
        const float x = srow[j];
        srow[j] = (bits >> j) & 1u ? x / (1.0f + std::exp(-x)) * p.silu_inv_divisor : 0.0f;
      }
    }
  }
  for (int r = t.rows; r < t.m_pad; ++r) std::fill(s + r * kBlockN, s + r * kBlockN + n_pad, 0.0f);

  // V rows as the GEMM's B: in place when consecutive and unpadded, else copied into a padded block.
  const float* vb = value_row(first);
  int ldv = Hkv * Dv;
  if (!in_place || count != n_pad || Dv != dvp) {
    float* vs = sc.v.get();
    for (int j = 0; j < n_pad; ++j) {
      float* dst = vs + j * dvp;
      if (j < count) {
        std::memcpy(dst, value_row(t.k_start + sc.keys[j]), sizeof(float) * Dv);
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
        float* orow = sc.o.get() + r * dvp;
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
  gemm_blocks<Shape>(t.m_pad, dvp, n_pad, s, kBlockN, vb, ldv, sc.o.get(), dvp, true);
}

// One query tile of one head of one sequence. Key tiles are classified with the shared rule table:
// skipped tiles cost nothing, full tiles run without per-element checks, and from partial tiles only
// the keys that some query of the tile may see are gathered into dense blocks, so the work follows
// the allowed pairs even for masks as sparse as PerSRec's.
template <typename Shape>
LK_INLINE void attend_tile_impl(const Job& job, int b, int q_tile, int h, Scratch& sc) {
  const AttentionParams& p = *job.p;
  TileTask t;
  t.job = &job;
  t.sc = &sc;
  t.b = b;
  t.h = h;
  t.g = h / (p.heads / p.kv_heads);
  t.q_start = p.q_layout.offsets[b];
  t.k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)t.q_start;
  const int Lk = p.kv_layout.offsets[b + 1] - (int)t.k_start;
  t.row0 = q_tile * kBlockM;
  t.rows = std::min(kBlockM, Lq - t.row0);
  t.m_pad = round_up(t.rows, Shape::kRows);
  t.align = Lk - Lq;  // bottom-right causal alignment
  t.dv_pad = round_up(p.value_dim, Shape::kCols);
  t.qb = TileBounds{job.q_tiles[job.q_base[b] + q_tile], t.row0 + t.align, t.row0 + t.rows - 1 + t.align};
  const int D = p.head_dim, H = p.heads;

  // Scaled query rows; padding rows are zero and never written out.
  float* qs = sc.q.get();
  for (int r = 0; r < t.m_pad; ++r)
    for (int d = 0; d < D; ++d)
      qs[r * D + d] = r < t.rows ? job.q[((t.q_start + t.row0 + r) * H + h) * D + d] * p.scale : 0.0f;
  t.key_major = t.rows <= kFewRows;
  t.panel = nullptr;
  if (t.key_major) {  // Q^T, scaled, zero columns past the tile's rows
    float* qc = sc.q_cols.get();
    for (int d = 0; d < D; ++d)
      for (int r = 0; r < kFewRows; ++r) qc[d * kFewRows + r] = r < t.rows ? qs[r * D + d] : 0.0f;
  }
  std::fill(sc.o.get(), sc.o.get() + (size_t)t.m_pad * t.dv_pad, 0.0f);
  for (int r = 0; r < t.m_pad; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
    sc.seen[r] = false;
  }

  const int key_end = visible_key_end(p.rule, t.qb, Lk);
  const int n_key_tiles = (key_end + kBlockN - 1) / kBlockN;
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;
  int pending = 0;  // keys gathered from partial tiles, waiting for a full block
  int full_keys[kBlockN];
  for (int kt = 0; kt < n_key_tiles; ++kt) {
    const int col0 = kt * kBlockN;
    const int cols = std::min(kBlockN, Lk - col0);
    const TileBounds kb{job.k_tiles[job.k_base[b] + kt], col0, col0 + cols - 1};
    const int cls = classify_tile(p.rule, t.qb, kb);
    if (cls == kTileSkip) continue;
    if (cls == kTileFull) {
      std::memcpy(full_keys, sc.keys, sizeof(int) * pending);  // park the pending gather
      for (int j = 0; j < cols; ++j) sc.keys[j] = col0 + j;
      const int64_t panel = job.panel_of_tile[job.k_base[b] + kt];
      t.panel = panel < 0 ? nullptr : job.kt_panels + (panel * p.kv_heads + t.g) * (int64_t)D * kBlockN;
      attend_keys<Shape>(t, cols, false);
      t.panel = nullptr;
      std::memcpy(sc.keys, full_keys, sizeof(int) * pending);
      continue;
    }
    // Classify per key role first: a role whose keys are all masked (or all allowed) needs no
    // per-key test, which keeps sparse rules such as PerSRec's cheap to walk.
    int role_class[kNumRoles] = {kTileSkip, kTileSkip, kTileSkip};
    for (int rk = 0; rk < kNumRoles; ++rk) {
      if (!(kb.sum.role_mask & (1u << rk))) continue;
      TileBounds role_only = kb;
      role_only.sum.role_mask = 1u << rk;
      role_class[rk] = classify_tile(p.rule, t.qb, role_only);
    }
    for (int j = 0; j < cols; ++j) {
      const int64_t ki = t.k_start + col0 + j;
      const int rk = krole ? krole[ki] : 0;
      if (role_class[rk] == kTileSkip) continue;
      if (role_class[rk] == kTilePartial) {
        TileBounds one;
        one.sum.seg_min = one.sum.seg_max = kseg ? kseg[ki] : 0;
        one.sum.role_mask = 1u << rk;
        one.pos_lo = one.pos_hi = col0 + j;
        if (classify_tile(p.rule, t.qb, one) == kTileSkip) continue;
      }
      sc.keys[pending++] = col0 + j;
      if (pending == kBlockN) {
        attend_keys<Shape>(t, pending, true);
        pending = 0;
      }
    }
  }
  if (pending > 0) attend_keys<Shape>(t, pending, true);

  const int Dv = p.value_dim;
  for (int r = 0; r < t.rows; ++r) {
    const int64_t qi = t.q_start + t.row0 + r;
    float* dst = job.out + (qi * H + h) * Dv;
    const float* orow = sc.o.get() + r * t.dv_pad;
    // No allowed key: 0 and lse -inf. Allowed keys whose scores are all -inf: l is 0, the row NaN
    // (the reference's exp(-inf + inf)). Else l >= 1 (the max's own term) or NaN.
    const float l = sc.l[r];
    const bool seen = sc.seen[r];
    float norm = 1.0f;
    if (p.normalize == kSoftmax) norm = !seen ? 0.0f : l == 0.0f ? quiet_nan() : 1.0f / l;
    for (int c = 0; c < Dv; ++c) dst[c] = orow[c] * norm;
    if (p.lse) p.lse[qi * H + h] = !seen ? kNegInf : l == 0.0f ? quiet_nan() : sc.m[r] + std::log(l);
  }
}

// One entry per instruction set, each compiled for it (native/cpu/isa.h).
#if LK_ISA_X86
LK_TARGET_AVX512 void attend_tile_avx512(const Job& j, int b, int t, int h, Scratch& s) { attend_tile_impl<GemmAvx512>(j, b, t, h, s); }
LK_TARGET_AVX2 void attend_tile_avx2(const Job& j, int b, int t, int h, Scratch& s) { attend_tile_impl<GemmAvx2>(j, b, t, h, s); }
#endif
#if LK_ISA_NEON
void attend_tile_neon(const Job& j, int b, int t, int h, Scratch& s) { attend_tile_impl<GemmNeon>(j, b, t, h, s); }
#endif
void attend_tile_portable(const Job& j, int b, int t, int h, Scratch& s) { attend_tile_impl<GemmBaseline>(j, b, t, h, s); }

using AttendTileFn = void (*)(const Job&, int, int, int, Scratch&);
const IsaTable<AttendTileFn> kAttendTile = {{attend_tile_portable, LK_IF_NEON(attend_tile_neon), LK_IF_X86(attend_tile_avx2),
                                             LK_IF_X86(attend_tile_avx512), nullptr}};

// Summaries of the batch's real tiles of `tile` tokens, sequence b's at [base[b], base[b + 1]):
// memory and time follow the tokens, not batch x the longest sequence (cuda/common/tile_plan.h).
std::vector<TileSummary> summarize(const LayoutView& layout, int batch, int tile, const std::vector<int32_t>& base) {
  std::vector<TileSummary> out((size_t)base[(size_t)batch]);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < base[(size_t)b + 1] - base[(size_t)b]; ++t) {
      int64_t lo, hi;
      tile_tokens(layout.offsets[b], layout.offsets[b + 1], tile, t, &lo, &hi);
      out[(size_t)(base[(size_t)b] + t)] = summarize_tokens(layout.segments, layout.roles, lo, hi);
    }
  }
  return out;
}

}  // namespace

void masked_attention(const AttentionParams& p) {
  const int64_t q_count = p.tq * p.heads * p.head_dim;
  const int64_t k_count = p.tk * p.kv_heads * p.head_dim;
  const int64_t v_count = p.tk * p.kv_heads * p.value_dim;
  const int64_t out_count = p.tq * p.heads * p.value_dim;
  Float32View q = as_float32(p.q, p.dtype, q_count);
  Float32View k = as_float32(p.k, p.dtype, k_count);
  Float32View v = as_float32(p.v, p.dtype, v_count);
  FloatBuffer out_f32;
  float* out = static_cast<float*>(p.out);
  if (p.dtype != kFloat32) {
    out_f32 = alloc_floats((size_t)out_count);
    out = out_f32.get();
  }

  // Only real tiles exist: an empty sequence costs a prefix-sum entry, whatever the longest one is.
  const std::vector<int32_t> q_base = tile_bases(p.q_layout.offsets, p.batch, kBlockM);
  const std::vector<int32_t> k_base = tile_bases(p.kv_layout.offsets, p.batch, kBlockN);
  const std::vector<TileSummary> q_tiles = summarize(p.q_layout, p.batch, kBlockM, q_base);
  const std::vector<TileSummary> k_tiles = summarize(p.kv_layout, p.batch, kBlockN, k_base);
  ThreadPool& pool = ThreadPool::shared();
  // K^T panels for sequences whose key tiles several query tiles visit (one transpose per key tile
  // and head instead of one per query tile); zero columns past a short tile's keys.
  std::vector<int64_t> panel_of_tile((size_t)k_base[(size_t)p.batch], -1);
  std::vector<std::pair<int, int>> panel_tiles;  // (sequence, key tile)
  for (int b = 0; b < p.batch; ++b) {
    if (q_base[(size_t)b + 1] - q_base[(size_t)b] < 2) continue;
    for (int t = 0; t < k_base[(size_t)b + 1] - k_base[(size_t)b]; ++t) {
      panel_of_tile[(size_t)(k_base[(size_t)b] + t)] = (int64_t)panel_tiles.size();
      panel_tiles.emplace_back(b, t);
    }
  }
  const int D = p.head_dim, Hkv = p.kv_heads;
  const size_t panel_floats = (size_t)D * kBlockN;
  FloatBuffer kt_panels = alloc_floats(panel_tiles.size() * Hkv * panel_floats);
  pool.parallel_for((int64_t)panel_tiles.size() * Hkv, [&](int64_t i, int) {
    const auto [b, t] = panel_tiles[(size_t)(i / Hkv)];
    const int g = (int)(i % Hkv);
    const int64_t key0 = p.kv_layout.offsets[b] + (int64_t)t * kBlockN;
    const int cols = (int)std::min<int64_t>(kBlockN, p.kv_layout.offsets[b + 1] - key0);
    float* panel = kt_panels.get() + (size_t)i * panel_floats;
    for (int j = 0; j < kBlockN; ++j) {
      const float* krow = k.data + ((key0 + j) * Hkv + g) * D;
      for (int d = 0; d < D; ++d) panel[(size_t)d * kBlockN + j] = j < cols ? krow[d] : 0.0f;
    }
  });
  const Job job{&p, q.data, k.data, v.data, out, q_tiles.data(), k_tiles.data(), q_base.data(), k_base.data(),
                kt_panels.get(), panel_of_tile.data()};

  // Tasks = (sequence, query tile, head); later query tiles first since causal ones cost most.
  const std::vector<TileRef> tasks = tiles_longest_first(q_base);

  std::vector<Scratch> scratch(pool.size());
  for (auto& sc : scratch) sc.init(p.head_dim);
  const AttendTileFn attend_tile = isa_pick(kAttendTile);  // one path for the whole call
  pool.parallel_for((int64_t)tasks.size() * p.heads, [&](int64_t i, int worker) {
    const TileRef& t = tasks[i / p.heads];
    attend_tile(job, t.seq, t.tile, (int)(i % p.heads), scratch[worker]);
  });

  if (p.dtype != kFloat32) narrow_from_float32(out, p.dtype, static_cast<uint16_t*>(p.out), out_count);
}

}  // namespace lk::cpu
