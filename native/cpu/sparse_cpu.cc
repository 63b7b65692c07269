#include "sparse_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "../../cuda/common/half_convert.h"
#include "../thread_pool.h"
#include "simd.h"

namespace lk::cpu {
namespace {

// Float32 rows of a row-major [rows, width] input: float32 rows are read in place (no copy of
// K / V, which can be hundreds of MB); float16 / bfloat16 rows are converted into `scratch`.
struct RowSource {
  const void* base;
  DType dtype;
  int64_t width;
  const float* row(int64_t r, float* scratch) const {
    if (dtype == kFloat32) return static_cast<const float*>(base) + r * width;
    const uint16_t* bits = static_cast<const uint16_t*>(base) + r * width;
    for (int64_t i = 0; i < width; ++i) scratch[i] = dtype == kFloat16 ? half_to_float(bits[i]) : bfloat16_to_float(bits[i]);
    return scratch;
  }
};

int batch_of(const int32_t* offsets, int batch, int64_t row) {
  // first b with offsets[b + 1] > row (offsets nondecreasing)
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid + 1] > row) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// 8-lane dot product with a scalar tail; inlined into each ISA clone below.
LK_INLINE float dot(const float* a, const float* b, int n) {
  v8f acc0 = splat(0.0f), acc1 = splat(0.0f);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 += load8(a + i) * load8(b + i);
    acc1 += load8(a + i + 8) * load8(b + i + 8);
  }
  for (; i + 8 <= n; i += 8) acc0 += load8(a + i) * load8(b + i);
  float s = hsum(acc0 + acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

#define LK_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// Scores of the queries [q0, q1) of one batch entry against its keys [k0, k0 + len):
// out[(i - q0) * ld + j] = sum_h w[i][h] * relu(q[i][h] . k[j]). The dot products are one GEMM per
// chunk of 96 keys, [96, Di] x [Di, queries x heads], on the register-blocked micro-kernel: the
// key rows are read in place (no transpose), the few query rows are packed once, transposed.
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
        for (int h = 0; h < H; ++h) s += wf[i * H + h] * (dj[h] > 0.0f ? dj[h] : 0.0f);
        o[j] = s;
      }
    }
  }
}

__attribute__((target("arch=x86-64-v4"))) void score_entry_avx512(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len,
                                                                float* out, int64_t ld, std::vector<float>& s) {
  score_entry_impl<GemmAvx512>(p, q0, q1, k0, len, out, ld, s);
}
__attribute__((target("arch=x86-64-v3"))) void score_entry_avx2(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len,
                                                              float* out, int64_t ld, std::vector<float>& s) {
  score_entry_impl<GemmAvx2>(p, q0, q1, k0, len, out, ld, s);
}
void score_entry_baseline(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld, std::vector<float>& s) {
  score_entry_impl<GemmBaseline>(p, q0, q1, k0, len, out, ld, s);
}

using ScoreEntryFn = void (*)(const IndexerParams&, int64_t, int64_t, int64_t, int, float*, int64_t, std::vector<float>&);

ScoreEntryFn select_score_entry() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return score_entry_avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return score_entry_avx2;
  return score_entry_baseline;
}

void score_entry(const IndexerParams& p, int64_t q0, int64_t q1, int64_t k0, int len, float* out, int64_t ld, std::vector<float>& s) {
  static const ScoreEntryFn fn = select_score_entry();
  fn(p, q0, q1, k0, len, out, ld, s);
}

