#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <vector>

#include "../../cuda/common/half_convert.h"
#include "../thread_pool.h"
#include "simd.h"

namespace lk::cpu {
namespace {

constexpr int kBlockM = 64;  // query rows per task
constexpr int kBlockN = 64;  // keys per tile
constexpr float kNegInf = -INFINITY;

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
  const uint16_t* bits = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < count; ++i)
    view.owned[i] = dtype == kFloat16 ? half_to_float(bits[i]) : bfloat16_to_float(bits[i]);
  view.data = view.owned.get();
  return view;
}

// Per-worker tiles, padded so the 4 x 16 micro-kernel never needs edge cases.
struct Scratch {
  int d_pad = 0, dv_pad = 0;
  FloatBuffer q, kt, s, v, o;
  float m[kBlockM], l[kBlockM];
  void init(int head_dim, int value_dim) {
    d_pad = head_dim;
    dv_pad = round_up(value_dim, 16);
    q = alloc_floats((size_t)kBlockM * head_dim);
    kt = alloc_floats((size_t)head_dim * kBlockN);
    s = alloc_floats((size_t)kBlockM * kBlockN);
    v = alloc_floats((size_t)kBlockN * dv_pad);
    o = alloc_floats((size_t)kBlockM * dv_pad);
  }
};

struct Job {
  const AttentionParams* p;
  const float* q;
  const float* k;
  const float* v;
  float* out;  // float32 [tq, heads, value_dim]
  const TileSummary* q_tiles;  // [batch][q_tiles_per_seq]
  const TileSummary* k_tiles;  // [batch][k_tiles_per_seq]
  int q_tiles_per_seq, k_tiles_per_seq;
};

