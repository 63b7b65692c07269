#include "attention_heads_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../../cuda/common/ieee.h"
#include "../thread_pool.h"
#include "convert.h"
#include "isa.h"
#include "layout_cpu.h"
#include "mask_bits.h"
#include "simd.h"

// Scores are kept heads-minor: a row's scores of a key block are [key][head], so one 8-lane vector
// holds 8 consecutive (key, head) entries (8 heads of one key when H is a multiple of 8, 8 / H keys
// of every head otherwise). Every exp, max and sum then fills the vector whatever D is, and the
// K / V rows of all heads of a key (H x D contiguous floats) are read together, once per block.

namespace lk::cpu {
namespace {

constexpr int kChunkRows = 8;       // query rows per task
constexpr int kMaskKeys = 64;       // keys per rule evaluation: one 64-bit allowed set per row
constexpr int kMaxHeads = 64;
constexpr int kMaxHeadVecs = kMaxHeads / 8;
constexpr int kMaxDim = 256;
constexpr int kFewQueryRows = 8;    // query sequences this short are few-query cross attention
constexpr int kBlockBytes = 32 * 1024;  // K + V bytes of one key block: L1-sized (64 KB measured ~10% slower on cross 64 x 4 x 5,000)
constexpr int kPrefetchBlocks = 2;      // a block prefetches the block this many ahead
constexpr int kMinSplitKeys = 256;  // a split-softmax part covers at least this many keys
constexpr float kNegInf = -INFINITY;


struct Call {
  const AttentionParams* p;
  // Q / K / V as given: float32, or float16 / bfloat16 bits widened a row (Q) or a key block (K / V)
  // at a time into Scratch as they are streamed, never as whole tensors (half types read half the
  // bytes of this memory-bound kernel).
  const void *q, *k, *v;
  DType dtype;
  int elem_bytes;  // of Q / K / V / out
  int heads_per_kv;
  int head_vecs;     // score vectors per key group: H / 8, or 1 when H < 8
  int keys_per_vec;  // keys per score vector: 8 / H, or 1 when H >= 8
  int lane_key[8];   // lane u of a score vector: its key's offset in the vector's key group
  int k_off[kMaxHeads];  // head h's K columns in a key row (GQA)
  // Output vector i of a row (columns [8i, 8i + 8) of [H][Dv]), padded to a multiple of 8 vectors
  // by repeating the last: its head, and its columns in a V row.
  std::vector<int> slab_head, slab_voff;
  int block_keys;  // keys per block: a multiple of 8 dividing kMaskKeys
  int splits;      // key ranges per (sequence, row chunk), combined by split softmax
  int split_keys;  // keys per range (a multiple of kMaskKeys)
  std::vector<int32_t> chunk_seq, chunk_row;  // task chunk c: rows [chunk_row, +kChunkRows) of chunk_seq
  // Per (query row, split, head): the unnormalized output, then the running max and sum.
  FloatBuffer partial;
  std::unique_ptr<uint8_t[]> seen;  // per (query row, split): the row met an allowed key
  int partial_stride() const { return p->value_dim + 2; }
};

struct Scratch {
  FloatBuffer q, s, o;
  FloatBuffer k_block, v_block;  // half types: one key block's K / V rows widened (L1-sized)
  FloatBuffer weights;  // values_rows4's weights of one head, [key][row] x 8 lanes
  // Running max and sum per row in the scores' lane layout (8 floats a vector); plain floats, as
  // std::vector does not align its elements to 32 bytes.
  float m[kChunkRows][kMaxHeads], l[kChunkRows][kMaxHeads];
  int32_t key_role[kMaskKeys], key_seg[kMaskKeys], key_pos[kMaskKeys];
  uint64_t allow[kChunkRows];
  bool seen[kChunkRows];
  void init(const AttentionParams& p, int block_keys) {
    q = alloc_floats((size_t)kChunkRows * p.heads * p.head_dim);
    s = alloc_floats((size_t)kChunkRows * kMaskKeys * p.heads);
    o = alloc_floats((size_t)kChunkRows * p.heads * p.value_dim);
    weights = alloc_floats((size_t)kMaskKeys * 4 * 8);
    if (p.dtype != kFloat32) {
      k_block = alloc_floats((size_t)block_keys * p.kv_heads * p.head_dim);
      v_block = alloc_floats((size_t)block_keys * p.kv_heads * p.value_dim);
    }
  }
};

// For H < 8: every lane gets the reduction of the lanes of its head (lane % H).
template <typename Op>
LK_INLINE v8f fold_heads(v8f x, int H, Op op) {
  if (H <= 4) x = op(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3));
  if (H <= 2) x = op(x, __builtin_shufflevector(x, x, 2, 3, 4, 5, 6, 7, 0, 1));
  if (H <= 1) x = op(x, __builtin_shufflevector(x, x, 1, 2, 3, 4, 5, 6, 7, 0));
  return x;
}

// Element `i` of a K / V array of the call's dtype, as a byte address (for prefetches).
LK_INLINE const char* element_address(const Call& c, const void* base, int64_t i) {
  return static_cast<const char*>(base) + i * c.elem_bytes;
}

// The next key block's K and V rows, a few cache lines at a time while this block computes. One
// burst of a whole block's prefetches stalls the core until most of it has arrived (the miss
// buffers fill), so compute and memory took turns; spread over the block's loops, the next block
// streams in while this one computes (single thread 1.8x above a plain read of K / V before).
struct Prefetcher {
  const char *k = nullptr, *k_end = nullptr, *v = nullptr, *v_end = nullptr;
  int quota = 0;  // lines per step()