// Top-k of one row by radix selection (4 passes of 8 bits over the order-preserving keys), then
// an exact sort of the k chosen by (value desc, index asc). Scratch: keys of the row.
void select_row(const float* row, int len, int k, int32_t* indices, float* values, std::vector<uint32_t>& keys,
                std::vector<std::pair<uint32_t, int>>& chosen, std::vector<uint32_t>& pool_scratch) {
  keys.resize((size_t)len);
  int candidates = 0;
  for (int j = 0; j < len; ++j) {
    keys[j] = topk_key(row[j]);
    candidates += keys[j] != 0;
  }
  chosen.clear();
  const int take = std::min(k, candidates);
  uint32_t prefix = 0;
  int remaining = take;  // how many we still need among keys matching the prefix
  if (take > 0) {
    // Fix the threshold's bits 8 at a time. Four interleaved histograms keep the increments
    // independent (keys of similar magnitude share their top byte), and after each pass only the
    // keys matching the prefix so far stay in `pool`, so later passes touch few keys.
    std::vector<uint32_t>& pool = pool_scratch;
    pool.clear();
    pool.resize((size_t)len);
    size_t live = 0;
    for (int j = 0; j < len; ++j) {
      pool[live] = keys[j];
      live += keys[j] != 0;
    }
    pool.resize(live);
    for (int shift = 24; shift >= 0; shift -= 8) {
      int hist[4][256] = {};
      const size_t n = pool.size();
      size_t j = 0;
      for (; j + 4 <= n; j += 4) {
        ++hist[0][(pool[j] >> shift) & 0xff];
        ++hist[1][(pool[j + 1] >> shift) & 0xff];
        ++hist[2][(pool[j + 2] >> shift) & 0xff];
        ++hist[3][(pool[j + 3] >> shift) & 0xff];
      }
      for (; j < n; ++j) ++hist[0][(pool[j] >> shift) & 0xff];
      int digit = 255;
      for (; digit > 0; --digit) {
        const int count = hist[0][digit] + hist[1][digit] + hist[2][digit] + hist[3][digit];
        if (count >= remaining) break;
        remaining -= count;
      }
      prefix |= (uint32_t)digit << shift;
      size_t kept = 0;
      for (uint32_t key : pool) {  // branch-free compaction: matches are unpredictable
        pool[kept] = key;
        kept += ((key >> shift) & 0xff) == (uint32_t)digit;
      }
      pool.resize(kept);
    }
    const uint32_t threshold = prefix;  // exactly `remaining` ties at the threshold are taken
    for (int j = 0; j < len; ++j)
      if (keys[j] > threshold) chosen.emplace_back(keys[j], j);
    for (int j = 0; j < len && remaining > 0; ++j)
      if (keys[j] == threshold) { chosen.emplace_back(keys[j], j); --remaining; }
    std::sort(chosen.begin(), chosen.end(), [](const std::pair<uint32_t, int>& a, const std::pair<uint32_t, int>& b) {
      return topk_before(a.first, a.second, b.first, b.second);
    });
  }
  for (int i = 0; i < k; ++i) {
    if (i < (int)chosen.size()) {
      indices[i] = chosen[i].second;
      values[i] = row[chosen[i].second];
    } else {
      indices[i] = -1;
      values[i] = -INFINITY;
    }
  }
}

