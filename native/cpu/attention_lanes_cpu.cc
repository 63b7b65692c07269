#include "attention_lanes_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../../cuda/common/ieee.h"
#include "../thread_pool.h"
#include "convert.h"
#include "isa.h"
#include "layout_cpu.h"
#include "mask_bits.h"
#include "simd.h"

// Lane layout: with Hp = H rounded up to a power of two (2, 4 or 8) and G = 8 / Hp keys per vector,
// lane u of a vector holds head u % Hp of key (vector index) * G + u / Hp. Lanes of a padding head
// (u % Hp >= H) repeat head H - 1 and are dropped at the end. A sequence's K and V are transposed
// once per task into [key vector][d][lane], Q rows into [d][lane], so that one query row's scores of
// a key vector are D lane-wise FMAs and P V is Dv lane-wise FMAs per key vector. The running max and
// sum are per lane (each lane sees its own keys of its head); the G lanes of a head are combined
// once per row at the end, as split softmax does.

namespace lk::cpu {
namespace {

constexpr int kMaxLaneDim = 16;    // largest D and Dv taken (Q row, and O, stay a few vectors)
constexpr int kMaxLaneHeads = 8;
constexpr int kMaskKeys = 64;      // keys per rule evaluation: one 64-bit allowed set per row
constexpr int kChunkRows = 64;     // query rows per task (a 58-token sequence is one task)
// Largest transposed K + V of one sequence taken: every query row re-reads it, so it must stay near
// L1. Measured (process CPU time per call, causal, against the tiled kernel's head groups): 256 keys
// x 4 heads x D 8 (64 KiB) 10.6 vs 12.2 ms and 6 x 8 (128 KiB) 16.6 vs 18.9 ms faster; 8 x 16
// (256 KiB) even; 1,024 keys slower (2 x 16: 31.8 vs 19.3 ms, 8 x 16: 119 vs 76 ms).
constexpr int kMaxSequenceBytes = 128 * 1024;
// With fewer than 4 heads (4 keys of 2 heads, or 2 keys of 3 heads and a padding lane, per vector)
// it measured even at 58 keys and slower at 256 (2 x 16: 9.1 vs 7.5 ms; 3 x 16: 15.2 vs 11.1 ms), so
// those shapes are taken only within one mask block.
constexpr int kFewHeadsMaxKeys = 64;
constexpr int kScoreUnroll = 4;    // key vectors whose scores are computed together
constexpr float kNegInf = -INFINITY;

std::atomic<int64_t> lanes_calls{0};

struct Call {
  const AttentionParams* p;
  const void *q, *k, *v;  // p.dtype: float32 read in place, half types widened as they are loaded
  void* out;
  bool f32;
  int Hp, G;  // heads rounded up to a power of two; keys per vector (8 / Hp)
  int lane_head[8], lane_kv[8], lane_key[8];  // per lane: head (clamped to H - 1), its kv head, key offset
  uint32_t pattern_mask;      // (1 << G) - 1
  int32_t lane_masks[16][8];  // per pattern of G allowed keys: -1 in the lanes of allowed keys
  std::vector<int32_t> chunk_seq, chunk_row;  // task i: rows [chunk_row, + kChunkRows) of chunk_seq
};

struct Scratch {
  FloatBuffer kt, vt, q, s;
  FloatBuffer k_wide, v_wide, q_wide, out_row;  // half types: one sequence's K / V, one Q / O row as float32
  std::vector<int32_t> key_role, key_seg, key_pos;
  void init(const AttentionParams& p, int max_k, int G) {
    const size_t vecs = (size_t)(max_k + G - 1) / G + kScoreUnroll;  // + the score loop's overrun
    kt = alloc_floats(vecs * p.head_dim * 8);
    vt = alloc_floats(vecs * p.value_dim * 8);
    std::fill(kt.get(), kt.get() + vecs * p.head_dim * 8, 0.0f);
    std::fill(vt.get(), vt.get() + vecs * p.value_dim * 8, 0.0f);
    q = alloc_floats((size_t)p.head_dim * 8);
    s = alloc_floats((size_t)(kMaskKeys + kScoreUnroll) * 8);
    const size_t keys = (size_t)round_up(std::max(max_k, 1), kMaskKeys);
    key_role.resize(keys);
    key_seg.resize(keys);
    key_pos.resize(keys);
    if (p.dtype != kFloat32) {
      k_wide = alloc_floats((size_t)std::max(max_k, 1) * p.kv_heads * p.head_dim);
      v_wide = alloc_floats((size_t)std::max(max_k, 1) * p.kv_heads * p.value_dim);
      q_wide = alloc_floats((size_t)p.heads * p.head_dim);
      out_row = alloc_floats((size_t)p.heads * p.value_dim);
    }
  }
};

// Scores of n key vectors (kt: [vector][d][lane]) for one query row (q: [d][lane]), into s[n][lane];
// kScoreUnroll vectors at a time, so the FMA chains are independent.
template <int kD>
LK_INLINE void row_scores(const float* q, const float* kt, int head_dim, int n, float* s) {
  const int D = kD ? kD : head_dim;
  const size_t vec = (size_t)D * 8;
  for (int t = 0; t < n; t += kScoreUnroll) {
    const float* k0 = kt + t * vec;
    v8f acc[kScoreUnroll];
    for (int i = 0; i < kScoreUnroll; ++i) acc[i] = splat(0.0f);
    for (int d = 0; d < D; ++d) {
      const v8f qd = load8(q + d * 8);
      for (int i = 0; i < kScoreUnroll; ++i) acc[i] += qd * load8(k0 + i * vec + d * 8);
    }
    for (int i = 0; i < kScoreUnroll; ++i) store8(s + (t + i) * 8, acc[i]);
  }
}

// Lane u of the result is lane (u + width) % 8 of x (width 4, 2 or 1).
LK_INLINE v8f rotate_lanes(v8f x, int width) {
  if (width == 4) return __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
  if (width == 2) return __builtin_shufflevector(x, x, 2, 3, 4, 5, 6, 7, 0, 1);
  return __builtin_shufflevector(x, x, 1, 2, 3, 4, 5, 6, 7, 0);
}

// Lanes of the key vector whose first key is bit `first_key_in_block` of the row's allowed set and
// that the row may see: Call::lane_masks holds the lane mask of every pattern of G allowed bits (a
// load instead of building the vector from the bits, which compiled to lane inserts).
LK_INLINE v8i lanes_allowed(const Call& c, uint64_t bits, int first_key_in_block) {
  v8i ok;
  std::memcpy(&ok, c.lane_masks[(bits >> first_key_in_block) & c.pattern_mask], sizeof ok);
  return ok;
}

// Task = (sequence, row chunk). kCheckV: the sequence's V holds a non-finite value, so P V leaves out
// masked lanes explicitly (a 0 weight times Inf / NaN would be NaN).
template <int kD, int kDv, bool kCheckV>
LK_INLINE void run_task(const Call& c, int64_t task, Scratch& sc) {
  const AttentionParams& p = *c.p;
  const int b = c.chunk_seq[(size_t)task], row0 = c.chunk_row[(size_t)task];
  const int64_t q_start = p.q_layout.offsets[b], k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)q_start, Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int rows = std::min(kChunkRows, Lq - row0);
  const int H = p.heads, D = kD ? kD : p.head_dim, Dv = kDv ? kDv : p.value_dim, G = c.G, Hp = c.Hp;

