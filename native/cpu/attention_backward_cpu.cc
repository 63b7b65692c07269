// maskedAttentionBackward on the CPU, FlashAttention-2 style: nothing of size [L, L] is stored; each
// block of (query tile x key tile) pairs recomputes its scores and weights from q, k and the
// forward's lse. Every task writes only what it owns, so no two workers ever add into the same
// gradient row (no locks, no atomics, deterministic results). With enough (sequence, kv head) pairs
// to keep the pool busy, one task per pair walks the sequence's key tiles once and computes dk, dv
// and dq from the same recomputed weights (5 GEMMs per block, as FlashAttention-2): the task owns
// the sequence's dq rows of its heads. Otherwise two passes split the work finer, at the price of
// recomputing S and dP in pass 2 (7 GEMMs per block):
//   pass 1, one task per (sequence, key tile, kv head): dk and dv of its keys, summed over every
//           query head of the kv head's group (GQA) and every query tile that may see the keys;
//   pass 2, one task per (sequence, query tile, head): dq of its rows.
// Blocks are classified with the forward's shared rule table (cuda/common/mask_rules.h): skipped
// blocks cost nothing and full blocks run without per-pair checks. Of a partial block, as in the
// forward, only the entries that some pair needs are gathered (mask_bits.h,
// classify_partial_entries): pass 1 gathers query rows, pass 2 keys, into dense blocks of rows /
// keys every pair of which is allowed (no check) or checked per pair, so the work follows the
// allowed pairs rather than the partial tiles' area.
#include "attention_backward_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../../cuda/common/tile_plan.h"
#include "../thread_pool.h"
#include "convert.h"
#include "isa.h"
#include "mask_bits.h"
#include "simd.h"