// Softmax attention of one query (all heads) over its selected keys; q: [heads, D] float32.
// Keys outermost: a key's rows for all heads are contiguous, so the gather reads them in one
// sweep instead of once per head (the selected keys are scattered over a large K / V).
LK_ISA_CLONES void attend_row(const SparseParams& p, const float* q, int64_t key_start, const int32_t* idx, float* out,
                              float* lse, std::vector<float>& scratch) {
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, K = p.top_k, group = H / Hkv;
  const int Kp = (K + 7) / 8 * 8;  // score rows padded for 8-wide exp
  const RowSource ks{p.k, p.dtype, D}, vs{p.v, p.dtype, Dv};
  scratch.resize((size_t)H * Kp + D + Dv + 2 * (size_t)H);
  float* scores = scratch.data();  // [H][Kp], -inf where no key
  float* kbuf = scores + (size_t)H * Kp;
  float* vbuf = kbuf + D;
  float* row_max = vbuf + Dv;
  float* row_sum = row_max + H;
  std::fill(scores, scores + (size_t)H * Kp, -INFINITY);
  for (int h = 0; h < H; ++h) { row_max[h] = -INFINITY; row_sum[h] = 0.0f; }
  for (int i = 0; i < K; ++i) {
    if (idx[i] < 0) continue;
    const int64_t base = (key_start + idx[i]) * Hkv;
    for (int g = 0; g < Hkv; ++g) {
      const float* kr = ks.row(base + g, kbuf);
      for (int h = g * group; h < (g + 1) * group; ++h) {
        const float x = dot(q + (int64_t)h * D, kr, D) * p.scale;
        scores[(size_t)h * Kp + i] = x;
        row_max[h] = std::max(row_max[h], x);
      }
    }
  }
  for (int h = 0; h < H; ++h) {
    float* sh = scores + (size_t)h * Kp;
    if (row_max[h] == -INFINITY) { std::fill(sh, sh + Kp, 0.0f); continue; }
    v8f sum = splat(0.0f);
    for (int i = 0; i < Kp; i += 8) {
      const v8f e = exp8(load8(sh + i) - splat(row_max[h]));  // -inf (no key) gives exactly 0
      store8(sh + i, e);
      sum += e;
    }
    row_sum[h] = hsum(sum);
  }
  // Weighted sum of values, one head at a time with its 64-column output block in registers.
  constexpr int kPrefetch = 8;  // keys fetched ahead: the selected rows are scattered
  for (int h = 0; h < H; ++h) {
    const int g = h / group;
    const float* ph = scores + (size_t)h * Kp;
    float* o = out + (int64_t)h * Dv;
    const float inv = row_sum[h] > 0.0f ? 1.0f / row_sum[h] : 0.0f;
    for (int c0 = 0; c0 < Dv; c0 += 64) {
      const int cw = std::min(64, Dv - c0);
      if (cw == 64) {
        v8f acc[8];
        for (int u = 0; u < 8; ++u) acc[u] = splat(0.0f);
        for (int i = 0; i < K; ++i) {
          if (i + kPrefetch < K && idx[i + kPrefetch] >= 0 && p.dtype == kFloat32) {
            const char* ahead = static_cast<const char*>(p.v) + (((key_start + idx[i + kPrefetch]) * Hkv + g) * Dv + c0) * 4;
            for (int line = 0; line < 256; line += 64) __builtin_prefetch(ahead + line);
          }
          if (idx[i] < 0) continue;
          const float* vr = vs.row((key_start + idx[i]) * Hkv + g, vbuf) + c0;
          const v8f pr = splat(ph[i]);
          for (int u = 0; u < 8; ++u) acc[u] += pr * load8(vr + 8 * u);
        }
        for (int u = 0; u < 8; ++u) store8(o + c0 + 8 * u, acc[u] * splat(inv));
      } else {
        std::fill(o + c0, o + c0 + cw, 0.0f);
        for (int i = 0; i < K; ++i) {
          if (idx[i] < 0) continue;
          const float* vr = vs.row((key_start + idx[i]) * Hkv + g, vbuf) + c0;
          for (int c = 0; c < cw; ++c) o[c0 + c] += ph[i] * vr[c];
        }
        for (int c = 0; c < cw; ++c) o[c0 + c] *= inv;
      }
    }
    if (lse) lse[h] = row_sum[h] > 0.0f ? row_max[h] + std::log(row_sum[h]) : -INFINITY;
  }
}

void store_output(DType dtype, const float* src, void* dst, int64_t offset, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == kFloat32) static_cast<float*>(dst)[offset + i] = src[i];
    else if (dtype == kFloat16) static_cast<uint16_t*>(dst)[offset + i] = float_to_half(src[i]);
    else static_cast<uint16_t*>(dst)[offset + i] = float_to_bfloat16(src[i]);
  }
}

}  // namespace

