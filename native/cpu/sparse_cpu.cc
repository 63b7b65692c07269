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

std::vector<float> to_float32(const void* src, DType dtype, int64_t count) {
  std::vector<float> out((size_t)count);
  if (dtype == kFloat32) {
    std::memcpy(out.data(), src, (size_t)count * 4);
    return out;
  }
  const uint16_t* bits = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < count; ++i) out[i] = dtype == kFloat16 ? half_to_float(bits[i]) : bfloat16_to_float(bits[i]);
  return out;
}

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

// Scores of one query against its sequence's keys: out[j] = sum_h w[h] * relu(q[h] . k[j]).
LK_ISA_CLONES void score_row(const float* q, const float* w, const float* k, int heads, int dim, int len, float* out) {
  for (int j = 0; j < len; ++j) {
    const float* kr = k + (int64_t)j * dim;
    float s = 0.0f;
    for (int h = 0; h < heads; ++h) {
      const float x = dot(q + (int64_t)h * dim, kr, dim);
      s += w[h] * (x > 0.0f ? x : 0.0f);
    }
    out[j] = s;
  }
}

// Top-k of one row by radix selection (4 passes of 8 bits over the order-preserving keys), then
// an exact sort of the k chosen by (value desc, index asc). Scratch: keys of the row.
void select_row(const float* row, int len, int k, int32_t* indices, float* values, std::vector<uint32_t>& keys,
                std::vector<std::pair<uint32_t, int>>& chosen) {
  keys.resize((size_t)len);
  int candidates = 0;
  for (int j = 0; j < len; ++j) {
    keys[j] = topk_key(row[j]);
    candidates += keys[j] != 0;
  }
  chosen.clear();
  const int take = std::min(k, candidates);
  if (take > 0) {
    // Find the key of the take-th largest: fix the top bits digit by digit.
    uint32_t prefix = 0, mask = 0;
    int remaining = take;  // how many we still need among keys matching the prefix
    for (int shift = 24; shift >= 0; shift -= 8) {
      int hist[256] = {0};
      for (int j = 0; j < len; ++j)
        if (keys[j] != 0 && (keys[j] & mask) == prefix) ++hist[(keys[j] >> shift) & 0xff];
      int digit = 255;
      for (; digit > 0; --digit) {
        if (hist[digit] >= remaining) break;
        remaining -= hist[digit];
      }
      prefix |= (uint32_t)digit << shift;
      mask |= 0xffu << shift;
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

// Softmax attention of one query (all heads) over its selected keys. q: [heads, D] float32.
LK_ISA_CLONES void attend_row(const SparseParams& p, const float* q, const float* k, const float* v, int64_t key_start,
                const int32_t* idx, float* out, float* lse, std::vector<float>& scores) {
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.value_dim, K = p.top_k;
  scores.resize((size_t)K);
  for (int h = 0; h < H; ++h) {
    const int g = h / (H / Hkv);
    const float* qh = q + (int64_t)h * D;
    float m = -INFINITY;
    for (int i = 0; i < K; ++i) {
      if (idx[i] < 0) { scores[i] = -INFINITY; continue; }
      scores[i] = dot(qh, k + ((key_start + idx[i]) * Hkv + g) * D, D) * p.scale;
      m = std::max(m, scores[i]);
    }
    float* o = out + (int64_t)h * Dv;
    std::fill(o, o + Dv, 0.0f);
    float l = 0.0f;
    if (m != -INFINITY) {
      for (int i = 0; i < K; ++i) {
        if (idx[i] < 0) continue;
        const float pr = std::exp(scores[i] - m);
        l += pr;
        const float* vr = v + ((key_start + idx[i]) * Hkv + g) * Dv;
        int c = 0;
        for (; c + 8 <= Dv; c += 8) store8(o + c, load8(o + c) + splat(pr) * load8(vr + c));
        for (; c < Dv; ++c) o[c] += pr * vr[c];
      }
      for (int c = 0; c < Dv; ++c) o[c] /= l;
    }
    if (lse) lse[h] = l > 0.0f ? m + std::log(l) : -INFINITY;
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
  const std::vector<float> q = to_float32(p.q, p.dtype, p.nq * p.heads * p.dim);
  const std::vector<float> k = to_float32(p.k, p.dtype, p.tk * p.dim);
  const std::vector<float> w = to_float32(p.w, p.dtype, p.nq * p.heads);
  ThreadPool::shared().parallel_for(p.nq, [&](int64_t i, int) {
    const int b = batch_of(p.q_offsets, p.batch, i);
    const int len = p.k_offsets[b + 1] - p.k_offsets[b];
    float* out = p.scores + i * p.max_len;
    score_row(q.data() + i * p.heads * p.dim, w.data() + i * p.heads, k.data() + (int64_t)p.k_offsets[b] * p.dim, p.heads, p.dim, len, out);
    std::fill(out + len, out + p.max_len, -INFINITY);
  });
}

void top_k(const TopKParams& p) {
  const int workers = ThreadPool::shared().size();
  std::vector<std::vector<uint32_t>> keys((size_t)workers);
  std::vector<std::vector<std::pair<uint32_t, int>>> chosen((size_t)workers);
  ThreadPool::shared().parallel_for(p.rows, [&](int64_t r, int worker) {
    const int len = p.lengths ? std::min(p.cols, std::max(0, p.lengths[r])) : p.cols;
    select_row(p.scores + r * p.cols, len, p.k, p.indices + r * p.k, p.values + r * p.k, keys[worker], chosen[worker]);
  });
}

void sparse_attention(const SparseParams& p) {
  const std::vector<float> q = to_float32(p.q, p.dtype, p.nq * p.heads * p.head_dim);
  const std::vector<float> k = to_float32(p.k, p.dtype, p.tk * p.kv_heads * p.head_dim);
  const std::vector<float> v = to_float32(p.v, p.dtype, p.tk * p.kv_heads * p.value_dim);
  const int workers = ThreadPool::shared().size();
  std::vector<std::vector<float>> scores((size_t)workers), outs((size_t)workers, std::vector<float>((size_t)p.heads * p.value_dim));
  ThreadPool::shared().parallel_for(p.nq, [&](int64_t i, int worker) {
    const int b = batch_of(p.q_offsets, p.batch, i);
    float* o = outs[worker].data();
    attend_row(p, q.data() + i * p.heads * p.head_dim, k.data(), v.data(), p.k_offsets[b], p.indices + i * p.top_k, o,
               p.lse ? p.lse + i * p.heads : nullptr, scores[worker]);
    store_output(p.dtype, o, p.out, i * p.heads * p.value_dim, (int64_t)p.heads * p.value_dim);
  });
}

void indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp) {
  const std::vector<float> qi = to_float32(ip.q, ip.dtype, ip.nq * ip.heads * ip.dim);
  const std::vector<float> ki = to_float32(ip.k, ip.dtype, ip.tk * ip.dim);
  const std::vector<float> wi = to_float32(ip.w, ip.dtype, ip.nq * ip.heads);
  const std::vector<float> q = to_float32(sp.q, sp.dtype, sp.nq * sp.heads * sp.head_dim);
  const std::vector<float> k = to_float32(sp.k, sp.dtype, sp.tk * sp.kv_heads * sp.head_dim);
  const std::vector<float> v = to_float32(sp.v, sp.dtype, sp.tk * sp.kv_heads * sp.value_dim);
  const int workers = ThreadPool::shared().size();
  struct Scratch {
    std::vector<float> row, scores, out;
    std::vector<uint32_t> keys;
    std::vector<std::pair<uint32_t, int>> chosen;
  };
  std::vector<Scratch> scratch((size_t)workers);
  ThreadPool::shared().parallel_for(ip.nq, [&](int64_t i, int worker) {
    Scratch& s = scratch[worker];
    const int b = batch_of(ip.q_offsets, ip.batch, i);
    const int len = ip.k_offsets[b + 1] - ip.k_offsets[b];
    s.row.resize((size_t)std::max(len, 1));
    score_row(qi.data() + i * ip.heads * ip.dim, wi.data() + i * ip.heads, ki.data() + (int64_t)ip.k_offsets[b] * ip.dim, ip.heads, ip.dim, len, s.row.data());
    select_row(s.row.data(), len, tp.k, tp.indices + i * tp.k, tp.values + i * tp.k, s.keys, s.chosen);
    s.out.resize((size_t)sp.heads * sp.value_dim);
    attend_row(sp, q.data() + i * sp.heads * sp.head_dim, k.data(), v.data(), sp.k_offsets[b], tp.indices + i * tp.k, s.out.data(),
               sp.lse ? sp.lse + i * sp.heads : nullptr, s.scores);
    store_output(sp.dtype, s.out.data(), sp.out, i * sp.heads * sp.value_dim, (int64_t)sp.heads * sp.value_dim);
  });
}

}  // namespace lk::cpu