namespace lk::cpu {
namespace {

constexpr int kRows = 32;  // query rows per tile
constexpr int kCols = 64;  // keys per tile


// Inputs as float32 copies, gradients narrowed into their dtype (parallel conversions, convert.h).
std::vector<float> widen(const void* src, DType dtype, int64_t count) {
  std::vector<float> out((size_t)count);
  if (dtype == kFloat32) {
    if (count) std::memcpy(out.data(), src, sizeof(float) * (size_t)count);
  } else {
    widen_to_float32(static_cast<const uint16_t*>(src), dtype, out.data(), count);
  }
  return out;
}

void narrow(const std::vector<float>& src, void* dst, DType dtype) {
  if (dtype == kFloat32) {
    if (!src.empty()) std::memcpy(dst, src.data(), sizeof(float) * src.size());
  } else {
    narrow_from_float32(src.data(), dtype, static_cast<uint16_t*>(dst), (int64_t)src.size());
  }
}

// Tiles of `tile` tokens of every sequence (cuda/common/tile_plan.h numbering) and their summaries.
struct TileSet {
  std::vector<int32_t> base;
  std::vector<TileSummary> sum;
};

TileSet tile_set(const LayoutView& layout, int batch, int tile) {
  TileSet s;
  s.base = tile_bases(layout.offsets, batch, tile);
  s.sum = tile_summaries(layout.offsets, layout.segments, layout.roles, batch, tile, s.base);
  return s;
}

struct Job {
  const AttentionBackwardParams* p;
  const float *q, *k, *v, *dout;
  const float* lse;    // [tq, heads] (softmax)
  const float* delta;  // [tq, heads] = dO · O (softmax)
  float *dq, *dk, *dv; // float32 [.., heads, dim]
  TileSet qt, kt;
};

constexpr int kMaxRows = 36;      // kRows rounded up to any GEMM shape's rows (simd.h: 4 or 6)
constexpr int kMaxKeyRows = 66;   // kCols rounded up likewise
constexpr int kMaxDim = 256;      // head sizes rounded up to any GEMM shape's columns (16 or 32)

// Per-worker scratch, zero-padded to the GEMM shapes (simd.h) so the micro-kernels need no edges:
// Q and dO rows (strides dp / dvp), K^T and V^T of a key tile, K rows (pass 2), P and scale · dS
// [rows][kCols], their transposes [keys][kMaxRows] (pass 1), and two accumulators.
struct Scratch {
  std::vector<float> q, dout, kt, vt, krows, p, ds, pt, dst, acc_a, acc_b, dq_block;
  void init() {
    q.assign((size_t)kMaxRows * kMaxDim, 0.0f);
    dout.assign((size_t)kMaxRows * kMaxDim, 0.0f);
    kt.assign((size_t)kMaxDim * kCols, 0.0f);
    vt.assign((size_t)kMaxDim * kCols, 0.0f);
    krows.assign((size_t)kCols * kMaxDim, 0.0f);
    p.assign((size_t)kMaxRows * kCols, 0.0f);
    ds.assign((size_t)kMaxRows * kCols, 0.0f);
    pt.assign((size_t)kMaxKeyRows * kMaxRows, 0.0f);
    dst.assign((size_t)kMaxKeyRows * kMaxRows, 0.0f);
    acc_a.assign((size_t)kMaxKeyRows * kMaxDim, 0.0f);
    acc_b.assign((size_t)kMaxKeyRows * kMaxDim, 0.0f);
    dq_block.assign((size_t)kMaxRows * kMaxDim, 0.0f);
  }
};

// Up to kRows query rows of sequence b read for head h: one tile's consecutive rows, or rows
// gathered from partial tiles. row[r] is the position of row r inside the sequence.
struct QueryBlock {
  int b, h, nr;
  int64_t q_start;
  int align;  // bottom-right causal alignment Lk - Lq
  int row[kRows];
};

// Up to kCols keys of sequence b read for kv head g: one tile's consecutive keys, or keys gathered
// from partial tiles. key[c] is the position of key c inside the sequence.
struct KeyBlock {
  int g, nc;
  int64_t k_start;
  int key[kCols];
};

// Padded sizes for one GEMM shape.
struct Pads {
  int dp, dvp;  // D, Dv rounded up to the shape's columns
  int rows;     // kRows rounded up to the shape's rows
};

template <typename Shape>
Pads pads_for(const AttentionParams& f) {
  return Pads{round_up(f.head_dim, Shape::kCols), round_up(f.value_dim, Shape::kCols), round_up(kRows, Shape::kRows)};
}

// Q and dO rows of the block (rows past nr and columns past D / Dv stay zero from init / earlier).
LK_INLINE void load_query_rows(const Job& j, const QueryBlock& qb, const Pads& pd, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int D = f.head_dim, Dv = f.value_dim, H = f.heads;
  for (int r = 0; r < pd.rows; ++r) {
    float* qd = &s.q[(size_t)r * pd.dp];
    float* od = &s.dout[(size_t)r * pd.dvp];
    if (r < qb.nr) {
      const int64_t qi = qb.q_start + qb.row[r];
      std::memcpy(qd, j.q + (qi * H + qb.h) * D, sizeof(float) * D);
      std::memcpy(od, j.dout + (qi * H + qb.h) * Dv, sizeof(float) * Dv);
      std::fill(qd + D, qd + pd.dp, 0.0f);
      std::fill(od + Dv, od + pd.dvp, 0.0f);
    } else {
      std::fill(qd, qd + pd.dp, 0.0f);
      std::fill(od, od + pd.dvp, 0.0f);
    }
  }
}

// K^T and V^T of the key tile (columns past nc zero); with `rows`, also K rows [kCols][dp].
LK_INLINE void load_key_columns(const Job& j, const KeyBlock& kb, const Pads& pd, bool rows, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int D = f.head_dim, Dv = f.value_dim, Hkv = f.kv_heads;
  for (int c = 0; c < kCols; ++c) {
    if (c < kb.nc) {
      const float* krow = j.k + ((kb.k_start + kb.key[c]) * Hkv + kb.g) * D;
      const float* vrow = j.v + ((kb.k_start + kb.key[c]) * Hkv + kb.g) * Dv;
      for (int d = 0; d < D; ++d) s.kt[(size_t)d * kCols + c] = krow[d];
      for (int d = 0; d < Dv; ++d) s.vt[(size_t)d * kCols + c] = vrow[d];
      if (rows) {
        std::memcpy(&s.krows[(size_t)c * pd.dp], krow, sizeof(float) * D);
        std::fill(&s.krows[(size_t)c * pd.dp + D], &s.krows[(size_t)(c + 1) * pd.dp], 0.0f);
      }
    } else {
      for (int d = 0; d < D; ++d) s.kt[(size_t)d * kCols + c] = 0.0f;
      for (int d = 0; d < Dv; ++d) s.vt[(size_t)d * kCols + c] = 0.0f;
      if (rows) std::fill(&s.krows[(size_t)c * pd.dp], &s.krows[(size_t)(c + 1) * pd.dp], 0.0f);
    }
  }
}

// Weights P and scaled score gradients scale · dS of the block's pairs: S = Q K^T and dP = dO V^T by
// GEMM, then per row (8 lanes at a time) P = exp(scale S - lse), dS = P (dP - delta) (softmax) or
// the silu forms (backward_params.h), and masked pairs set to 0 by selection. Returns whether any
// pair of the block is allowed.
template <typename Shape>
LK_INLINE bool block_weights(const Job& j, const QueryBlock& qb, const KeyBlock& kb, int cls, const Pads& pd, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int H = f.heads, nc = kb.nc;
  const int ncp = round_up(nc, Shape::kCols);
  gemm_blocks<Shape>(pd.rows, ncp, f.head_dim, s.q.data(), pd.dp, s.kt.data(), kCols, s.p.data(), kCols, false);
  gemm_blocks<Shape>(pd.rows, ncp, f.value_dim, s.dout.data(), pd.dvp, s.vt.data(), kCols, s.ds.data(), kCols, false);
  const bool softmax = f.normalize == kSoftmax;
  // Partial blocks: the keys as the rule sees them, once per block (mask_bits.h); padding keys get
  // role -1 (never allowed).
  const int n8 = round_up(nc, 8);
  int32_t key_role[kCols], key_seg[kCols], key_pos[kCols];
  if (cls != kTileFull)
    for (int c = 0; c < n8; ++c) {
      const int64_t ki = kb.k_start + kb.key[c < nc ? c : 0];
      key_role[c] = c < nc ? (f.kv_layout.roles ? f.kv_layout.roles[ki] : 0) : -1;
      key_seg[c] = c < nc && f.kv_layout.segments ? f.kv_layout.segments[ki] : 0;
      key_pos[c] = kb.key[c < nc ? c : 0];
    }
  const v8i lane_bit{1, 2, 4, 8, 16, 32, 64, 128};
  bool any = false;
  for (int r = 0; r < qb.nr; ++r) {
    float* prow = &s.p[(size_t)r * kCols];
    float* dsrow = &s.ds[(size_t)r * kCols];
    const int64_t qi = qb.q_start + qb.row[r];
    if (softmax) {
      const v8f lse = splat(j.lse[qi * H + qb.h]), delta = splat(j.delta[qi * H + qb.h]), scale = splat(f.scale);
      for (int c = 0; c < ncp; c += 8) {  // softmax_weight / softmax_dscore, 8 lanes
        const v8f w = exp8(load8(prow + c) * scale - lse);
        store8(prow + c, w);
        store8(dsrow + c, w * (load8(dsrow + c) - delta) * scale);
      }
    } else {
      for (int c = 0; c < nc; ++c) {
        float w, ds;
        silu_weight_dscore(f.scale * prow[c], dsrow[c], f.silu_inv_divisor, &w, &ds);
        prow[c] = w;
        dsrow[c] = f.scale * ds;
      }
    }
    if (cls == kTileFull) {
      any = true;
      continue;
    }
    const uint64_t bits = row_allowed_bits(f.rule, f.q_layout.roles ? f.q_layout.roles[qi] : 0,
                                           f.q_layout.segments ? f.q_layout.segments[qi] : 0, qb.row[r] + qb.align, key_role, key_seg,
                                           key_pos, n8);
    any = any || bits != 0;
    for (int c = 0; c < n8; c += 8) {  // masked pairs: 0 by selection (a NaN weight of theirs stays out)
      const v8i ok = (splat_int((int32_t)((bits >> c) & 0xffu)) & lane_bit) != 0;
      store8(prow + c, ok != 0 ? load8(prow + c) : splat(0.0f));
      store8(dsrow + c, ok != 0 ? load8(dsrow + c) : splat(0.0f));
    }
  }
  return any;
}

// An empty gathered block of sequence b (head h / kv head g); rows / keys are appended.
QueryBlock query_list(const AttentionParams& f, int b, int h) {
  QueryBlock qb;
  qb.b = b;
  qb.h = h;
  qb.nr = 0;
  qb.q_start = f.q_layout.offsets[b];
  const int lq = f.q_layout.offsets[b + 1] - (int)qb.q_start;
  qb.align = (f.kv_layout.offsets[b + 1] - f.kv_layout.offsets[b]) - lq;
  return qb;
}
KeyBlock key_list(const AttentionParams& f, int b, int g) {
  KeyBlock kb;
  kb.g = g;
  kb.nc = 0;
  kb.k_start = f.kv_layout.offsets[b];
  return kb;
}

// Query tile `tile` / key tile `tile` of sequence b as a block.
QueryBlock query_block(const AttentionParams& f, int b, int tile, int h) {
  QueryBlock qb = query_list(f, b, h);
  const int r0 = tile * kRows;
  qb.nr = std::min(kRows, f.q_layout.offsets[b + 1] - (int)qb.q_start - r0);
  for (int r = 0; r < qb.nr; ++r) qb.row[r] = r0 + r;
  return qb;
}
KeyBlock key_block(const AttentionParams& f, int b, int tile, int g) {
  KeyBlock kb = key_list(f, b, g);
  const int c0 = tile * kCols;
  kb.nc = std::min(kCols, f.kv_layout.offsets[b + 1] - (int)kb.k_start - c0);
  for (int c = 0; c < kb.nc; ++c) kb.key[c] = c0 + c;
  return kb;
}

// Bounds of a whole tile block (consecutive rows / keys).
TileBounds query_bounds(const Job& j, const QueryBlock& qb, int tile) {
  return TileBounds{j.qt.sum[(size_t)(j.qt.base[(size_t)qb.b] + tile)], qb.row[0] + qb.align, qb.row[qb.nr - 1] + qb.align};
}
TileBounds key_bounds(const Job& j, int b, const KeyBlock& kb, int tile) {
  return TileBounds{j.kt.sum[(size_t)(j.kt.base[(size_t)b] + tile)], kb.key[0], kb.key[kb.nc - 1]};
}

// Leftover gathered lists: when both fit one block, the all-allowed entries join the checked ones
// (one padded block instead of two), in position order.
template <int N>
void merge_leftovers(int* full, int* n_full, int* checked, int* n_checked) {
  if (*n_full == 0 || *n_checked == 0 || *n_full + *n_checked > N) return;
  int merged[N];
  std::merge(full, full + *n_full, checked, checked + *n_checked, merged);
  *n_checked += *n_full;
  *n_full = 0;
  std::memcpy(checked, merged, sizeof(int) * (size_t)*n_checked);
}

// dQ += dS K of a block whose weights block_weights left in the scratch: dq row r at
// dq + index * stride, index = row[r] (at_positions: the gradient itself) or r (a tile's
// accumulator). By GEMM, or by selection over the allowed pairs when the keys hold a NaN / Inf.
template <typename Shape>
LK_INLINE void add_block_dq(const Job& j, const QueryBlock& qb, const KeyBlock& kb, const Pads& pd, float* dq, int64_t stride,
                            bool at_positions, Scratch& s) {
  const int D = j.p->fwd.head_dim;
  auto dq_row = [&](int r) { return dq + (at_positions ? qb.row[r] : r) * stride; };
  if (all_finite(s.krows.data(), kb.nc * pd.dp)) {
    float* blk = s.dq_block.data();
    gemm_blocks<Shape>(pd.rows, pd.dp, kb.nc, s.ds.data(), kCols, s.krows.data(), pd.dp, blk, pd.dp, false);
    for (int r = 0; r < qb.nr; ++r) {
      float* dst = dq_row(r);
      const float* src = blk + (size_t)r * pd.dp;
      for (int d = 0; d < D; ++d) dst[d] += src[d];
    }
    return;
  }
  for (int r = 0; r < qb.nr; ++r)
    for (int c = 0; c < kb.nc; ++c) {
      const float dsw = s.ds[(size_t)r * kCols + c];
      if (dsw == 0.0f) continue;  // masked (by selection): a masked key's NaN / Inf stays out of dq
      const float* krow = &s.krows[(size_t)c * pd.dp];
      float* dst = dq_row(r);
      for (int d = 0; d < D; ++d) dst[d] += dsw * krow[d];
    }
}

// Pass 1, one block: dV += P^T dO and dK += dS^T Q of the block's keys (accumulators dk / dv) over
// the block's query rows, by GEMM; when the rows' Q or dO hold a NaN / Inf, by selection over the
// allowed pairs instead (a masked pair's 0 times a NaN would leak through the product). With
// kWithDq (one task per sequence and kv head, K rows loaded), also dQ += dS K into the rows' dq.
template <typename Shape, bool kWithDq>
LK_INLINE void key_block_grads(const Job& j, const QueryBlock& qb, const KeyBlock& kb, int cls, const Pads& pd, float* dk, float* dv,
                               Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int D = f.head_dim, Dv = f.value_dim;
  const int key_rows = round_up(kb.nc, Shape::kRows);
  load_query_rows(j, qb, pd, s);
  if (!block_weights<Shape>(j, qb, kb, cls, pd, s)) return;
  if constexpr (kWithDq)  // the gradient itself: row r at position row[r] of the sequence
    add_block_dq<Shape>(j, qb, kb, pd, j.dq + (qb.q_start * f.heads + qb.h) * (int64_t)D, (int64_t)f.heads * D, true, s);
  if (all_finite(s.q.data(), qb.nr * pd.dp) && all_finite(s.dout.data(), qb.nr * pd.dvp)) {
    for (int c = 0; c < key_rows; ++c)
      for (int r = 0; r < qb.nr; ++r) {
        s.pt[(size_t)c * kMaxRows + r] = c < kb.nc ? s.p[(size_t)r * kCols + c] : 0.0f;
        s.dst[(size_t)c * kMaxRows + r] = c < kb.nc ? s.ds[(size_t)r * kCols + c] : 0.0f;
      }
    gemm_blocks<Shape>(key_rows, pd.dvp, qb.nr, s.pt.data(), kMaxRows, s.dout.data(), pd.dvp, dv, pd.dvp, true);
    gemm_blocks<Shape>(key_rows, pd.dp, qb.nr, s.dst.data(), kMaxRows, s.q.data(), pd.dp, dk, pd.dp, true);
    return;
  }
  for (int r = 0; r < qb.nr; ++r) {
    const float* dorow = &s.dout[(size_t)r * pd.dvp];
    const float* qrow = &s.q[(size_t)r * pd.dp];
    for (int c = 0; c < kb.nc; ++c) {
      const float pw = s.p[(size_t)r * kCols + c], dsw = s.ds[(size_t)r * kCols + c];
      if (pw == 0.0f && dsw == 0.0f) continue;  // masked (by selection): a NaN q / dO row stays out
      for (int d = 0; d < Dv; ++d) dv[(size_t)c * pd.dvp + d] += pw * dorow[d];
      for (int d = 0; d < D; ++d) dk[(size_t)c * pd.dp + d] += dsw * qrow[d];
    }
  }
}

// Runs a gathered row list as one block (a function, not a lambda: a lambda would not carry the
// entry's target attribute) and empties it.
template <typename Shape, bool kWithDq>
LK_INLINE void flush_rows(const Job& j, QueryBlock& rows, const KeyBlock& kb, int cls, const Pads& pd, float* dk, float* dv, Scratch& s) {
  if (rows.nr > 0) key_block_grads<Shape, kWithDq>(j, rows, kb, cls, pd, dk, dv, s);
  rows.nr = 0;
}

// Pass 1: dk, dv of key tile `tile` of sequence b for kv head g, over every query head of the group
// and every query tile that may see the keys: full query tiles as they are, partial ones split into
// their rows (those that see every key of the tile, those that see some, and those that see none,
// which are dropped) gathered into blocks of kRows. kWithDq: also dq (key_block_grads).
template <typename Shape, bool kWithDq>
LK_INLINE void key_tile_grads(const Job& j, int b, int tile, int g, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int D = f.head_dim, Dv = f.value_dim, group = f.heads / f.kv_heads;
  const Pads pd = pads_for<Shape>(f);
  const KeyBlock kb = key_block(f, b, tile, g);
  const int key_rows = round_up(kb.nc, Shape::kRows);
  const TileBounds kbounds = key_bounds(j, b, kb, tile);
  float* dk = s.acc_a.data();  // [key_rows][dp]
  float* dv = s.acc_b.data();  // [key_rows][dvp]
  std::fill(dk, dk + (size_t)key_rows * pd.dp, 0.0f);
  std::fill(dv, dv + (size_t)key_rows * pd.dvp, 0.0f);
  load_key_columns(j, kb, pd, kWithDq, s);
  const int q_tiles = j.qt.base[(size_t)b + 1] - j.qt.base[(size_t)b];
  int8_t row_class[kRows];
  for (int h = g * group; h < (g + 1) * group; ++h) {
    QueryBlock full_rows = query_list(f, b, h), checked_rows = query_list(f, b, h);
    for (int qt = 0; qt < q_tiles; ++qt) {
      const QueryBlock qb = query_block(f, b, qt, h);
      const TileBounds qbounds = query_bounds(j, qb, qt);
      const int cls = classify_tile(f.rule, qbounds, kbounds);
      if (cls == kTileSkip) continue;
      if (cls == kTileFull) {
        key_block_grads<Shape, kWithDq>(j, qb, kb, kTileFull, pd, dk, dv, s);
        continue;
      }
      classify_partial_entries(f.rule, qbounds, kbounds, SplitSide::kRows, f.q_layout.segments, f.q_layout.roles,
                               qb.q_start + qb.row[0], qb.row[0] + qb.align, qb.nr, row_class);
      for (int r = 0; r < qb.nr; ++r) {
        if (row_class[r] == kTileSkip) continue;
        const bool every = row_class[r] == kTileFull;
        QueryBlock& rows = every ? full_rows : checked_rows;
        rows.row[rows.nr++] = qb.row[r];
        if (rows.nr == kRows) flush_rows<Shape, kWithDq>(j, rows, kb, every ? kTileFull : kTilePartial, pd, dk, dv, s);
      }
    }
    merge_leftovers<kRows>(full_rows.row, &full_rows.nr, checked_rows.row, &checked_rows.nr);
    flush_rows<Shape, kWithDq>(j, full_rows, kb, kTileFull, pd, dk, dv, s);
    flush_rows<Shape, kWithDq>(j, checked_rows, kb, kTilePartial, pd, dk, dv, s);
  }
  for (int c = 0; c < kb.nc; ++c) {
    const int64_t ki = kb.k_start + kb.key[c];
    std::memcpy(j.dk + (ki * f.kv_heads + g) * D, dk + (size_t)c * pd.dp, sizeof(float) * D);
    std::memcpy(j.dv + (ki * f.kv_heads + g) * Dv, dv + (size_t)c * pd.dvp, sizeof(float) * Dv);
  }
}

// Pass 2, one block: dQ += dS K over the block's keys into the tile's accumulator dq
// (add_block_dq). Runs a gathered key list and empties it.
template <typename Shape>
LK_INLINE void flush_keys(const Job& j, const QueryBlock& qb, KeyBlock& kb, int cls, const Pads& pd, float* dq, Scratch& s) {
  if (kb.nc == 0) return;
  load_key_columns(j, kb, pd, true, s);
  if (block_weights<Shape>(j, qb, kb, cls, pd, s)) add_block_dq<Shape>(j, qb, kb, pd, dq, pd.dp, false, s);
  kb.nc = 0;
}

// Pass 2: dq of query tile `tile` of sequence b for head h: full key tiles as they are, the keys of
// partial ones that some row sees gathered into blocks of kCols (as the forward does).
template <typename Shape>
LK_INLINE void query_tile_grads(const Job& j, int b, int tile, int h, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int D = f.head_dim, g = h / (f.heads / f.kv_heads);
  const Pads pd = pads_for<Shape>(f);
  const QueryBlock qb = query_block(f, b, tile, h);
  const TileBounds qbounds = query_bounds(j, qb, tile);
  float* dq = s.acc_a.data();  // [rows][dp]
  std::fill(dq, dq + (size_t)pd.rows * pd.dp, 0.0f);
  load_query_rows(j, qb, pd, s);
  const int lk = f.kv_layout.offsets[b + 1] - f.kv_layout.offsets[b];
  const int key_end = visible_key_end(f.rule, qbounds, lk);
  KeyBlock full_keys = key_list(f, b, g), checked_keys = key_list(f, b, g);
  int8_t key_class[kCols];
  for (int kt = 0; kt * kCols < key_end; ++kt) {
    KeyBlock kb = key_block(f, b, kt, g);
    const TileBounds kbounds = key_bounds(j, b, kb, kt);
    const int cls = classify_tile(f.rule, qbounds, kbounds);
    if (cls == kTileSkip) continue;
    if (cls == kTileFull) {
      flush_keys<Shape>(j, qb, kb, kTileFull, pd, dq, s);
      continue;
    }
    classify_partial_entries(f.rule, qbounds, kbounds, SplitSide::kKeys, f.kv_layout.segments, f.kv_layout.roles,
                             kb.k_start + kb.key[0], kb.key[0], kb.nc, key_class);
    for (int c = 0; c < kb.nc; ++c) {
      if (key_class[c] == kTileSkip) continue;
      const bool every = key_class[c] == kTileFull;
      KeyBlock& keys = every ? full_keys : checked_keys;
      keys.key[keys.nc++] = kb.key[c];
      if (keys.nc == kCols) flush_keys<Shape>(j, qb, keys, every ? kTileFull : kTilePartial, pd, dq, s);
    }
  }
  merge_leftovers<kCols>(full_keys.key, &full_keys.nc, checked_keys.key, &checked_keys.nc);
  flush_keys<Shape>(j, qb, full_keys, kTileFull, pd, dq, s);
  flush_keys<Shape>(j, qb, checked_keys, kTilePartial, pd, dq, s);
  for (int r = 0; r < qb.nr; ++r)
    std::memcpy(j.dq + ((qb.q_start + qb.row[r]) * f.heads + h) * D, dq + (size_t)r * pd.dp, sizeof(float) * D);
}

// One task per (sequence b, kv head g): dk, dv and dq of the sequence, key tile after key tile.
template <typename Shape>
LK_INLINE void sequence_grads(const Job& j, int b, int g, Scratch& s) {
  const AttentionParams& f = j.p->fwd;
  const int group = f.heads / f.kv_heads;
  for (int64_t qi = f.q_layout.offsets[b]; qi < f.q_layout.offsets[b + 1]; ++qi)
    std::fill(j.dq + (qi * f.heads + g * group) * f.head_dim, j.dq + (qi * f.heads + (g + 1) * group) * f.head_dim, 0.0f);
  const int key_tiles = j.kt.base[(size_t)b + 1] - j.kt.base[(size_t)b];
  for (int kt = 0; kt < key_tiles; ++kt) key_tile_grads<Shape, true>(j, b, kt, g, s);
}

// One entry per instruction set, each compiled for it (native/cpu/isa.h).
using TileFn = void (*)(const Job&, int, int, int, Scratch&);
using SequenceFn = void (*)(const Job&, int, int, Scratch&);
#if LK_ISA_X86
LK_TARGET_AVX512 void keys_avx512(const Job& j, int b, int t, int g, Scratch& s) { key_tile_grads<GemmAvx512, false>(j, b, t, g, s); }
LK_TARGET_AVX512 void sequences_avx512(const Job& j, int b, int g, Scratch& s) { sequence_grads<GemmAvx512>(j, b, g, s); }
LK_TARGET_AVX512 void queries_avx512(const Job& j, int b, int t, int h, Scratch& s) { query_tile_grads<GemmAvx512>(j, b, t, h, s); }
LK_TARGET_AVX2 void keys_avx2(const Job& j, int b, int t, int g, Scratch& s) { key_tile_grads<GemmAvx2, false>(j, b, t, g, s); }
LK_TARGET_AVX2 void sequences_avx2(const Job& j, int b, int g, Scratch& s) { sequence_grads<GemmAvx2>(j, b, g, s); }
LK_TARGET_AVX2 void queries_avx2(const Job& j, int b, int t, int h, Scratch& s) { query_tile_grads<GemmAvx2>(j, b, t, h, s); }
#endif
#if LK_ISA_NEON
void keys_neon(const Job& j, int b, int t, int g, Scratch& s) { key_tile_grads<GemmNeon, false>(j, b, t, g, s); }
void sequences_neon(const Job& j, int b, int g, Scratch& s) { sequence_grads<GemmNeon>(j, b, g, s); }
void queries_neon(const Job& j, int b, int t, int h, Scratch& s) { query_tile_grads<GemmNeon>(j, b, t, h, s); }
#endif
void keys_portable(const Job& j, int b, int t, int g, Scratch& s) { key_tile_grads<GemmBaseline, false>(j, b, t, g, s); }
void sequences_portable(const Job& j, int b, int g, Scratch& s) { sequence_grads<GemmBaseline>(j, b, g, s); }
void queries_portable(const Job& j, int b, int t, int h, Scratch& s) { query_tile_grads<GemmBaseline>(j, b, t, h, s); }

const IsaTable<TileFn> kKeyTiles = {{keys_portable, LK_IF_NEON(keys_neon), LK_IF_X86(keys_avx2), LK_IF_X86(keys_avx512), nullptr}};
const IsaTable<SequenceFn> kSequences = {{sequences_portable, LK_IF_NEON(sequences_neon), LK_IF_X86(sequences_avx2),
                                          LK_IF_X86(sequences_avx512), nullptr}};
const IsaTable<TileFn> kQueryTiles = {{queries_portable, LK_IF_NEON(queries_neon), LK_IF_X86(queries_avx2), LK_IF_X86(queries_avx512), nullptr}};

}  // namespace

void masked_attention_backward(const AttentionBackwardParams& p) {
  const AttentionParams& f = p.fwd;
  const int H = f.heads, D = f.head_dim, Dv = f.value_dim, Hkv = f.kv_heads;
  // float32 inputs are read in place and float32 gradients written in place (no copies of the
  // batch's tensors); other dtypes go through float32 buffers.
  const Float32View q = as_float32(f.q, f.dtype, f.tq * H * D);
  const Float32View k = as_float32(f.k, f.dtype, f.tk * Hkv * D);
  const Float32View v = as_float32(f.v, f.dtype, f.tk * Hkv * Dv);
  const Float32View dout = as_float32(p.d_out, f.dtype, f.tq * H * Dv);
  std::vector<float> delta;
  ThreadPool& pool = ThreadPool::shared();
  if (f.normalize == kSoftmax) {
    const Float32View out = as_float32(f.out, f.dtype, f.tq * H * Dv);
    delta.resize((size_t)(f.tq * H));
    const int64_t chunk = 4096;
    pool.parallel_for((f.tq * H + chunk - 1) / chunk, [&](int64_t task, int) {
      const int64_t end = std::min<int64_t>(f.tq * H, (task + 1) * chunk);
      for (int64_t row = task * chunk; row < end; ++row) {
        float acc = 0.0f;
        for (int d = 0; d < Dv; ++d) acc += dout.data[row * Dv + d] * out.data[row * Dv + d];
        delta[(size_t)row] = acc;
      }
    });
  }
  // Every task overwrites the rows it owns (the fused pass zeroes its dq rows before adding).
  Float32Output dq = float32_output(p.dq, f.dtype, f.tq * H * D);
  Float32Output dk = float32_output(p.dk, f.dtype, f.tk * Hkv * D);
  Float32Output dv = float32_output(p.dv, f.dtype, f.tk * Hkv * Dv);
  Job job{&p, q.data, k.data, v.data, dout.data, f.lse, delta.data(), dq.data, dk.data, dv.data,
          tile_set(f.q_layout, f.batch, kRows), tile_set(f.kv_layout, f.batch, kCols)};

  std::vector<Scratch> scratch(pool.size());
  for (auto& s : scratch) s.init();
  // The fused pass when its (sequence, kv head) tasks balance the pool: the largest (by Lq x Lk)
  // at most half a thread's share, so that longest-first scheduling stays close to even (it always
  // needs 2 tasks per thread); else the two passes' finer split pays for their recomputation.
  auto work = [&](int b) { return (int64_t)(f.q_layout.offsets[b + 1] - f.q_layout.offsets[b]) * (f.kv_layout.offsets[b + 1] - f.kv_layout.offsets[b]); };
  int64_t total_work = 0, max_work = 0;
  for (int b = 0; b < f.batch; ++b) {
    total_work += work(b) * Hkv;
    max_work = std::max(max_work, work(b));
  }
  if (max_work > 0 && 2 * max_work * (int64_t)pool.size() <= total_work) {
    const SequenceFn sequences = isa_pick(kSequences);  // one path for the whole call
    std::vector<int> order((size_t)f.batch);
    for (int b = 0; b < f.batch; ++b) order[(size_t)b] = b;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return work(a) > work(b); });
    pool.parallel_for((int64_t)f.batch * Hkv, [&](int64_t i, int worker) {
      sequences(job, order[(size_t)(i / Hkv)], (int)(i % Hkv), scratch[(size_t)worker]);
    });
    dq.finish();
    dk.finish();
    dv.finish();
    return;
  }
  const TileFn key_tiles = isa_pick(kKeyTiles), query_tiles = isa_pick(kQueryTiles);  // one path for the whole call
  // Later tiles first: under causal rules they meet the most pairs (shorter tail).
  const std::vector<TileRef> key_tasks = tiles_longest_first(job.kt.base);
  pool.parallel_for((int64_t)key_tasks.size() * Hkv, [&](int64_t i, int worker) {
    const TileRef& t = key_tasks[(size_t)(i / Hkv)];
    key_tiles(job, t.seq, t.tile, (int)(i % Hkv), scratch[(size_t)worker]);
  });
  const std::vector<TileRef> query_tasks = tiles_longest_first(job.qt.base);
  pool.parallel_for((int64_t)query_tasks.size() * H, [&](int64_t i, int worker) {
    const TileRef& t = query_tasks[(size_t)(i / H)];
    query_tiles(job, t.seq, t.tile, (int)(i % H), scratch[(size_t)worker]);
  });
  dq.finish();
  dk.finish();
  dv.finish();
}