// One query tile of one head of one sequence against its visited key tiles.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void attend_tile(const Job& job, int b, int q_tile, int h, Scratch& sc) {
  const AttentionParams& p = *job.p;
  const int D = p.head_dim, Dv = p.value_dim, H = p.heads, Hkv = p.kv_heads;
  const int g = h / (H / Hkv);
  const int64_t q_start = p.q_layout.offsets[b], k_start = p.kv_layout.offsets[b];
  const int Lq = p.q_layout.offsets[b + 1] - (int)q_start;
  const int Lk = p.kv_layout.offsets[b + 1] - (int)k_start;
  const int row0 = q_tile * kBlockM;
  const int rows = std::min(kBlockM, Lq - row0);
  const int m_pad = round_up(rows, 4);
  const int align = Lk - Lq;  // bottom-right causal alignment
  const bool softmax = p.normalize == kSoftmax;
  const int dvp = sc.dv_pad;

  TileBounds qb{job.q_tiles[(int64_t)b * job.q_tiles_per_seq + q_tile], row0 + align,
                row0 + rows - 1 + align};

  // Scaled query rows; padding rows are zero and never written out.
  float* qs = sc.q.get();
  for (int r = 0; r < m_pad; ++r)
    for (int d = 0; d < D; ++d)
      qs[r * D + d] = r < rows ? job.q[((q_start + row0 + r) * H + h) * D + d] * p.scale : 0.0f;
  std::fill(sc.o.get(), sc.o.get() + (size_t)m_pad * dvp, 0.0f);
  for (int r = 0; r < m_pad; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }

  const int key_end = visible_key_end(p.rule, qb, Lk);
  const int n_key_tiles = (key_end + kBlockN - 1) / kBlockN;
  const int32_t* qseg = p.q_layout.segments;
  const uint8_t* qrole = p.q_layout.roles;
  const int32_t* kseg = p.kv_layout.segments;
  const uint8_t* krole = p.kv_layout.roles;

  for (int kt = 0; kt < n_key_tiles; ++kt) {
    const int col0 = kt * kBlockN;
    const int cols = std::min(kBlockN, Lk - col0);
    TileBounds kb{job.k_tiles[(int64_t)b * job.k_tiles_per_seq + kt], col0, col0 + cols - 1};
    const int cls = classify_tile(p.rule, qb, kb);
    if (cls == kTileSkip) continue;
    const int n_pad = round_up(cols, 16);

    // K^T tile so that S = Q K^T reads both operands row-wise.
    float* kt_buf = sc.kt.get();
    for (int j = 0; j < n_pad; ++j) {
      const float* krow = job.k + ((k_start + col0 + j) * Hkv + g) * D;
      for (int d = 0; d < D; ++d) kt_buf[d * kBlockN + j] = j < cols ? krow[d] : 0.0f;
    }
    float* s = sc.s.get();
    gemm_4x16_blocks(m_pad, n_pad, D, qs, D, kt_buf, kBlockN, s, kBlockN, false);

    // Per-element masking only on partial tiles; padding columns are always masked.
    for (int r = 0; r < rows; ++r) {
      float* srow = s + r * kBlockN;
      for (int j = cols; j < n_pad; ++j) srow[j] = kNegInf;
      if (cls != kTilePartial) continue;
      const int64_t qi = q_start + row0 + r;
      const int rq = qrole ? qrole[qi] : 0, sq = qseg ? qseg[qi] : 0;
      const int pos_q = row0 + r + align;
      for (int j = 0; j < cols; ++j) {
        const int64_t ki = k_start + col0 + j;
        if (!pair_allowed(p.rule, rq, krole ? krole[ki] : 0, sq, kseg ? kseg[ki] : 0, pos_q, col0 + j))
          srow[j] = kNegInf;
      }
    }

    if (softmax) {
      for (int r = 0; r < rows; ++r) {
        float* srow = s + r * kBlockN;
        v8f mx = splat(kNegInf);
        for (int j = 0; j < n_pad; j += 8) {
          const v8f x = load8(srow + j);
          mx = x > mx ? x : mx;
        }
        const float m_old = sc.m[r];
        const float m_new = std::max(m_old, hmax(mx));
        if (m_new == kNegInf) {  // nothing allowed yet in this row
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
      // HSTU pointwise attention: silu(score) / divisor, masked entries contribute 0.
      for (int r = 0; r < rows; ++r) {
        float* srow = s + r * kBlockN;
        for (int j = 0; j < n_pad; ++j) {
          const float x = srow[j];
          srow[j] = x == kNegInf ? 0.0f : x / (1.0f + std::exp(-x)) * p.silu_inv_divisor;
        }
      }
    }
    for (int r = rows; r < m_pad; ++r) std::fill(s + r * kBlockN, s + r * kBlockN + n_pad, 0.0f);

    float* vs = sc.v.get();
    for (int j = 0; j < n_pad; ++j) {
      const float* vrow = job.v + ((k_start + col0 + j) * Hkv + g) * Dv;
      for (int c = 0; c < dvp; ++c) vs[j * dvp + c] = (j < cols && c < Dv) ? vrow[c] : 0.0f;
    }
    gemm_4x16_blocks(m_pad, dvp, n_pad, s, kBlockN, vs, dvp, sc.o.get(), dvp, true);
  }

  for (int r = 0; r < rows; ++r) {
    const int64_t qi = q_start + row0 + r;
    float* dst = job.out + (qi * H + h) * Dv;
    const float* orow = sc.o.get() + r * dvp;
    float norm = 1.0f;
    if (softmax) norm = sc.l[r] > 0.0f ? 1.0f / sc.l[r] : 0.0f;
    for (int c = 0; c < Dv; ++c) dst[c] = orow[c] * norm;
    if (p.lse) p.lse[qi * H + h] = sc.l[r] > 0.0f ? sc.m[r] + std::log(sc.l[r]) : kNegInf;
  }
}

// Tile summaries of every sequence, [batch][tiles_per_seq], tiles of `tile` tokens.
std::vector<TileSummary> summarize(const LayoutView& layout, int batch, int tile, int tiles_per_seq) {
  std::vector<TileSummary> out((size_t)batch * tiles_per_seq);
  for (int b = 0; b < batch; ++b) {
    const int64_t start = layout.offsets[b], end = layout.offsets[b + 1];
    for (int t = 0; t < tiles_per_seq; ++t) {
      const int64_t lo = std::min(end, start + (int64_t)t * tile);
      const int64_t hi = std::min(end, lo + tile);
      out[(size_t)b * tiles_per_seq + t] = summarize_tokens(layout.segments, layout.roles, lo, hi);
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

  Job job{&p, q.data, k.data, v.data, out, nullptr, nullptr, 0, 0};
  job.q_tiles_per_seq = (p.max_q_len + kBlockM - 1) / kBlockM;
  job.k_tiles_per_seq = (p.max_k_len + kBlockN - 1) / kBlockN;
  const std::vector<TileSummary> q_tiles = summarize(p.q_layout, p.batch, kBlockM, job.q_tiles_per_seq);
  const std::vector<TileSummary> k_tiles = summarize(p.kv_layout, p.batch, kBlockN, job.k_tiles_per_seq);
  job.q_tiles = q_tiles.data();
  job.k_tiles = k_tiles.data();

  // Tasks = (sequence, query tile, head); later query tiles first since causal ones cost most.
  struct Task { int b, tile; };
  std::vector<Task> tasks;
  for (int b = 0; b < p.batch; ++b) {
    const int lq = p.q_layout.offsets[b + 1] - p.q_layout.offsets[b];
    for (int t = (lq + kBlockM - 1) / kBlockM - 1; t >= 0; --t) tasks.push_back({b, t});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) { return x.tile > y.tile; });

  ThreadPool& pool = ThreadPool::shared();
  std::vector<Scratch> scratch(pool.size());
  for (auto& sc : scratch) sc.init(p.head_dim, p.value_dim);
  pool.parallel_for((int64_t)tasks.size() * p.heads, [&](int64_t i, int worker) {
    const Task& t = tasks[i / p.heads];
    attend_tile(job, t.b, t.tile, (int)(i % p.heads), scratch[worker]);
  });

  if (p.dtype != kFloat32) {
    uint16_t* dst = static_cast<uint16_t*>(p.out);
    for (int64_t i = 0; i < out_count; ++i)
      dst[i] = p.dtype == kFloat16 ? float_to_half(out[i]) : float_to_bfloat16(out[i]);
  }
}

}  // namespace lk::cpu