  // Key attributes for the rule, padded to a multiple of 8 with role -1 (never allowed).
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;
  for (int j = 0; j < round_up(Lk, 8); ++j) {
    const bool real = j < Lk;
    sc.key_role[(size_t)j] = real ? (krole ? krole[k_start + j] : 0) : -1;
    sc.key_seg[(size_t)j] = real && kseg ? kseg[k_start + j] : 0;
    sc.key_pos[(size_t)j] = j;
  }

  float* q = sc.q.get();
  float* s = sc.s.get();
  const float* kt = sc.kt.get();
  const float* vt = sc.vt.get();
  const int32_t* qseg = p.q_layout.segments;
  const uint8_t* qrole = p.q_layout.roles;
  for (int r = 0; r < rows; ++r) {
    const int64_t qi = q_start + row0 + r;
    const float* qs = static_cast<const float*>(c.q) + qi * H * D;
    if (!c.f32) {
      widen_row(static_cast<const uint16_t*>(c.q) + qi * H * D, p.dtype, sc.q_wide.get(), (int64_t)H * D);
      qs = sc.q_wide.get();
    }
    for (int d = 0; d < D; ++d)
      for (int u = 0; u < 8; ++u) q[d * 8 + u] = qs[c.lane_head[u] * D + d] * p.scale;
    const int rq = qrole ? qrole[qi] : 0, sq = qseg ? qseg[qi] : 0, pq = row0 + r + Lk - Lq;
    v8f m = splat(kNegInf), l = splat(0.0f);
    v8f o[kMaxLaneDim];
    for (int d = 0; d < Dv; ++d) o[d] = splat(0.0f);
    bool seen = false;
    for (int key0 = 0; key0 < Lk; key0 += kMaskKeys) {
      const int n8 = round_up(std::min(kMaskKeys, Lk - key0), 8);
      const uint64_t bits = row_allowed_bits(p.rule, rq, sq, pq, sc.key_role.data() + key0, sc.key_seg.data() + key0,
                                             sc.key_pos.data() + key0, n8);
      if (!bits) continue;
      seen = true;
      // Only the key vectors between the row's first and last allowed key of the block.
      const int t0 = (key0 + __builtin_ctzll(bits)) / G, t1 = (key0 + 63 - __builtin_clzll(bits)) / G + 1, n = t1 - t0;
      row_scores<kD>(q, kt + (size_t)t0 * D * 8, D, n, s);
      v8f mx = splat(kNegInf);
      for (int i = 0; i < n; ++i) {
        const v8i ok = lanes_allowed(c, bits, (t0 + i) * G - key0);
        const v8f x = ok ? load8(s + i * 8) : splat(kNegInf);
        store8(s + i * 8, x);
        mx = max_keep_nan8(mx, x);
      }
      // m_use replaces a max of -inf by 0 so that masked and -inf entries weigh exactly 0 instead of
      // exp(-inf + inf); an allowed +inf or NaN still turns the row NaN as in the reference.
      const v8f m_new = max_keep_nan8(m, mx);
      const v8f m_use = m_new == splat(kNegInf) ? splat(0.0f) : m_new;
      const v8f alpha = exp8(m - m_use);
      m = m_new;
      v8f sum = splat(0.0f);
      for (int i = 0; i < n; ++i) {
        const v8f e = exp8(load8(s + i * 8) - m_use);
        store8(s + i * 8, e);
        sum += e;
      }
      l = l * alpha + sum;
      for (int d = 0; d < Dv; ++d) o[d] *= alpha;
      // P V, 8 output vectors at a time held in registers across the key vectors.
      const float* v0 = vt + (size_t)t0 * Dv * 8;
      for (int d0 = 0; d0 < Dv; d0 += 8) {
        const int nd = std::min(8, Dv - d0);
        v8f acc[8];
        for (int u = 0; u < 8; ++u) acc[u] = u < nd ? o[d0 + u] : splat(0.0f);
        for (int i = 0; i < n; ++i) {
          const v8f w = load8(s + i * 8);
          const float* vr = v0 + ((size_t)i * Dv + d0) * 8;
          if (kCheckV) {
            const v8i ok = lanes_allowed(c, bits, (t0 + i) * G - key0);
            for (int u = 0; u < 8; ++u)
              if (u < nd) acc[u] += ok ? w * load8(vr + u * 8) : splat(0.0f);
          } else {
            for (int u = 0; u < 8; ++u)
              if (u < nd) acc[u] += w * load8(vr + u * 8);
          }
        }
        for (int u = 0; u < nd; ++u) o[d0 + u] = acc[u];
      }
    }
    // The G lanes of each head combined (split softmax) by folding the vector onto its first Hp lanes.
    // No allowed key: 0 and lse -inf; allowed keys whose scores are all -inf: NaN (the reference's
    // exp(-inf + inf)).
    for (int width = 4; width >= Hp; width /= 2) {
      const v8f m_other = rotate_lanes(m, width);
      const v8f m_both = max_keep_nan8(m, m_other);
      const v8f m_use = m_both == splat(kNegInf) ? splat(0.0f) : m_both;
      const v8f w = exp8(m - m_use), w_other = rotate_lanes(w, width);
      l = l * w + rotate_lanes(l, width) * w_other;
      for (int d = 0; d < Dv; ++d) o[d] = o[d] * w + rotate_lanes(o[d], width) * w_other;
      m = m_both;
    }
    const v8f zero = splat(0.0f);
    const v8f norm = l == zero ? splat(quiet_nan()) : splat(1.0f) / l;
    float od[kMaxLaneDim][8];
    for (int d = 0; d < Dv; ++d) store8(od[d], seen ? o[d] * norm : zero);
    float* out_row = c.f32 ? static_cast<float*>(c.out) + qi * H * Dv : sc.out_row.get();
    for (int h = 0; h < H; ++h) {
      for (int d = 0; d < Dv; ++d) out_row[h * Dv + d] = od[d][h];
      if (p.lse) p.lse[qi * H + h] = !seen ? kNegInf : l[h] == 0.0f ? quiet_nan() : m[h] + std::log(l[h]);
    }
    if (!c.f32) narrow_row(out_row, p.dtype, static_cast<uint16_t*>(c.out) + qi * H * Dv, (int64_t)H * Dv);
  }
}

// The task's sequence K / V transposed into [key vector][d][lane] (zero past the last key); returns
// whether every V value is finite. Half types: the sequence's rows (contiguous, all kv heads) are
// widened first into a per-worker buffer, one vectorized pass, then transposed as float32.
LK_INLINE bool transpose_sequence(const Call& c, int64_t task, Scratch& sc) {
  const AttentionParams& p = *c.p;
  const int b = c.chunk_seq[(size_t)task];
  const int64_t k_start = p.kv_layout.offsets[b];
  const int Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, G = c.G;
  const int vecs = (Lk + G - 1) / G;
  float* kt = sc.kt.get();
  float* vt = sc.vt.get();
  const float* ks = static_cast<const float*>(c.k) + k_start * Hkv * D;
  const float* vs = static_cast<const float*>(c.v) + k_start * Hkv * Dv;
  if (!c.f32) {
    widen_row(static_cast<const uint16_t*>(c.k) + k_start * Hkv * D, p.dtype, sc.k_wide.get(), (int64_t)Lk * Hkv * D);
    widen_row(static_cast<const uint16_t*>(c.v) + k_start * Hkv * Dv, p.dtype, sc.v_wide.get(), (int64_t)Lk * Hkv * Dv);
    ks = sc.k_wide.get();
    vs = sc.v_wide.get();
  }
  for (int t = 0; t < vecs; ++t) {
    for (int u = 0; u < 8; ++u) {
      const int key = t * G + c.lane_key[u];
      const float* kr = ks + ((int64_t)key * Hkv + c.lane_kv[u]) * D;
      const float* vr = vs + ((int64_t)key * Hkv + c.lane_kv[u]) * Dv;
      const bool real = key < Lk;
      for (int d = 0; d < D; ++d) kt[((size_t)t * D + d) * 8 + u] = real ? kr[d] : 0.0f;
      for (int d = 0; d < Dv; ++d) vt[((size_t)t * Dv + d) * 8 + u] = real ? vr[d] : 0.0f;
    }
  }
  return all_finite(vt, vecs * Dv * 8);
}

template <int kD, int kDv>
LK_INLINE void run_task_dims(const Call& c, int64_t task, Scratch& sc) {
  if (transpose_sequence(c, task, sc))
    run_task<kD, kDv, false>(c, task, sc);
  else
    run_task<kD, kDv, true>(c, task, sc);
}

// One entry per instruction set (native/cpu/isa.h).
#define LK_LANES_ENTRY(name, attr)                             \
  attr void name(const Call& c, int64_t task, Scratch& sc) { \
    const int d = c.p->head_dim, dv = c.p->value_dim;          \
    if (d == 8 && dv == 8) return run_task_dims<8, 8>(c, task, sc);    \
    if (d == 16 && dv == 16) return run_task_dims<16, 16>(c, task, sc); \
    return run_task_dims<0, 0>(c, task, sc);                   \
  }
#if LK_ISA_X86
LK_LANES_ENTRY(lanes_task_avx512, LK_TARGET_AVX512)
LK_LANES_ENTRY(lanes_task_avx2, LK_TARGET_AVX2)
#endif
#if LK_ISA_NEON
LK_LANES_ENTRY(lanes_task_neon, )
#endif
LK_LANES_ENTRY(lanes_task_portable, )
#undef LK_LANES_ENTRY

using LanesTaskFn = void (*)(const Call&, int64_t, Scratch&);
const IsaTable<LanesTaskFn> kLanesTask = {{lanes_task_portable, LK_IF_NEON(lanes_task_neon), LK_IF_X86(lanes_task_avx2),
                                           LK_IF_X86(lanes_task_avx512), nullptr}};

}  // namespace