void indexer_scores(const IndexerParams& p) {
  const int workers = ThreadPool::shared().size();
  std::vector<std::vector<float>> scratch((size_t)workers);
  ThreadPool::shared().parallel_for(p.batch, [&](int64_t b, int worker) {
    const int64_t q0 = p.q_offsets[b], q1 = p.q_offsets[b + 1];
    const int len = p.k_offsets[b + 1] - p.k_offsets[b];
    float* out = p.scores + q0 * p.max_len;
    score_entry(p, q0, q1, p.k_offsets[b], len, out, p.max_len, scratch[worker]);
    for (int64_t i = 0; i < q1 - q0; ++i) std::fill(out + i * p.max_len + len, out + (i + 1) * p.max_len, -INFINITY);
  });
}

void top_k(const TopKParams& p) {
  const int workers = ThreadPool::shared().size();
  std::vector<std::vector<uint32_t>> keys((size_t)workers);
  std::vector<std::vector<std::pair<uint32_t, int>>> chosen((size_t)workers);
  std::vector<std::vector<uint32_t>> pools((size_t)workers);
  ThreadPool::shared().parallel_for(p.rows, [&](int64_t r, int worker) {
    const int len = p.lengths ? std::min(p.cols, std::max(0, p.lengths[r])) : p.cols;
    select_row(p.scores + r * p.cols, len, p.k, p.indices + r * p.k, p.values + r * p.k, keys[worker], chosen[worker], pools[worker]);
  });
}

namespace {

// One query of the attention: q row as float, attention, output stored in p's dtype.
struct AttendScratch {
  std::vector<float> q, out, work;
};

void attend_query(const SparseParams& p, int64_t i, int64_t key_start, const int32_t* idx, AttendScratch& s) {
  const RowSource qs{p.q, p.dtype, (int64_t)p.heads * p.head_dim};
  s.q.resize((size_t)p.heads * p.head_dim);
  s.out.resize((size_t)p.heads * p.value_dim);
  const float* q = qs.row(i, s.q.data());
  attend_row(p, q, key_start, idx, s.out.data(), p.lse ? p.lse + i * p.heads : nullptr, s.work);
  store_output(p.dtype, s.out.data(), p.out, i * p.heads * p.value_dim, (int64_t)p.heads * p.value_dim);
}

}  // namespace

void sparse_attention(const SparseParams& p) {
  std::vector<AttendScratch> scratch((size_t)ThreadPool::shared().size());
  ThreadPool::shared().parallel_for(p.nq, [&](int64_t i, int worker) {
    const int b = batch_of(p.q_offsets, p.batch, i);
    attend_query(p, i, p.k_offsets[b], p.indices + i * p.top_k, scratch[worker]);
  });
}

void indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp) {
  struct Scratch {
    std::vector<float> rows, score_work;
    std::vector<uint32_t> keys, pool;
    std::vector<std::pair<uint32_t, int>> chosen;
    AttendScratch attend;
  };
  std::vector<Scratch> scratch((size_t)ThreadPool::shared().size());
  // One batch entry per task: its queries' score rows live only in this worker's buffer.
  ThreadPool::shared().parallel_for(ip.batch, [&](int64_t b, int worker) {
    Scratch& s = scratch[worker];
    const int64_t q0 = ip.q_offsets[b], q1 = ip.q_offsets[b + 1];
    const int len = ip.k_offsets[b + 1] - ip.k_offsets[b];
    s.rows.resize((size_t)std::max<int64_t>(1, (q1 - q0) * len));
    score_entry(ip, q0, q1, ip.k_offsets[b], len, s.rows.data(), len, s.score_work);
    for (int64_t i = q0; i < q1; ++i) {
      select_row(s.rows.data() + (i - q0) * len, len, tp.k, tp.indices + i * tp.k, tp.values + i * tp.k, s.keys, s.chosen, s.pool);
      attend_query(sp, i, sp.k_offsets[b], tp.indices + i * tp.k, s.attend);
    }
  });
}

}  // namespace lk::cpu