  // `steps`: how many step() calls the block's loops make; rest() issues what they left.
  void start(const void* k_rows, int64_t k_bytes, const void* v_rows, int64_t v_bytes, int steps) {
    k = static_cast<const char*>(k_rows);
    k_end = k + k_bytes;
    v = static_cast<const char*>(v_rows);
    v_end = v + v_bytes;
    const int64_t lines = (k_bytes + v_bytes) / 64 + 2;
    quota = (int)((lines + steps - 1) / std::max(1, steps));
  }
  LK_INLINE void step() {
    for (int i = 0; i < quota; ++i) {
      if (k < k_end) {
        __builtin_prefetch(k);
        k += 64;
      } else if (v < v_end) {
        __builtin_prefetch(v);
        v += 64;
      } else {
        return;
      }
    }
  }
  void rest() {
    for (; k < k_end; k += 64) __builtin_prefetch(k);
    for (; v < v_end; v += 64) __builtin_prefetch(v);
  }
};

// The 4 rows [r0, r0 + 4) of a few-query chunk at once: each head's K rows are loaded once for the
// 4 rows, two keys at a time, and the 8 (key, row) dot products reduced together. Rows past `rows`
// have zero Q. Masked entries get -inf per row afterwards.
template <int kD>
LK_INLINE void scores_rows4(const Call& c, Scratch& sc, int r0, const float* kb, int nb, int rows, const uint64_t* bits, Prefetcher& pf) {
  const AttentionParams& p = *c.p;
  const int H = p.heads, D = kD ? kD : p.head_dim;
  const int64_t key_floats = (int64_t)p.kv_heads * D;
  const size_t s_stride = (size_t)kMaskKeys * H;
  float* s = sc.s.get() + r0 * s_stride;
  const float* q = sc.q.get() + (size_t)r0 * H * D;
  const size_t q_stride = (size_t)H * D;
  // 8 heads of two keys at a time, their (key, row) dot products transposed to [row][key][head]
  // vectors: whole-vector stores instead of 8 lane extracts and scalar stores per head.
  for (int j = 0; j < nb && H % 8 == 0; j += 2) {
    const float* k0 = kb + j * key_floats;
    const float* k1 = j + 1 < nb ? k0 + key_floats : k0;
    for (int h0 = 0; h0 < H; h0 += 8) {
      v8f dots[8];  // dots[u] lane r: key j, row r, head h0 + u; lane 4 + r: key j + 1
      for (int u = 0; u < 8; ++u) {
        pf.step();
        dots[u] = dot_2keys_4rows(k0 + c.k_off[h0 + u], k1 + c.k_off[h0 + u], q + (size_t)(h0 + u) * D, q_stride, D);
      }
      transpose8x8(dots);  // dots[r] lane u: key j, row r, head h0 + u; dots[4 + r]: key j + 1
      for (int r = 0; r < 4; ++r) {
        store8(s + r * s_stride + (size_t)j * H + h0, dots[r]);
        if (j + 1 < nb) store8(s + r * s_stride + (size_t)(j + 1) * H + h0, dots[4 + r]);
      }
    }
  }
  for (int h = 0; h < H && H % 8 != 0; ++h) {
    const float* q0 = q + (size_t)h * D;
    for (int j = 0; j < nb; j += 2) {
      pf.step();
      const float* k0 = kb + j * key_floats + c.k_off[h];
      const float* k1 = j + 1 < nb ? k0 + key_floats : k0;
      const v8f dots = dot_2keys_4rows(k0, k1, q0, q_stride, D);  // lane r: key j, row r; 4 + r: key j + 1
      for (int r = 0; r < 4; ++r) {
        s[r * s_stride + (size_t)j * H + h] = dots[r];
        if (j + 1 < nb) s[r * s_stride + (size_t)(j + 1) * H + h] = dots[4 + r];
      }
    }
  }
  const int entries = round_up(nb, c.keys_per_vec) * H;
  v8i lane_key;
  std::memcpy(&lane_key, c.lane_key, sizeof lane_key);
  for (int r = 0; r < std::min(4, rows - r0); ++r) {
    float* srow = s + r * s_stride;
    for (int e0 = 0; e0 < entries; e0 += 8) {
      const int j0 = e0 / H;  // H is a power of two below 8, a multiple of 8 above
      const v8i ok = ((splat_int((int32_t)(bits[r0 + r] >> j0)) >> lane_key) & 1) != 0;
      store8(srow + e0, ok ? load8(srow + e0) : splat(kNegInf));
    }
  }
}

// Online softmax per (row, head), lane-wise, over the row's scores of a block (masked: -inf).
LK_INLINE void softmax_row(const Call& c, Scratch& sc, int r, int nb, uint64_t bits) {
  const AttentionParams& p = *c.p;
  const int H = p.heads, Dv = p.value_dim;
  const int HV = c.head_vecs, kpv = c.keys_per_vec;
  const uint32_t group_mask = (1u << kpv) - 1;
  float* srow = sc.s.get() + (size_t)r * kMaskKeys * H;
  const int entries = round_up(nb, kpv) * H;  // a multiple of 8

  // Online softmax per (row, head), lane-wise. m_use replaces a max of -inf by 0 so that masked and
  // -inf entries weigh exactly 0 instead of exp(-inf + inf); an allowed +inf or NaN still turns the
  // row NaN as in the reference (cuda/common/ieee.h).
  v8f mx[kMaxHeadVecs], sum[kMaxHeadVecs], m_use[kMaxHeadVecs], alpha[kMaxHeadVecs];
  for (int hv = 0; hv < HV; ++hv) mx[hv] = splat(kNegInf), sum[hv] = splat(0.0f);
  for (int e0 = 0, hv = 0; e0 < entries; e0 += 8, hv = hv + 1 == HV ? 0 : hv + 1)
    mx[hv] = max_keep_nan8(mx[hv], load8(srow + e0));
  for (int hv = 0; hv < HV; ++hv) {
    if (H < 8) mx[hv] = fold_heads(mx[hv], H, [](v8f a, v8f b) { return max_keep_nan8(a, b); });
    const v8f m_old = load8(sc.m[r] + 8 * hv);
    const v8f m_new = max_keep_nan8(m_old, mx[hv]);
    m_use[hv] = m_new == splat(kNegInf) ? splat(0.0f) : m_new;
    alpha[hv] = exp8(m_old - m_use[hv]);
    store8(sc.m[r] + 8 * hv, m_new);
  }
  for (int j0 = 0, e0 = 0; j0 < nb; j0 += kpv) {
    const bool any = ((uint32_t)(bits >> j0) & group_mask) != 0;
    for (int hv = 0; hv < HV; ++hv, e0 += 8) {
      if (!any) {
        store8(srow + e0, splat(0.0f));
        continue;
      }
      const v8f e = exp8(load8(srow + e0) - m_use[hv]);
      store8(srow + e0, e);
      sum[hv] += e;
    }
  }
  float* orow = sc.o.get() + (size_t)r * H * Dv;
  for (int hv = 0; hv < HV; ++hv) {
    if (H < 8) sum[hv] = fold_heads(sum[hv], H, [](v8f a, v8f b) { return a + b; });
    store8(sc.l[r] + 8 * hv, load8(sc.l[r] + 8 * hv) * alpha[hv] + sum[hv]);
    const v8i same = alpha[hv] == splat(1.0f);
    if (lane_mask8(same) == 0xffu) continue;
    for (int u = 0; u < std::min(8, H - hv * 8); ++u) {
      float* oh = orow + (size_t)(hv * 8 + u) * Dv;
      const v8f a = splat(alpha[hv][u]);
      for (int d = 0; d < Dv; d += 8) store8(oh + d, load8(oh + d) * a);
    }
  }
}

// O += P V over the row's allowed keys only (a masked key's NaN / Inf value never meets a 0
// weight), 8 output vectors at a time: several small heads, or 64 columns of a large one.
LK_INLINE void values_row(const Call& c, Scratch& sc, int r, const float* vb, uint64_t bits) {
  const AttentionParams& p = *c.p;
  const int H = p.heads, Dv = p.value_dim, Hkv = p.kv_heads;
  const float* srow = sc.s.get() + (size_t)r * kMaskKeys * H;
  float* orow = sc.o.get() + (size_t)r * H * Dv;
  const int row_floats = H * Dv;
  const bool one_head = Dv % 64 == 0;  // every 64-column slab lies within one head
  for (int c0 = 0; c0 < row_floats; c0 += 64) {
    const int nv = std::min(8, (row_floats - c0) / 8);
    const int* head = c.slab_head.data() + c0 / 8;  // per output vector: its head, its V columns
    const int* voff = c.slab_voff.data() + c0 / 8;
    v8f acc[8];
    for (int u = 0; u < 8; ++u) acc[u] = u < nv ? load8(orow + c0 + 8 * u) : splat(0.0f);
    for (uint64_t b = bits; b; b &= b - 1) {
      const int j = __builtin_ctzll(b);
      const float* vr = vb + (int64_t)j * Hkv * Dv;
      const float* pj = srow + j * H;
      if (one_head) {  // Dv a multiple of 64: the slab is one head's, one weight per key
        const v8f w = splat(pj[head[0]]);
        for (int u = 0; u < 8; ++u) acc[u] += w * load8(vr + voff[u]);
      } else if (nv == 8) {  // unrolled without guards
        for (int u = 0; u < 8; ++u) acc[u] += splat(pj[head[u]]) * load8(vr + voff[u]);
      } else {
        for (int u = 0; u < 8; ++u)
          if (u < nv) acc[u] += splat(pj[head[u]]) * load8(vr + voff[u]);
      }
    }
    for (int u = 0; u < nv; ++u) store8(orow + c0 + 8 * u, acc[u]);
  }
}

// values_row for the 4 rows [r0, r0 + 4) that all see exactly the keys `bits` (rows past the
// chunk's have zero weights), a head at a time: the head's weights are first spread to full vectors ([key][row] x 8
// lanes in Scratch::weights), so that the inner loop is plain loads and FMAs (a broadcast per
// (key, row, output vector) compiled to scalar inserts and took most of this loop's time); 2 output
// vectors x 4 rows accumulate in registers, each V vector loaded once.
LK_INLINE void values_rows4(const Call& c, Scratch& sc, int r0, const float* vb, uint64_t bits, Prefetcher& pf) {
  const AttentionParams& p = *c.p;
  const int H = p.heads, Dv = p.value_dim, Hkv = p.kv_heads;
  const size_t s_stride = (size_t)kMaskKeys * H, o_stride = (size_t)H * Dv;
  const float* s = sc.s.get() + r0 * s_stride;
  float* o = sc.o.get() + r0 * o_stride;
  float* w = sc.weights.get();
  const int head_vecs = Dv / 8;
  for (int h = 0; h < H; ++h) {
    for (uint64_t b = bits; b; b &= b - 1) {
      const int j = __builtin_ctzll(b);
      for (int r = 0; r < 4; ++r) store8(w + (j * 4 + r) * 8, splat(s[r * s_stride + (size_t)j * H + h]));
    }
    const float* vh = vb + (int64_t)(h / c.heads_per_kv) * Dv;  // head h's V columns
    float* oh = o + (size_t)h * Dv;
    for (int i = 0; i < head_vecs; i += 2) {
      pf.step();
      const bool pair = i + 1 < head_vecs;
      v8f acc[4][2];
      for (int r = 0; r < 4; ++r) {
        acc[r][0] = load8(oh + r * o_stride + 8 * i);
        acc[r][1] = pair ? load8(oh + r * o_stride + 8 * i + 8) : splat(0.0f);
      }
      for (uint64_t b = bits; b; b &= b - 1) {
        const int j = __builtin_ctzll(b);
        const float* vr = vh + (int64_t)j * Hkv * Dv + 8 * i;
        const v8f x0 = load8(vr), x1 = pair ? load8(vr + 8) : x0;
        for (int r = 0; r < 4; ++r) {
          const v8f wr = load8(w + (j * 4 + r) * 8);
          acc[r][0] += wr * x0;
          acc[r][1] += wr * x1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        store8(oh + r * o_stride + 8 * i, acc[r][0]);
        if (pair) store8(oh + r * o_stride + 8 * i + 8, acc[r][1]);
      }
    }
  }
}

// Task = (row chunk, split): the chunk's rows against the split's keys, into Call::partial.
template <int kD>
LK_INLINE void run_task(const Call& c, int64_t task, Scratch& sc) {
  const AttentionParams& p = *c.p;
  const int chunk = (int)(task / c.splits), split = (int)(task % c.splits);
  const int b = c.chunk_seq[(size_t)chunk], row0 = c.chunk_row[(size_t)chunk];
  const int64_t q_start = p.q_layout.offsets[b], k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)q_start, Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int rows = std::min(kChunkRows, Lq - row0);
  const int H = p.heads, D = p.head_dim, Dv = p.value_dim;
  const int HV = H >= 8 ? H / 8 : 1;
  const int key_lo = std::min(Lk, split * c.split_keys), key_hi = std::min(Lk, key_lo + c.split_keys);

  for (int r = 0; r < rows; ++r) {
    float* dst = sc.q.get() + (size_t)r * H * D;
    const int64_t q_offset = (q_start + row0 + r) * H * D;
    if (c.dtype == kFloat32) {
      const float* src = static_cast<const float*>(c.q) + q_offset;
      for (int i = 0; i < H * D; ++i) dst[i] = src[i] * p.scale;
    } else {
      widen_row(static_cast<const uint16_t*>(c.q) + q_offset, c.dtype, dst, (int64_t)H * D);
      for (int i = 0; i < H * D; ++i) dst[i] *= p.scale;
    }
    std::fill(sc.m[r], sc.m[r] + 8 * HV, kNegInf);
    std::fill(sc.l[r], sc.l[r] + 8 * HV, 0.0f);
    sc.seen[r] = false;
  }
  // The 4-row kernels' padding rows up to a multiple of 4: zero Q, zero weights (their output is dropped).
  const int padded_rows = round_up(rows, 4);
  std::fill(sc.q.get() + (size_t)rows * H * D, sc.q.get() + (size_t)padded_rows * H * D, 0.0f);
  std::fill(sc.s.get() + (size_t)rows * kMaskKeys * H, sc.s.get() + (size_t)padded_rows * kMaskKeys * H, 0.0f);
  std::fill(sc.o.get(), sc.o.get() + (size_t)padded_rows * H * Dv, 0.0f);

  // The task's blocks before the first one that a block prefetches: one burst now.
  {
    const int64_t first = k_start + key_lo, keys = std::min<int64_t>((int64_t)kPrefetchBlocks * c.block_keys, key_hi - key_lo);
    Prefetcher head;
    if (keys > 0) head.start(element_address(c, c.k, first * p.kv_heads * D), keys * p.kv_heads * D * c.elem_bytes, element_address(c, c.v, first * p.kv_heads * Dv),
                             keys * p.kv_heads * Dv * c.elem_bytes, 1);
    head.rest();
  }
  const int32_t* qseg = p.q_layout.segments;
  const uint8_t* qrole = p.q_layout.roles;
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;
  for (int key0 = key_lo; key0 < key_hi; key0 += kMaskKeys) {
    const int count = std::min(kMaskKeys, key_hi - key0);
    const int n8 = round_up(count, 8);
    for (int j = 0; j < n8; ++j) {  // padding keys get role -1: never allowed
      const bool real = j < count;
      const int64_t ki = k_start + key0 + (real ? j : 0);
      sc.key_role[j] = real ? (krole ? krole[ki] : 0) : -1;
      sc.key_seg[j] = real && kseg ? kseg[ki] : 0;
      sc.key_pos[j] = key0 + (real ? j : 0);
    }
    for (int r = 0; r < rows; ++r) {
      const int64_t qi = q_start + row0 + r;
      sc.allow[r] = row_allowed_bits(p.rule, qrole ? qrole[qi] : 0, qseg ? qseg[qi] : 0, row0 + r + Lk - Lq, sc.key_role,
                                     sc.key_seg, sc.key_pos, n8);
    }
    for (int j0 = 0; j0 < count; j0 += c.block_keys) {
      const int nb = std::min(c.block_keys, count - j0);
      const int64_t k_row0 = k_start + key0 + j0;
      // The K / V rows kPrefetchBlocks blocks ahead (linearly across all heads: the value pass reads
      // a block column-wise, which hardware prefetchers miss), spread over this block's loops.
      Prefetcher pf;
      const int ahead_key = key0 + j0 + nb + (kPrefetchBlocks - 1) * c.block_keys;  // in the sequence
      const int ahead = std::min(c.block_keys, key_hi - ahead_key);
      if (ahead > 0)
        pf.start(element_address(c, c.k, (k_start + ahead_key) * p.kv_heads * D), (int64_t)ahead * p.kv_heads * D * c.elem_bytes,
                 element_address(c, c.v, (k_start + ahead_key) * p.kv_heads * Dv), (int64_t)ahead * p.kv_heads * Dv * c.elem_bytes,
                 padded_rows / 4 * (H * ((nb + 1) / 2) + H * ((Dv / 8 + 1) / 2)));
      const uint64_t block_mask = nb == 64 ? ~uint64_t{0} : ((uint64_t{1} << nb) - 1);
      uint64_t bits[kChunkRows], any = 0;
      for (int r = 0; r < rows; ++r) {
        bits[r] = (sc.allow[r] >> j0) & block_mask;
        any |= bits[r];
      }
      if (!any) {
        pf.rest();
        continue;
      }
      // The block's K / V rows as float32: in place, or widened once for both row groups.
      const float* kb = static_cast<const float*>(c.k) + k_row0 * p.kv_heads * D;
      const float* vb = static_cast<const float*>(c.v) + k_row0 * p.kv_heads * Dv;
      if (c.dtype != kFloat32) {
        widen_row(static_cast<const uint16_t*>(c.k) + k_row0 * p.kv_heads * D, c.dtype, sc.k_block.get(), (int64_t)nb * p.kv_heads * D);
        widen_row(static_cast<const uint16_t*>(c.v) + k_row0 * p.kv_heads * Dv, c.dtype, sc.v_block.get(), (int64_t)nb * p.kv_heads * Dv);
        kb = sc.k_block.get();
        vb = sc.v_block.get();
      }
      // 4 rows at a time (a chunk holds at most 8): K / V rows loaded once per 4 rows, the second
      // group's from L1 (a block is L1-sized).
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const int group_rows = std::min(4, rows - r0);
        uint64_t group_any = 0;
        bool same = true;
        for (int r = r0; r < r0 + group_rows; ++r) {
          group_any |= bits[r];
          same = same && bits[r] == bits[r0];
        }
        if (!group_any) continue;
        scores_rows4<kD>(c, sc, r0, kb, nb, rows, bits, pf);
        for (int r = r0; r < r0 + group_rows; ++r) {
          if (!bits[r]) continue;
          sc.seen[r] = true;
          softmax_row(c, sc, r, nb, bits[r]);
        }
        if (same) {
          values_rows4(c, sc, r0, vb, bits[r0], pf);
        } else {  // rows see different keys: each row's own (a masked key's V may be NaN / Inf)
          pf.rest();
          for (int r = r0; r < r0 + group_rows; ++r)
            if (bits[r]) values_row(c, sc, r, vb, bits[r]);
        }
      }
      pf.rest();
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int64_t qi = q_start + row0 + r;
    c.seen[(size_t)(qi * c.splits + split)] = sc.seen[r];
    float* part = c.partial.get() + (size_t)(qi * c.splits + split) * H * c.partial_stride();
    for (int h = 0; h < H; ++h) {
      float* ph = part + (size_t)h * c.partial_stride();
      std::memcpy(ph, sc.o.get() + ((size_t)r * H + h) * Dv, sizeof(float) * Dv);
      ph[Dv] = sc.m[r][h];  // lane h holds head h in either layout
      ph[Dv + 1] = sc.l[r][h];
    }
  }
}

// One entry per instruction set (native/cpu/isa.h).
#define LK_HEADS_ENTRY(name, attr) \
  attr void name(const Call& c, int64_t task, Scratch& sc) {  \
    switch (c.p->head_dim) {                                    \
      case 8: return run_task<8>(c, task, sc);                  \
      case 16: return run_task<16>(c, task, sc);                \
      case 32: return run_task<32>(c, task, sc);                \
      case 64: return run_task<64>(c, task, sc);                \
      default: return run_task<0>(c, task, sc);                 \
    }                                                           \
  }
#if LK_ISA_X86
LK_HEADS_ENTRY(heads_task_avx512, LK_TARGET_AVX512)
LK_HEADS_ENTRY(heads_task_avx2, LK_TARGET_AVX2)
#endif
#if LK_ISA_NEON
LK_HEADS_ENTRY(heads_task_neon, )
#endif
LK_HEADS_ENTRY(heads_task_portable, )
#undef LK_HEADS_ENTRY

using HeadsTaskFn = void (*)(const Call&, int64_t, Scratch&);
const IsaTable<HeadsTaskFn> kHeadsTask = {{heads_task_portable, LK_IF_NEON(heads_task_neon), LK_IF_X86(heads_task_avx2),
                                           LK_IF_X86(heads_task_avx512), nullptr}};

}  // namespace