bool heads_lanes_fits(const AttentionParams& p) {
  if (p.normalize != kSoftmax || p.heads < 2 || p.heads > kMaxLaneHeads) return false;
  if (p.head_dim > kMaxLaneDim || p.value_dim > kMaxLaneDim) return false;
  const int64_t max_k = longest_sequence(p.kv_layout, p.batch);
  if (p.heads < 4) return max_k <= kFewHeadsMaxKeys;
  const int keys_per_vec = p.heads <= 4 ? 2 : 1;
  return (max_k + keys_per_vec - 1) / keys_per_vec * (p.head_dim + p.value_dim) * 8 * (int64_t)sizeof(float) <= kMaxSequenceBytes;
}

void heads_lanes_attention(const AttentionParams& p) {
  lanes_calls.fetch_add(1, std::memory_order_relaxed);
  const int H = p.heads;
  ThreadPool& pool = ThreadPool::shared();

  Call c;
  c.p = &p;
  c.q = p.q;
  c.k = p.k;
  c.v = p.v;
  c.out = p.out;
  c.f32 = p.dtype == kFloat32;
  c.Hp = H <= 2 ? 2 : H <= 4 ? 4 : 8;
  c.G = 8 / c.Hp;
  for (int u = 0; u < 8; ++u) {
    c.lane_head[u] = std::min(u % c.Hp, H - 1);
    c.lane_kv[u] = c.lane_head[u] / (H / p.kv_heads);
    c.lane_key[u] = u / c.Hp;
  }
  c.pattern_mask = (1u << c.G) - 1;
  for (int pattern = 0; pattern < 16; ++pattern)
    for (int u = 0; u < 8; ++u) c.lane_masks[pattern][u] = (pattern >> c.lane_key[u]) & 1 ? -1 : 0;
  for (int b = 0; b < p.batch; ++b)
    for (int r = 0; r < p.q_layout.offsets[b + 1] - p.q_layout.offsets[b]; r += kChunkRows) {
      c.chunk_seq.push_back(b);
      c.chunk_row.push_back(r);
    }
  const int max_k = longest_sequence(p.kv_layout, p.batch);
  std::vector<Scratch> scratch(pool.size());
  for (auto& sc : scratch) sc.init(p, max_k, c.G);
  const LanesTaskFn task = isa_pick(kLanesTask);  // one path for the whole call
  pool.parallel_for((int64_t)c.chunk_seq.size(), [&](int64_t i, int worker) { task(c, i, scratch[(size_t)worker]); });
}

int64_t heads_lanes_calls() { return lanes_calls.load(std::memory_order_relaxed); }

}  // namespace lk::cpu
