#include "sparse_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../../cuda/common/ieee.h"
#include "../thread_pool.h"
#include "attention_cpu.h"
#include "convert.h"
#include "isa.h"
#include "simd.h"

namespace lk::cpu {
namespace {

// Float32 rows of a row-major [rows, width] input: float32 rows are read in place (no copy of
// K / V, which can be hundreds of MB); float16 / bfloat16 rows are widened into `scratch` (F16C on
// AVX2 and later, convert.h).
struct RowSource {
  const void* base;
  DType dtype;
  int64_t width;
  const float* row(int64_t r, float* scratch) const {
    if (dtype == kFloat32) return static_cast<const float*>(base) + r * width;
    widen_row(static_cast<const uint16_t*>(base) + r * width, dtype, scratch, width);
    return scratch;
  }
};

// Scores of the queries [q0, q1) of one batch entry against its keys [k0, k0 + len):
// out[(i - q0) * ld + j] = sum_h w[i][h] * relu(q[i][h] . k[j]), relu keeping NaN as the reference
// (cuda/common/ieee.h). The dot products are one GEMM per chunk of 96 keys, [96, Di] x [Di, queries x
// heads], on the register-blocked micro-kernel: the key rows are read in place (no transpose), the
// few query rows are packed once, transposed.
template <typename Shape>
LK_INLINE void score_entry_impl(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld,
                                std::vector<float>& scratch) {
  constexpr int kChunk = 96;  // a multiple of every micro-kernel's rows (4 and 6)
  static_assert(kChunk % Shape::kRows == 0, "chunk of keys must split into micro-kernel rows");
  const int H = p.heads, Di = p.dim;
  const int64_t nq = q1 - q0;
  const int cols = (int)(nq * H), cols_pad = (cols + Shape::kCols - 1) / Shape::kCols * Shape::kCols;
  scratch.resize((size_t)Di * cols_pad + nq * H + (size_t)kChunk * Di + (size_t)kChunk * cols_pad + (size_t)H * Di);
  float* qt = scratch.data();                       // [Di][cols_pad]
  float* wf = qt + (size_t)Di * cols_pad;           // [nq * H]
  float* kbuf = wf + nq * H;                        // [kChunk][Di], for converted or tail chunks
  float* dots = kbuf + (size_t)kChunk * Di;         // [kChunk][cols_pad]
  float* qrow = dots + (size_t)kChunk * cols_pad;   // [H * Di]
  const RowSource qs{p.q, p.dtype, (int64_t)H * Di}, ws{p.w, p.dtype, H}, ks{p.k, p.dtype, Di};
  std::fill(qt, qt + (size_t)Di * cols_pad, 0.0f);
  for (int64_t i = 0; i < nq; ++i) {
    const float* qr = qs.row(q0 + i, qrow);
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < Di; ++d) qt[(size_t)d * cols_pad + i * H + h] = qr[h * Di + d];
    std::memcpy(wf + i * H, ws.row(q0 + i, wf + i * H), sizeof(float) * H);
  }
  for (int j0 = 0; j0 < len; j0 += kChunk) {
    const int n = std::min(kChunk, len - j0);
    const float* a;
    if (p.dtype == kFloat32 && n == kChunk) {
      a = static_cast<const float*>(p.k) + (k0 + j0) * Di;  // whole chunk in place
    } else {
      for (int j = 0; j < kChunk; ++j) {
        float* dst = kbuf + (size_t)j * Di;
        if (j < n) std::memcpy(dst, ks.row(k0 + j0 + j, dst), sizeof(float) * Di);
        else std::fill(dst, dst + Di, 0.0f);
      }
      a = kbuf;
    }
    gemm_blocks<Shape>(kChunk, cols_pad, Di, a, Di, qt, cols_pad, dots, cols_pad, false);
    for (int64_t i = 0; i < nq; ++i) {
      float* o = out + i * ld + j0;
      for (int j = 0; j < n; ++j) {
        const float* dj = dots + (size_t)j * cols_pad + i * H;
        float s = 0.0f;
        for (int h = 0; h < H; ++h) s += wf[i * H + h] * relu_keep_nan(dj[h]);
        o[j] = s;
      }
    }
  }
}

// GEMs-shaped indexers have few columns (4 queries x 2 heads = 8): padding them to a wide block's
// 32 columns would waste 3/4 of the multiply-adds, so narrow problems take a tall, one-vector block.
#if LK_ISA_X86
LK_TARGET_AVX512 void score_entry_avx512(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld,
                                         std::vector<float>& s) {
  const int64_t cols = (q1 - q0) * p.heads;
  if (cols <= 8) score_entry_impl<GemmNarrow8>(p, q0, q1, k0, len, out, ld, s);
  else if (cols <= 16) score_entry_impl<GemmNarrow16>(p, q0, q1, k0, len, out, ld, s);
  else score_entry_impl<GemmAvx512>(p, q0, q1, k0, len, out, ld, s);
}
LK_TARGET_AVX2 void score_entry_avx2(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld,
                                     std::vector<float>& s) {
  if ((q1 - q0) * p.heads <= 8) score_entry_impl<GemmNarrow8>(p, q0, q1, k0, len, out, ld, s);
  else score_entry_impl<GemmAvx2>(p, q0, q1, k0, len, out, ld, s);
}
#endif
#if LK_ISA_NEON
void score_entry_neon(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld, std::vector<float>& s) {
  if ((q1 - q0) * p.heads <= 8) score_entry_impl<GemmNarrow8>(p, q0, q1, k0, len, out, ld, s);
  else score_entry_impl<GemmNeon>(p, q0, q1, k0, len, out, ld, s);
}
#endif
void score_entry_portable(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld, std::vector<float>& s) {
  score_entry_impl<GemmBaseline>(p, q0, q1, k0, len, out, ld, s);
}

using ScoreEntryFn = void (*)(const IndexerParams&, int64_t, int64_t, int64_t, int, float*, int64_t, std::vector<float>&);
const IsaTable<ScoreEntryFn> kScoreEntry = {{score_entry_portable, LK_IF_NEON(score_entry_neon), LK_IF_X86(score_entry_avx2),
                                             LK_IF_X86(score_entry_avx512), nullptr}};

// Per-worker buffers of select_row, reused across rows.
struct SelectScratch {
  std::vector<uint64_t> chosen;  // (key << 32) | ~index: one descending sort gives the output order
  std::vector<uint64_t> pool;   // candidates on the threshold digit, index order
  std::vector<uint64_t> spare;  // sort_chosen's second buffer
};

LK_INLINE uint64_t pack_candidate(uint32_t key, int index) { return (uint64_t)key << 32 | (uint32_t)~(uint32_t)index; }

// Sorts n packed candidates of a row of len keys descending (value desc, index asc). Many chosen (k
// close to the row length, where a comparison sort of ~1,000 costs more than scoring the row) take
// an LSD radix sort of ~candidate = (~key << 32 | index) ascending, 8-bit digits, all histograms in
// one read, digits that every candidate shares skipped. Candidates already in index order need only
// the key's digits (each pass is stable); others sort the index's digits first. Same order as the
// comparison sort (indices differ, so the order is total).
void sort_chosen(uint64_t* c, int n, int len, bool index_order, std::vector<uint64_t>& spare) {
  constexpr int kRadixFrom = 128;
  if (n < kRadixFrom) {
    std::sort(c, c + n, [](uint64_t a, uint64_t b) { return a > b; });
    return;
  }
  int shifts[8], passes = 0;  // bit offset of each 8-bit digit, least significant first
  if (!index_order)
    for (int shift = 0; shift < 32 && (int64_t{1} << shift) < len; shift += 8) shifts[passes++] = shift;
  for (int shift = 32; shift < 64; shift += 8) shifts[passes++] = shift;
  int hist[8][256];
  std::fill(&hist[0][0], &hist[0][0] + passes * 256, 0);
  spare.resize((size_t)n);
  for (int i = 0; i < n; ++i) {
    const uint64_t u = c[i] = ~c[i];
    for (int p = 0; p < passes; ++p) ++hist[p][(u >> shifts[p]) & 0xff];
  }
  uint64_t* from = c;
  uint64_t* to = spare.data();
  for (int p = 0; p < passes; ++p) {
    int* h = hist[p];
    const int shift = shifts[p];
    if (h[(from[0] >> shift) & 0xff] == n) continue;  // one digit for all: already in order
    int start = 0;
    for (int d = 0; d < 256; ++d) { const int count = h[d]; h[d] = start; start += count; }
    for (int i = 0; i < n; ++i) to[h[(from[i] >> shift) & 0xff]++] = from[i];
    std::swap(from, to);
  }
  for (int i = 0; i < n; ++i) c[i] = ~from[i];
}

// Top-k of one row by radix selection over the order-preserving keys (NaN / -inf -> 0, never
// chosen): the first pass histograms the top 11 bits while computing the keys; keys above the
// threshold digit are final, keys on it stay in a pool (in index order) that two more passes over
// 11 and 10 bits narrow to the exact threshold; ties there are taken lowest index first. Only the
// k chosen are then sorted, (value desc, index asc) = packed candidates descending.
void select_row(const float* row, int len, int k, int32_t* indices, float* values, SelectScratch& s) {
  s.pool.resize((size_t)len + 1);
  s.chosen.resize((size_t)k + 1);
  // Four interleaved histograms: scores of similar magnitude share their top bits, and one
  // histogram would chain every increment through the same counter.
  int quad[4][2048] = {};
  int excluded = 0, j = 0;
  for (; j + 4 <= len; j += 4)
    for (int u = 0; u < 4; ++u) {
      const uint32_t key = topk_key(row[j + u]);
      ++quad[u][key >> 21];
      excluded += key == 0;
    }
  for (; j < len; ++j) {
    const uint32_t key = topk_key(row[j]);
    ++quad[0][key >> 21];
    excluded += key == 0;
  }
  int hist[2048];
  for (int d = 0; d < 2048; ++d) hist[d] = quad[0][d] + quad[1][d] + quad[2][d] + quad[3][d];
  hist[0] -= excluded;
  int remaining = std::min(k, len - excluded);  // still to take among keys matching the prefix
  int chosen = 0;
  if (remaining > 0 && remaining == len - excluded) {  // k covers every candidate: no threshold to find
    for (j = 0; j < len; ++j) {
      const uint32_t key = topk_key(row[j]);
      s.chosen[chosen] = pack_candidate(key, j);
      chosen += key != 0;
    }
    sort_chosen(s.chosen.data(), chosen, len, true, s.spare);
  } else if (remaining > 0) {
    int digit = 2047;
    while (hist[digit] < remaining) remaining -= hist[digit--];
    // Branch-free partition: whether a key lands above or on the threshold is unpredictable.
    size_t pooled = 0;
    for (j = 0; j < len; ++j) {
      const uint32_t key = topk_key(row[j]);
      const uint32_t top = key >> 21;
      const uint64_t c = pack_candidate(key, j);
      s.chosen[chosen] = c;
      chosen += top > (uint32_t)digit;
      s.pool[pooled] = c;
      pooled += (top == (uint32_t)digit) & (key != 0);
    }
    for (const int shift : {10, 0}) {
      const uint32_t mask = shift ? 0x7ffu : 0x3ffu;
      std::fill(hist, hist + mask + 1, 0);
      for (size_t i = 0; i < pooled; ++i) ++hist[(s.pool[i] >> (32 + shift)) & mask];
      int d = (int)mask;
      while (hist[d] < remaining) remaining -= hist[d--];
      size_t kept = 0;
      for (size_t i = 0; i < pooled; ++i) {
        const uint64_t c = s.pool[i];
        const uint32_t part = (uint32_t)(c >> (32 + shift)) & mask;
        s.chosen[chosen] = c;
        chosen += part > (uint32_t)d;
        s.pool[kept] = c;
        kept += part == (uint32_t)d;
      }
      pooled = kept;
    }
    // The pool now holds only keys equal to the threshold, in index order.
    for (int i = 0; i < remaining; ++i) s.chosen[chosen++] = s.pool[i];
    sort_chosen(s.chosen.data(), chosen, len, false, s.spare);
  }
  for (int i = 0; i < k; ++i) {
    if (i < chosen) {
      indices[i] = (int32_t)~(uint32_t)s.chosen[i];
      values[i] = row[indices[i]];
    } else {
      indices[i] = -1;
      values[i] = -INFINITY;
    }
  }
}

// Prefetch the whole row [bytes) at `row`: the selected K / V rows are scattered, so the hardware
// prefetcher cannot see them coming; asking for every line a few keys ahead keeps enough misses in
// flight to gather at close to streaming bandwidth.
LK_INLINE void prefetch_row(const void* row, size_t bytes) {
  const char* c = static_cast<const char*>(row);
  for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(c + line);
}

void store_output(DType dtype, const float* src, void* dst, int64_t offset, int64_t count) {
  if (dtype == kFloat32) std::memcpy(static_cast<float*>(dst) + offset, src, sizeof(float) * count);
  else narrow_row(src, dtype, static_cast<uint16_t*>(dst) + offset, count);
}

// Queries of one batch entry attended together: a key selected by several of them is gathered once.
constexpr int kMaxGroup = 8;

// Per-worker buffers of attend_group, reused across groups.
struct GroupScratch {
  // Keys of the entry seen in the current group: stamp[j] == current marks key j, head[j] is its
  // first entry. Stamps (not a cleared array) make starting a group O(1) on 100,000-key rows.
  std::vector<uint32_t> stamp;
  std::vector<int32_t> head;
  uint32_t current = 0;
  std::vector<int32_t> keys;          // distinct selected keys, first-seen order
  std::vector<int32_t> next, query;   // per entry (a selected slot): next entry of its key, its query
  std::vector<int32_t> block_entry;   // entries of one value block that belong to one query
  std::vector<const float*> block_row;
  std::vector<float> q, kbuf, vbuf, scores, acc, out, row_max, row_sum;
};

// Softmax attention of the queries [q0, q0 + nq) (nq <= kMaxGroup) of one batch entry, whose keys
// are [key_start, key_start + len), each over its selected keys idx[g * top_k ...] (-1 = none).
// Work is arranged by distinct key: each selected K and V row (all heads, contiguous) is gathered
// once for every query that chose it, requested ahead of use (K rows `kAhead` keys ahead, V rows one
// block ahead; the prefetch distance mattered little on a 2-core EPYC). Scores live per entry.
LK_INLINE void attend_group_impl(const SparseParams& p, int64_t q0, int nq, int64_t key_start, int len, const int32_t* idx,
                                 GroupScratch& s) {
  constexpr int kAhead = 4;
  constexpr int kValueBlock = 16;
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, K = p.top_k, group = H / Hkv;
  const int64_t k_width = (int64_t)Hkv * D, v_width = (int64_t)Hkv * Dv;  // one key's rows, all heads
  const RowSource qs{p.q, p.dtype, (int64_t)H * D}, ks{p.k, p.dtype, k_width}, vs{p.v, p.dtype, v_width};
  const size_t elem = p.dtype == kFloat32 ? 4 : 2;
  const char* k_base = static_cast<const char*>(p.k) + key_start * k_width * elem;
  const char* v_base = static_cast<const char*>(p.v) + key_start * v_width * elem;

  // Entries grouped by key (chains through `next`).
  if (s.stamp.size() < (size_t)len) { s.stamp.resize((size_t)len, 0u); s.head.resize((size_t)len); }
  if (++s.current == 0) { std::fill(s.stamp.begin(), s.stamp.end(), 0u); s.current = 1; }
  s.keys.clear();
  s.next.resize((size_t)nq * K);
  s.query.resize((size_t)nq * K);
  int E = 0;
  int first_entry[kMaxGroup + 1];  // query g's entries are [first_entry[g], first_entry[g + 1])
  for (int g = 0; g < nq; ++g) {
    first_entry[g] = E;
    for (int i = 0; i < K; ++i) {
      const int j = idx[(int64_t)g * K + i];
      if (j < 0) continue;
      if (s.stamp[j] != s.current) { s.stamp[j] = s.current; s.head[j] = -1; s.keys.push_back(j); }
      s.query[E] = g;
      s.next[E] = s.head[j];
      s.head[j] = E++;
    }
  }
  first_entry[nq] = E;
  const int nk = (int)s.keys.size();

  s.q.resize((size_t)nq * H * D);
  s.kbuf.resize((size_t)k_width);
  s.vbuf.resize((size_t)kValueBlock * v_width);
  s.scores.resize((size_t)H * E);
  s.acc.assign((size_t)nq * H * Dv, 0.0f);
  s.out.resize((size_t)H * Dv);
  s.row_max.assign((size_t)nq * H, -INFINITY);
  s.row_sum.assign((size_t)nq * H, 0.0f);
  const float* qrow[kMaxGroup];
  for (int g = 0; g < nq; ++g) qrow[g] = qs.row(q0 + g, s.q.data() + (size_t)g * H * D);
  float* scores = s.scores.data();  // [H][E]: every entry's score for every head

  // Scores: every entry's dots with its key's K row, eight heads reduced together.
  const int d8 = D / 8 * 8;
  for (int t = 0; t < std::min(nk, kAhead); ++t) prefetch_row(k_base + s.keys[t] * k_width * elem, k_width * elem);
  for (int t = 0; t < nk; ++t) {
    if (t + kAhead < nk) prefetch_row(k_base + s.keys[t + kAhead] * k_width * elem, k_width * elem);
    const int j = s.keys[t];
    const float* kr = ks.row(key_start + j, s.kbuf.data());
    for (int e = s.head[j]; e >= 0; e = s.next[e]) {
      const float* q = qrow[s.query[e]];
      for (int h0 = 0; h0 < H; h0 += 8) {
        const int nh = std::min(8, H - h0);
        const float* qh[8];
        const float* kh[8];
        for (int u = 0; u < 8; ++u) {  // lanes past the last head repeat it; their results are dropped
          const int h = h0 + std::min(u, nh - 1);
          qh[u] = q + (int64_t)h * D;
          kh[u] = kr + (int64_t)(h / group) * D;
        }
        v8f part[8];
        for (int u = 0; u < 8; ++u) part[u] = splat(0.0f);
        for (int d = 0; d < d8; d += 8)  // eight independent chains: the loads of a missing row overlap
          for (int u = 0; u < 8; ++u) part[u] += load8(qh[u] + d) * load8(kh[u] + d);
        v8f dots = hsum8x8(part);
        for (int u = 0; u < nh && d8 < D; ++u)
          for (int d = d8; d < D; ++d) dots[u] += qh[u][d] * kh[u][d];
        for (int u = 0; u < nh; ++u) scores[(size_t)(h0 + u) * E + e] = dots[u] * p.scale;
      }
    }
  }

  // Softmax per (query, head) over its entries (contiguous per query): max, exp(score - max), sum.
  // IEEE over the selected keys, as the reference: the max keeps NaN, and a +inf score, or scores all
  // -inf, give exp(NaN) and a NaN row; a query with nothing selected keeps sum 0 (zeros, lse -inf).
  for (int h = 0; h < H; ++h) {
    float* sh = scores + (size_t)h * E;
    for (int g = 0; g < nq; ++g) {
      const int e0 = first_entry[g], e1 = first_entry[g + 1];
      if (e0 == e1) continue;
      float* m = &s.row_max[(size_t)g * H + h];
      v8f mx = splat(-INFINITY);
      int e = e0;
      for (; e + 8 <= e1; e += 8) mx = max_keep_nan8(mx, load8(sh + e));
      *m = hmax_keep_nan(mx);
      for (; e < e1; ++e) *m = max_keep_nan(*m, sh[e]);
      const v8f mv = splat(*m);
      v8f sum = splat(0.0f);
      for (e = e0; e + 8 <= e1; e += 8) {
        const v8f x = exp8(load8(sh + e) - mv);
        store8(sh + e, x);
        sum += x;
      }
      float total = hsum(sum);
      for (; e < e1; ++e) total += sh[e] = std::exp(sh[e] - *m);
      s.row_sum[(size_t)g * H + h] = total;
    }
  }

  // Weighted sum of values over blocks of distinct keys: a block's V rows (all heads) stay in L1
  // while each (query, head)'s 64-column slice of the output accumulates in registers; the next
  // block's rows are requested before this one is consumed.
  s.block_entry.resize((size_t)std::max(E, 1));
  s.block_row.resize((size_t)std::max(E, 1));
  auto prefetch_values = [&](int t0) {
    for (int t = t0; t < std::min(nk, t0 + kValueBlock); ++t) prefetch_row(v_base + s.keys[t] * v_width * elem, v_width * elem);
  };
  prefetch_values(0);
  for (int t0 = 0; t0 < nk; t0 += kValueBlock) {
    prefetch_values(t0 + kValueBlock);
    const int t1 = std::min(nk, t0 + kValueBlock);
    const float* rows[kValueBlock];
    for (int t = t0; t < t1; ++t) rows[t - t0] = vs.row(key_start + s.keys[t], s.vbuf.data() + (size_t)(t - t0) * v_width);
    for (int g = 0; g < nq; ++g) {
      int n = 0;
      for (int t = t0; t < t1; ++t)
        for (int e = s.head[s.keys[t]]; e >= 0; e = s.next[e])
          if (s.query[e] == g) { s.block_entry[n] = e; s.block_row[n++] = rows[t - t0]; }
      if (n == 0) continue;
      for (int h = 0; h < H; ++h) {
        const float* ph = scores + (size_t)h * E;
        const int64_t col = (int64_t)(h / group) * Dv;
        float* o = s.acc.data() + ((size_t)g * H + h) * Dv;
        int c0 = 0;
        for (; c0 + 64 <= Dv; c0 += 64) {
          v8f a[8];
          for (int u = 0; u < 8; ++u) a[u] = load8(o + c0 + 8 * u);
          for (int r = 0; r < n; ++r) {
            const v8f pv = splat(ph[s.block_entry[r]]);
            const float* vh = s.block_row[r] + col + c0;
            for (int u = 0; u < 8; ++u) a[u] += pv * load8(vh + 8 * u);
          }
          for (int u = 0; u < 8; ++u) store8(o + c0 + 8 * u, a[u]);
        }
        for (int r = 0; r < n; ++r)
          for (int c = c0; c < Dv; ++c) o[c] += ph[s.block_entry[r]] * s.block_row[r][col + c];
      }
    }
  }

  for (int g = 0; g < nq; ++g) {
    const int64_t i = q0 + g;
    for (int h = 0; h < H; ++h) {
      // sum is 0 exactly when nothing was selected (else >= 1, the max's own term, or NaN).
      const float sum = s.row_sum[(size_t)g * H + h], inv = sum == 0.0f ? 0.0f : 1.0f / sum;
      const float* a = s.acc.data() + ((size_t)g * H + h) * Dv;
      for (int c = 0; c < Dv; ++c) s.out[(size_t)h * Dv + c] = a[c] * inv;
      if (p.lse) p.lse[i * H + h] = sum == 0.0f ? -INFINITY : s.row_max[(size_t)g * H + h] + std::log(sum);
    }
    store_output(p.dtype, s.out.data(), p.out, i * H * Dv, (int64_t)H * Dv);
  }
}

#if LK_ISA_X86
LK_TARGET_AVX512 void attend_group_avx512(const SparseParams& p, int64_t q0, int nq, int64_t k0, int len, const int32_t* idx, GroupScratch& s) {
  attend_group_impl(p, q0, nq, k0, len, idx, s);
}
LK_TARGET_AVX2 void attend_group_avx2(const SparseParams& p, int64_t q0, int nq, int64_t k0, int len, const int32_t* idx, GroupScratch& s) {
  attend_group_impl(p, q0, nq, k0, len, idx, s);
}
#endif
void attend_group_portable(const SparseParams& p, int64_t q0, int nq, int64_t k0, int len, const int32_t* idx, GroupScratch& s) {
  attend_group_impl(p, q0, nq, k0, len, idx, s);
}

using AttendGroupFn = void (*)(const SparseParams&, int64_t, int, int64_t, int, const int32_t*, GroupScratch&);
const IsaTable<AttendGroupFn> kAttendGroup = {{attend_group_portable, nullptr, LK_IF_X86(attend_group_avx2), LK_IF_X86(attend_group_avx512), nullptr}};

// Runs of queries of one batch entry that the indexer scores together, so that per-worker buffers
// stay bounded whatever a user's query count: at most kIndexerColumns GEMM columns (queries x
// heads), and with `score_rows` (the fused op, which keeps the runs' score rows) at most
// kScoreRowFloats floats of rows. Runs are whole groups of kMaxGroup queries when they can be.
constexpr int64_t kIndexerColumns = 4096;
constexpr int64_t kScoreRowFloats = int64_t{1} << 20;  // 4 MiB per worker

struct QueryRun {
  int b;
  int64_t q0, q1;
};

std::vector<QueryRun> query_runs(const IndexerParams& p, bool score_rows) {
  std::vector<QueryRun> runs;
  for (int b = 0; b < p.batch; ++b) {
    const int64_t q0 = p.q_offsets[b], q1 = p.q_offsets[b + 1];
    const int64_t len = p.k_offsets[b + 1] - p.k_offsets[b];
    int64_t per = std::max<int64_t>(1, kIndexerColumns / p.heads);
    if (score_rows) per = std::min(per, std::max<int64_t>(1, kScoreRowFloats / std::max<int64_t>(1, len)));
    if (per >= kMaxGroup) per = per / kMaxGroup * kMaxGroup;
    for (int64_t i = q0; i < q1; i += per) runs.push_back({b, i, std::min(q1, i + per)});
  }
  return runs;
}

// Calls whose attention ran as dense `full` attention (test support: proves the dispatch).
std::atomic<int64_t> dense_dispatches{0};

// When every query attends to all of its user's keys, each exactly once, sparse attention is dense
// attention under the `full` rule (SPEC §3: every role pair { seg: 'any', causal: false }) over the
// same layouts: one masked_attention call, which skips nothing but runs the dense kernels' GEMMs
// instead of gathering keys one by one. Users without keys give zeros and lse -inf either way.
void attend_all_keys_densely(const SparseParams& p) {
  AttentionParams a{};
  a.q = p.q; a.k = p.k; a.v = p.v; a.out = p.out; a.lse = p.lse;
  a.dtype = p.dtype;
  a.batch = p.batch;
  a.tq = p.nq; a.tk = p.tk;
  a.heads = p.heads; a.kv_heads = p.kv_heads; a.head_dim = p.head_dim; a.value_dim = p.value_dim;
  a.q_layout = LayoutView{p.q_offsets, nullptr, nullptr};
  a.kv_layout = LayoutView{p.k_offsets, nullptr, nullptr};
  for (int rq = 0; rq < kNumRoles; ++rq)
    for (int rk = 0; rk < kNumRoles; ++rk) { a.rule.seg[rq][rk] = kSegAny; a.rule.causal[rq][rk] = 0; }
  a.scale = p.scale;
  a.normalize = kSoftmax;
  a.silu_inv_divisor = 1.0f;  // unused by softmax
  for (int b = 0; b < p.batch; ++b) {
    a.max_q_len = std::max(a.max_q_len, p.q_offsets[b + 1] - p.q_offsets[b]);
    a.max_k_len = std::max(a.max_k_len, p.k_offsets[b + 1] - p.k_offsets[b]);
  }
  masked_attention(a);
  dense_dispatches.fetch_add(1, std::memory_order_relaxed);
}

// Whether the dense dispatch may apply: k slots per query must hold all of every user's keys (users
// without queries aside). Every dtype: the dense kernels widen float16 / bfloat16 as they load them
// (1,000 keys x 64 users, top-k 1,024: dense 51 ms against sparse 96 ms for bfloat16, 271 ms for
// float16).
bool dense_dispatch_possible(const SparseParams& p) {
  for (int b = 0; b < p.batch; ++b)
    if (p.q_offsets[b + 1] > p.q_offsets[b] && p.k_offsets[b + 1] - p.k_offsets[b] > p.top_k) return false;
  return true;
}

}  // namespace