// sparseAttentionBackward: one task per (batch entry, kv head) owns the dk / dv rows of the entry's
// keys and the dq rows of its queries for the group's heads, so the scatter-add of duplicated or
// shared indices needs no atomics.
void sparse_attention_backward(const SparseBackwardParams& p) {
  const SparseParams& f = p.fwd;
  const int H = f.heads, D = f.head_dim, Dv = f.value_dim, Hkv = f.kv_heads, K = f.top_k, group = H / Hkv;
  const std::vector<float> q = widen(f.q, f.dtype, f.nq * H * D);
  const std::vector<float> k = widen(f.k, f.dtype, f.tk * Hkv * D);
  const std::vector<float> v = widen(f.v, f.dtype, f.tk * Hkv * Dv);
  const std::vector<float> out = widen(f.out, f.dtype, f.nq * H * Dv);
  const std::vector<float> dout = widen(p.d_out, f.dtype, f.nq * H * Dv);
  std::vector<float> dq((size_t)(f.nq * H * D)), dk((size_t)(f.tk * Hkv * D)), dv((size_t)(f.tk * Hkv * Dv));
  ThreadPool::shared().parallel_for((int64_t)f.batch * Hkv, [&](int64_t task, int) {
    const int b = (int)(task / Hkv), g = (int)(task % Hkv);
    const int64_t k_start = f.k_offsets[b];
    for (int64_t i = f.q_offsets[b]; i < f.q_offsets[b + 1]; ++i) {
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const float* qrow = &q[(size_t)((i * H + h) * D)];
        const float* dorow = &dout[(size_t)((i * H + h) * Dv)];
        const float lse = f.lse[i * H + h];
        float delta = 0.0f;
        for (int d = 0; d < Dv; ++d) delta += dorow[d] * out[(size_t)((i * H + h) * Dv + d)];
        float* dqrow = &dq[(size_t)((i * H + h) * D)];
        for (int x = 0; x < K; ++x) {
          const int32_t j = f.indices[i * K + x];
          if (j < 0) continue;
          const size_t krow = (size_t)(((k_start + j) * Hkv + g) * D), vrow = (size_t)(((k_start + j) * Hkv + g) * Dv);
          float score = 0.0f, dp = 0.0f;
          for (int d = 0; d < D; ++d) score += qrow[d] * k[krow + d];
          for (int d = 0; d < Dv; ++d) dp += dorow[d] * v[vrow + d];
          const float weight = softmax_weight(f.scale * score, lse);
          const float ds = f.scale * softmax_dscore(weight, dp, delta);
          for (int d = 0; d < Dv; ++d) dv[vrow + d] += weight * dorow[d];
          for (int d = 0; d < D; ++d) {
            dqrow[d] += ds * k[krow + d];
            dk[krow + d] += ds * qrow[d];
          }
        }
      }
    }
  });
  narrow(dq, p.dq, f.dtype);
  narrow(dk, p.dk, f.dtype);
  narrow(dv, p.dv, f.dtype);
}