bool heads_major_fits(const AttentionParams& p) {
  const int H = p.heads, D = p.head_dim, Dv = p.value_dim;
  if (p.normalize != kSoftmax || D % 8 != 0 || Dv % 8 != 0 || D > kMaxDim || Dv > kMaxDim) return false;
  if (!(H == 1 || H == 2 || H == 4 || (H % 8 == 0 && H <= kMaxHeads))) return false;
  const int max_q = longest_sequence(p.q_layout, p.batch);
  // Small heads over longer sequences stay with the tiled kernel's head groups: this kernel's
  // row-at-a-time dot products measured slower there (8 x 8 heads, 58-token sequences: 18.5 vs
  // 13.5 ms), its per-(key, head) exp being no cheaper.
  return max_q <= kFewQueryRows;
}

void heads_major_attention(const AttentionParams& p) {
  const int H = p.heads, D = p.head_dim, Dv = p.value_dim;
  ThreadPool& pool = ThreadPool::shared();

  Call c;
  c.p = &p;
  c.q = p.q;
  c.k = p.k;
  c.v = p.v;
  c.dtype = p.dtype;
  c.elem_bytes = p.dtype == kFloat32 ? 4 : 2;
  c.heads_per_kv = H / p.kv_heads;
  c.head_vecs = H >= 8 ? H / 8 : 1;
  c.keys_per_vec = H >= 8 ? 1 : 8 / H;
  for (int u = 0; u < 8; ++u) c.lane_key[u] = H >= 8 ? 0 : u / H;
  for (int h = 0; h < H; ++h) c.k_off[h] = h / c.heads_per_kv * D;
  const int row_vecs = H * Dv / 8;
  for (int i = 0; i < round_up(row_vecs, 8); ++i) {
    const int col = 8 * std::min(i, row_vecs - 1), h = col / Dv;
    c.slab_head.push_back(h);
    c.slab_voff.push_back(h / c.heads_per_kv * Dv + col - h * Dv);
  }
  c.block_keys = kMaskKeys;
  while (c.block_keys > 8 && (int64_t)c.block_keys * p.kv_heads * (D + Dv) * (int64_t)sizeof(float) > kBlockBytes)
    c.block_keys /= 2;
  for (int b = 0; b < p.batch; ++b)
    for (int r = 0; r < p.q_layout.offsets[b + 1] - p.q_layout.offsets[b]; r += kChunkRows) {
      c.chunk_seq.push_back(b);
      c.chunk_row.push_back(r);
    }
  const int64_t chunks = (int64_t)c.chunk_seq.size();
  // Fewer row chunks than the pool can balance (a few users with long histories): each chunk's keys
  // are split into ranges whose partial softmax states are combined below.
  const int max_k = longest_sequence(p.kv_layout, p.batch);
  c.splits = 1;
  if (chunks > 0 && chunks < 4 * (int64_t)pool.size())
    c.splits = (int)std::max<int64_t>(1, std::min<int64_t>((4 * pool.size() + chunks - 1) / chunks, max_k / kMinSplitKeys));
  c.split_keys = round_up(std::max(1, (max_k + c.splits - 1) / c.splits), kMaskKeys);
  c.partial = alloc_floats((size_t)p.tq * c.splits * H * c.partial_stride());
  c.seen.reset(new uint8_t[(size_t)p.tq * c.splits]());

  std::vector<Scratch> scratch(pool.size());
  for (auto& sc : scratch) sc.init(p, c.block_keys);
  const HeadsTaskFn task = isa_pick(kHeadsTask);  // one path for the whole call
  pool.parallel_for(chunks * c.splits, [&](int64_t i, int worker) { task(c, i, scratch[(size_t)worker]); });

  // Split softmax: every split's state rescaled to the row's overall max. No allowed key: 0 and lse
  // -inf; allowed keys whose scores are all -inf: NaN (the reference's exp(-inf + inf)).
  const int stride = c.partial_stride();
  std::vector<FloatBuffer> out_rows(pool.size());  // half types: a row's output before narrowing
  if (p.dtype != kFloat32)
    for (auto& row : out_rows) row = alloc_floats((size_t)H * Dv);
  pool.parallel_for(p.tq, [&](int64_t qi, int worker) {
    float* out_row = p.dtype == kFloat32 ? static_cast<float*>(p.out) + qi * H * Dv : out_rows[(size_t)worker].get();
    for (int h = 0; h < H; ++h) {
      float* dst = out_row + (size_t)h * Dv;
      bool seen = false;
      float m = kNegInf;
      for (int s = 0; s < c.splits; ++s) {
        if (!c.seen[(size_t)(qi * c.splits + s)]) continue;
        seen = true;
        m = max_keep_nan(m, c.partial[((size_t)(qi * c.splits + s) * H + h) * stride + Dv]);
      }
      float l = 0.0f;
      std::fill(dst, dst + Dv, 0.0f);
      for (int s = 0; s < c.splits && seen; ++s) {
        if (!c.seen[(size_t)(qi * c.splits + s)]) continue;
        const float* part = c.partial.get() + ((size_t)(qi * c.splits + s) * H + h) * stride;
        const float w = c.splits == 1 ? 1.0f : std::exp(part[Dv] - m);
        l += part[Dv + 1] * w;
        for (int d = 0; d < Dv; ++d) dst[d] += part[d] * w;
      }
      const float norm = !seen ? 0.0f : l == 0.0f ? quiet_nan() : 1.0f / l;
      for (int d = 0; d < Dv; ++d) dst[d] *= norm;
      if (p.lse) p.lse[qi * H + h] = !seen ? kNegInf : l == 0.0f ? quiet_nan() : m + std::log(l);
    }
    if (p.dtype != kFloat32) narrow_row(out_row, p.dtype, static_cast<uint16_t*>(p.out) + qi * H * Dv, (int64_t)H * Dv);
  });
}

}  // namespace lk::cpu