int64_t sparse_dense_dispatches() { return dense_dispatches.load(std::memory_order_relaxed); }

void indexer_scores(const IndexerParams& p) {
  const ScoreEntryFn score_entry = isa_pick(kScoreEntry);  // one path for the whole call
  const int workers = ThreadPool::shared().size();
  std::vector<std::vector<float>> scratch((size_t)workers);
  const std::vector<QueryRun> runs = query_runs(p, false);
  ThreadPool::shared().parallel_for((int64_t)runs.size(), [&](int64_t r, int worker) {
    const QueryRun& run = runs[(size_t)r];
    const int len = p.k_offsets[run.b + 1] - p.k_offsets[run.b];
    float* out = p.scores + run.q0 * p.max_len;
    score_entry(p, run.q0, run.q1, p.k_offsets[run.b], len, out, p.max_len, scratch[worker]);
    for (int64_t i = 0; i < run.q1 - run.q0; ++i) std::fill(out + i * p.max_len + len, out + (i + 1) * p.max_len, -INFINITY);
  });
}

void top_k(const TopKParams& p) {
  const int workers = ThreadPool::shared().size();
  std::vector<SelectScratch> scratch((size_t)workers);
  ThreadPool::shared().parallel_for(p.rows, [&](int64_t r, int worker) {
    const int len = p.lengths ? std::min(p.cols, std::max(0, p.lengths[r])) : p.cols;
    select_row(p.scores + r * p.cols, len, p.k, p.indices + r * p.k, p.values + r * p.k, scratch[worker]);
  });
}