// indexerScoresBackward: one task per batch entry owns its queries' dqI / dw and its keys' dkI.
void indexer_scores_backward(const IndexerBackwardParams& p) {
  const IndexerParams& f = p.fwd;
  const int Hi = f.heads, Di = f.dim, lmax = f.max_len;
  const std::vector<float> q = widen(f.q, f.dtype, f.nq * Hi * Di);
  const std::vector<float> k = widen(f.k, f.dtype, f.tk * Di);
  const std::vector<float> w = widen(f.w, f.dtype, f.nq * Hi);
  std::vector<float> dq((size_t)(f.nq * Hi * Di)), dk((size_t)(f.tk * Di)), dw((size_t)(f.nq * Hi));
  ThreadPool::shared().parallel_for(f.batch, [&](int64_t b, int) {
    const int64_t k_start = f.k_offsets[b];
    const int len = f.k_offsets[b + 1] - (int)k_start;
    for (int64_t i = f.q_offsets[b]; i < f.q_offsets[b + 1]; ++i) {
      for (int j = 0; j < len; ++j) {
        const float grad = p.d_scores[i * lmax + j];
        const float* krow = &k[(size_t)((k_start + j) * Di)];
        float* dkrow = &dk[(size_t)((k_start + j) * Di)];
        for (int h = 0; h < Hi; ++h) {
          const float* qrow = &q[(size_t)((i * Hi + h) * Di)];
          float a = 0.0f;
          for (int d = 0; d < Di; ++d) a += qrow[d] * krow[d];
          if (!(a > 0.0f)) continue;  // relu'(a) = 0 for a <= 0 (and NaN)
          dw[(size_t)(i * Hi + h)] += grad * a;
          const float da = grad * w[(size_t)(i * Hi + h)];
          float* dqrow = &dq[(size_t)((i * Hi + h) * Di)];
          for (int d = 0; d < Di; ++d) {
            dqrow[d] += da * krow[d];
            dkrow[d] += da * qrow[d];
          }
        }
      }
    }
  });
  narrow(dq, p.dq, f.dtype);
  narrow(dk, p.dk, f.dtype);
  narrow(dw, p.dw, f.dtype);
}

}  // namespace lk::cpu