// Whether the caller's indices give every query each of its user's keys exactly once (any order,
// -1 anywhere): then the sparse attention is the dense one. A duplicate counts twice in sparse
// attention, so it never qualifies.
bool indices_cover_all_keys_once(const SparseParams& p) {
  if (!dense_dispatch_possible(p)) return false;
  std::vector<int64_t> seen;  // seen[j] == row + 1: key j already taken by that row
  for (int b = 0; b < p.batch; ++b) {
    const int len = p.k_offsets[b + 1] - p.k_offsets[b];
    seen.assign((size_t)len, 0);
    for (int64_t i = p.q_offsets[b]; i < p.q_offsets[b + 1]; ++i) {
      const int32_t* row = p.indices + i * p.top_k;
      int taken = 0;
      for (int s = 0; s < p.top_k; ++s) {
        const int j = row[s];
        if (j < 0) continue;
        if (seen[(size_t)j] == i + 1) return false;
        seen[(size_t)j] = i + 1;
        ++taken;
      }
      if (taken != len) return false;
    }
  }
  return true;
}

void sparse_attention(const SparseParams& p) {
  if (indices_cover_all_keys_once(p)) {
    attend_all_keys_densely(p);
    return;
  }
  const AttendGroupFn attend_group = isa_pick(kAttendGroup);
  // Tasks: runs of up to kMaxGroup queries of one batch entry.
  struct Task { int b; int64_t q0; int nq; };
  std::vector<Task> tasks;
  for (int b = 0; b < p.batch; ++b)
    for (int64_t i = p.q_offsets[b]; i < p.q_offsets[b + 1]; i += kMaxGroup)
      tasks.push_back({b, i, (int)std::min<int64_t>(kMaxGroup, p.q_offsets[b + 1] - i)});
  std::vector<GroupScratch> scratch((size_t)ThreadPool::shared().size());
  ThreadPool::shared().parallel_for((int64_t)tasks.size(), [&](int64_t t, int worker) {
    const Task& task = tasks[t];
    const int len = p.k_offsets[task.b + 1] - p.k_offsets[task.b];
    attend_group(p, task.q0, task.nq, p.k_offsets[task.b], len, p.indices + task.q0 * p.top_k, scratch[worker]);
  });
}

void indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp) {
  const ScoreEntryFn score_entry = isa_pick(kScoreEntry);
  const AttendGroupFn attend_group = isa_pick(kAttendGroup);
  struct Scratch {
    std::vector<float> rows, score_work;
    SelectScratch select;
    GroupScratch attend;
  };
  std::vector<Scratch> scratch((size_t)ThreadPool::shared().size());
  // One run of a batch entry's queries per task: its score rows live only in this worker's buffer,
  // which query_runs bounds (never queries x keys of a whole user).
  const std::vector<QueryRun> runs = query_runs(ip, true);
  auto select_run = [&](const QueryRun& run, Scratch& s) {
    const int len = ip.k_offsets[run.b + 1] - ip.k_offsets[run.b];
    s.rows.resize((size_t)std::max<int64_t>(1, (run.q1 - run.q0) * len));
    score_entry(ip, run.q0, run.q1, ip.k_offsets[run.b], len, s.rows.data(), len, s.score_work);
    for (int64_t i = run.q0; i < run.q1; ++i)
      select_row(s.rows.data() + (i - run.q0) * len, len, tp.k, tp.indices + i * tp.k, tp.values + i * tp.k, s.select);
  };
  auto attend_run = [&](const QueryRun& run, Scratch& s) {
    const int len = sp.k_offsets[run.b + 1] - sp.k_offsets[run.b];
    for (int64_t i = run.q0; i < run.q1; i += kMaxGroup)
      attend_group(sp, i, (int)std::min<int64_t>(kMaxGroup, run.q1 - i), sp.k_offsets[run.b], len, tp.indices + i * tp.k, s.attend);
  };
  if (!dense_dispatch_possible(sp)) {  // select and attend while the run is hot
    ThreadPool::shared().parallel_for((int64_t)runs.size(), [&](int64_t r, int worker) {
      select_run(runs[(size_t)r], scratch[worker]);
      attend_run(runs[(size_t)r], scratch[worker]);
    });
    return;
  }
  // k may cover whole rows: select everywhere first, then attend densely when every query took all
  // of its user's keys (top-k picks distinct keys, so slot len - 1 is filled exactly when none was
  // NaN / -inf), else sparsely run by run.
  ThreadPool::shared().parallel_for((int64_t)runs.size(), [&](int64_t r, int worker) { select_run(runs[(size_t)r], scratch[worker]); });
  bool all_keys = true;
  for (int b = 0; b < sp.batch && all_keys; ++b) {
    const int len = sp.k_offsets[b + 1] - sp.k_offsets[b];
    for (int64_t i = sp.q_offsets[b]; i < sp.q_offsets[b + 1] && all_keys && len > 0; ++i)
      all_keys = tp.indices[i * tp.k + len - 1] >= 0;
  }
  if (all_keys) {
    attend_all_keys_densely(sp);
    return;
  }
  ThreadPool::shared().parallel_for((int64_t)runs.size(), [&](int64_t r, int worker) { attend_run(runs[(size_t)r], scratch[worker]); });
}

}  // namespace lk::cpu
