// C++ parity test of the CPU kernels, built for the host and cross-built for arm64 by
// scripts/test-arm64.sh (`npm run test:arm64`), which runs the arm64 binary under qemu-aarch64.
// Randomized jagged batches (empty and single-token sequences, lengths off the tile sizes, random
// mask rules, GQA, Dv != D, every dtype, softmax and silu) run on every ISA path this CPU has
// (native/cpu/isa.h), each checked against a double-precision reference written here with SPEC §7's
// tolerances; sparse attention and top-k likewise. `write FILE` also stores every output, and
// `compare FILE` checks this machine's outputs against a file written on another (the host).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../cuda/common/half_convert.h"
#include "../../native/cpu/attention_cpu.h"
#include "../../native/cpu/isa.h"
#include "../../native/cpu/sparse_cpu.h"

using namespace lk;

namespace {

struct Rng {  // xorshift32, as test/helpers.ts
  uint32_t s;
  explicit Rng(uint32_t seed) : s(seed ? seed : 1) {}
  double next() {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s / 4294967296.0;
  }
  int range(int lo, int hi) { return lo + (int)(next() * (hi - lo + 1)); }
  template <typename T, size_t N>
  T pick(const T (&xs)[N]) { return xs[(size_t)(next() * N)]; }
};

const double kTolerance[3] = {1e-5, 2e-3, 1.6e-2};  // SPEC §7, by DType

// Values as the kernel sees them: rounded to dtype, stored as dtype.
struct Input {
  std::vector<float> exact;
  std::vector<uint8_t> bytes;
};
Input make_input(Rng& rng, size_t n, DType dtype, double amp) {
  Input in;
  in.exact.resize(n);
  in.bytes.resize(n * (dtype == kFloat32 ? 4 : 2));
  for (size_t i = 0; i < n; ++i) {
    const float x = (float)((rng.next() * 2 - 1) * amp);
    if (dtype == kFloat32) {
      in.exact[i] = x;
      std::memcpy(in.bytes.data() + 4 * i, &x, 4);
    } else {
      const uint16_t b = dtype == kFloat16 ? float_to_half(x) : float_to_bfloat16(x);
      in.exact[i] = dtype == kFloat16 ? half_to_float(b) : bfloat16_to_float(b);
      std::memcpy(in.bytes.data() + 2 * i, &b, 2);
    }
  }
  return in;
}
std::vector<float> read_output(const std::vector<uint8_t>& bytes, DType dtype, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (dtype == kFloat32) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    } else {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out[i] = dtype == kFloat16 ? half_to_float(b) : bfloat16_to_float(b);
    }
  }
  return out;
}

int failures = 0;
std::vector<float> recorded;  // every output, in order, for write / compare
std::vector<double> bound;    // how far another machine's value may be: twice the SPEC bound of its check

// SPEC §7: max |got - want| <= tol (1 + max |want|); -inf must match exactly.
void check(const char* what, const std::string& where, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  double max_ref = 0, max_err = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i]) || std::isinf(got[i])) {
      if (want[i] != got[i]) {
        std::printf("FAIL %s %s [%zu]: got %g, reference %g\n", what, where.c_str(), i, got[i], want[i]);
        ++failures;
        return;
      }
      continue;
    }
    max_ref = std::max(max_ref, std::fabs(want[i]));
    const double e = std::fabs(got[i] - want[i]);
    if (!(e <= max_err)) {
      max_err = e;
      at = i;
    }
  }
  if (!(max_err <= tol * (1 + max_ref))) {
    std::printf("FAIL %s %s: max error %g at %zu (got %g, reference %g)\n", what, where.c_str(), max_err, at, got[at], want[at]);
    ++failures;
  }
  recorded.insert(recorded.end(), got.begin(), got.end());
  bound.insert(bound.end(), got.size(), 2 * tol * (1 + max_ref));
}

struct Layout {
  std::vector<int32_t> offsets, segments;
  std::vector<uint8_t> roles;
};
Layout random_layout(Rng& rng, int batch, int max_len = 1 << 30) {
  Layout l;
  l.offsets.push_back(0);
  const int lengths[] = {0, 1, 5, 31, 32, 33, 63, 64, 65, 100, 130, 200};
  for (int b = 0; b < batch; ++b) {
    int n = rng.pick(lengths);
    while (n > max_len) n = rng.pick(lengths);
    const int segs = rng.range(1, 4);
    for (int i = 0; i < n; ++i) {
      l.segments.push_back(i * segs / std::max(1, n));
      const uint8_t roles[] = {0, 0, 0, 1, 2};
      l.roles.push_back(rng.pick(roles));
    }
    l.offsets.push_back((int32_t)l.roles.size());
  }
  return l;
}

MaskRule random_rule(Rng& rng) {
  MaskRule r;
  for (int a = 0; a < kNumRoles; ++a)
    for (int b = 0; b < kNumRoles; ++b) {
      r.seg[a][b] = (uint8_t)rng.range(0, kNumSegRelations - 1);
      r.causal[a][b] = (uint8_t)(rng.next() < 0.5);
    }
  return r;
}

// small_heads: 2..8 heads of D, Dv <= 16 over at most 64 keys, the shapes the heads-in-lanes kernel
// takes (native/cpu/attention_lanes_cpu.h).
void attention_case(Rng& rng, DType dtype, int index, bool small_heads = false) {
  const int batch = rng.range(1, 5);
  const int max_len = small_heads ? 64 : 1 << 30;
  const Layout ql = random_layout(rng, batch, max_len);
  const bool cross = rng.next() < 0.3;
  const Layout kl = cross ? random_layout(rng, batch, max_len) : ql;
  const int kv_heads = rng.range(1, 2), heads = kv_heads * (small_heads ? rng.range(2, 4) : rng.range(1, 3));
  const int dims[] = {8, 16, 32, 64, 72, 128}, small_dims[] = {4, 8, 12, 16};
  const int D = small_heads ? rng.pick(small_dims) : rng.pick(dims), Dv = small_heads ? rng.pick(small_dims) : rng.pick(dims);
  const bool silu = !small_heads && rng.next() < 0.2;
  const MaskRule rule = random_rule(rng);
  const int64_t tq = ql.offsets.back(), tk = kl.offsets.back();
  const Input q = make_input(rng, (size_t)tq * heads * D, dtype, 2), k = make_input(rng, (size_t)tk * kv_heads * D, dtype, 2),
              v = make_input(rng, (size_t)tk * kv_heads * Dv, dtype, 1);
  const size_t es = dtype == kFloat32 ? 4 : 2;
  std::vector<uint8_t> out((size_t)tq * heads * Dv * es);
  std::vector<float> lse((size_t)tq * heads);
  AttentionParams p{};
  p.q = q.bytes.data();
  p.k = k.bytes.data();
  p.v = v.bytes.data();
  p.out = out.data();
  p.lse = silu ? nullptr : lse.data();
  p.dtype = dtype;
  p.batch = batch;
  p.tq = tq;
  p.tk = tk;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = D;
  p.value_dim = Dv;
  p.q_layout = LayoutView{ql.offsets.data(), ql.segments.data(), ql.roles.data()};
  p.kv_layout = LayoutView{kl.offsets.data(), kl.segments.data(), kl.roles.data()};
  p.rule = rule;
  p.scale = (float)(1 / std::sqrt((double)D));
  p.normalize = silu ? kSilu : kSoftmax;
  p.silu_inv_divisor = 1.0f / 50;
  for (int b = 0; b < batch; ++b) {
    p.max_q_len = std::max(p.max_q_len, ql.offsets[b + 1] - ql.offsets[b]);
    p.max_k_len = std::max(p.max_k_len, kl.offsets[b + 1] - kl.offsets[b]);
  }
  cpu::masked_attention(p);

  // Reference in double: softmax / silu over allowed pairs; a row with none gives 0 and lse -inf.
  std::vector<double> want_out((size_t)tq * heads * Dv, 0.0), want_lse((size_t)tq * heads, -INFINITY);
  std::vector<double> sc;
  for (int b = 0; b < batch; ++b) {
    const int q0 = ql.offsets[b], Lq = ql.offsets[b + 1] - q0, k0 = kl.offsets[b], Lk = kl.offsets[b + 1] - k0;
    for (int i = 0; i < Lq; ++i)
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kv_heads);
        sc.assign((size_t)Lk, 0.0);
        std::vector<int> allowed;
        for (int j = 0; j < Lk; ++j) {
          if (!pair_allowed(rule, ql.roles[q0 + i], kl.roles[k0 + j], ql.segments[q0 + i], kl.segments[k0 + j], i + Lk - Lq, j)) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += (double)q.exact[((size_t)(q0 + i) * heads + h) * D + d] * k.exact[((size_t)(k0 + j) * kv_heads + g) * D + d];
          sc[j] = dot * p.scale;
          allowed.push_back(j);
        }
        double* o = &want_out[((size_t)(q0 + i) * heads + h) * Dv];
        if (allowed.empty()) continue;
        double m = -INFINITY, l = 0;
        for (int j : allowed) m = std::max(m, sc[j]);
        for (int j : allowed) {
          const double w = silu ? sc[j] / (1 + std::exp(-sc[j])) / 50 : std::exp(sc[j] - m);
          l += w;
          for (int c = 0; c < Dv; ++c) o[c] += w * v.exact[((size_t)(k0 + j) * kv_heads + g) * Dv + c];
        }
        if (!silu) {
          for (int c = 0; c < Dv; ++c) o[c] /= l;
          want_lse[(size_t)(q0 + i) * heads + h] = m + std::log(l);
        }
      }
  }
  const std::string where = std::string("attention #") + std::to_string(index) + " on " + cpu::isa_name(cpu::active_isa()) + " dtype " +
                            std::to_string(dtype) + " B=" + std::to_string(batch) + " Tq=" + std::to_string(tq) + " Tk=" + std::to_string(tk) +
                            " D=" + std::to_string(D) + " Dv=" + std::to_string(Dv) + (silu ? " silu" : "");
  check("output", where, read_output(out, dtype, want_out.size()), want_out, kTolerance[dtype]);
  if (!silu) check("lse", where, lse, want_lse, kTolerance[0]);
}

void sparse_case(Rng& rng, DType dtype, int index) {
  const int batch = rng.range(1, 4);
  std::vector<int32_t> qo{0}, ko{0};
  const int key_lengths[] = {0, 1, 40, 300};
  for (int b = 0; b < batch; ++b) {
    qo.push_back(qo.back() + rng.range(0, 9));
    ko.push_back(ko.back() + rng.pick(key_lengths));
  }
  const int64_t nq = qo.back(), tk = ko.back();
  const int kv_heads = rng.range(1, 2), heads = kv_heads * rng.range(1, 4);
  const int dims[] = {16, 20, 64}, vdims[] = {8, 72};
  const int D = rng.pick(dims), Dv = rng.pick(vdims), K = rng.range(1, 40);
  // Indices: random keys of the query's own sequence, some -1 and some repeated.
  std::vector<int32_t> idx((size_t)nq * K);
  for (int b = 0; b < batch; ++b)
    for (int i = qo[b]; i < qo[b + 1]; ++i)
      for (int s = 0; s < K; ++s) {
        const int len = ko[b + 1] - ko[b];
        idx[(size_t)i * K + s] = len == 0 || rng.next() < 0.15 ? -1 : rng.range(0, len - 1);
      }
  const Input q = make_input(rng, (size_t)nq * heads * D, dtype, 2), k = make_input(rng, (size_t)tk * kv_heads * D, dtype, 2),
              v = make_input(rng, (size_t)tk * kv_heads * Dv, dtype, 1);
  const size_t es = dtype == kFloat32 ? 4 : 2;
  std::vector<uint8_t> out((size_t)nq * heads * Dv * es);
  std::vector<float> lse((size_t)nq * heads);
  SparseParams p{};
  p.q = q.bytes.data();
  p.k = k.bytes.data();
  p.v = v.bytes.data();
  p.out = out.data();
  p.lse = lse.data();
  p.indices = idx.data();
  p.dtype = dtype;
  p.batch = batch;
  p.nq = nq;
  p.tk = tk;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = D;
  p.value_dim = Dv;
  p.top_k = K;
  p.q_offsets = qo.data();
  p.k_offsets = ko.data();
  p.scale = (float)(1 / std::sqrt((double)D));
  cpu::sparse_attention(p);
  std::vector<double> want_out((size_t)nq * heads * Dv, 0.0), want_lse((size_t)nq * heads, -INFINITY);
  for (int b = 0; b < batch; ++b)
    for (int i = qo[b]; i < qo[b + 1]; ++i)
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kv_heads);
        std::vector<double> sc;
        std::vector<int> keys;
        for (int s = 0; s < K; ++s) {
          const int j = idx[(size_t)i * K + s];
          if (j < 0) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += (double)q.exact[((size_t)i * heads + h) * D + d] * k.exact[((size_t)(ko[b] + j) * kv_heads + g) * D + d];
          sc.push_back(dot * p.scale);
          keys.push_back(ko[b] + j);
        }
        if (keys.empty()) continue;
        double m = -INFINITY, l = 0;
        for (double x : sc) m = std::max(m, x);
        double* o = &want_out[((size_t)i * heads + h) * Dv];
        for (size_t e = 0; e < keys.size(); ++e) {
          const double w = std::exp(sc[e] - m);
          l += w;
          for (int c = 0; c < Dv; ++c) o[c] += w * v.exact[((size_t)keys[e] * kv_heads + g) * Dv + c];
        }
        for (int c = 0; c < Dv; ++c) o[c] /= l;
        want_lse[(size_t)i * heads + h] = m + std::log(l);
      }
  const std::string where = std::string("sparse #") + std::to_string(index) + " on " + cpu::isa_name(cpu::active_isa()) + " dtype " + std::to_string(dtype);
  check("sparse output", where, read_output(out, dtype, want_out.size()), want_out, kTolerance[dtype]);
  check("sparse lse", where, lse, want_lse, kTolerance[0]);
}

// Top-k of given rows (with ties) is exact on every machine: indices compared as they are.
void top_k_case(Rng& rng, int index) {
  const int rows = rng.range(1, 6), cols = rng.range(1, 3000), k = rng.range(1, 300);
  std::vector<float> scores((size_t)rows * cols);
  for (float& x : scores) x = rng.next() < 0.1 ? 0.5f : (float)(rng.next() * 2 - 1);
  std::vector<int32_t> indices((size_t)rows * k);
  std::vector<float> values((size_t)rows * k);
  TopKParams p{scores.data(), indices.data(), values.data(), rows, cols, k, nullptr};
  cpu::top_k(p);
  for (int r = 0; r < rows; ++r) {
    std::vector<int> order((size_t)cols);
    for (int j = 0; j < cols; ++j) order[j] = j;
    const float* row = scores.data() + (size_t)r * cols;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
    for (int s = 0; s < k; ++s) {
      const int want = s < cols ? order[s] : -1;
      if (indices[(size_t)r * k + s] != want) {
        std::printf("FAIL top-k #%d row %d slot %d: index %d, reference %d\n", index, r, s, indices[(size_t)r * k + s], want);
        ++failures;
        return;
      }
      recorded.push_back((float)want);
      bound.push_back(0.0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  int paths = 0;
  for (int i = 0; i < cpu::kIsaCount; ++i) {
    const cpu::Isa isa = (cpu::Isa)i;
    if (!cpu::isa_supported(isa)) continue;
    cpu::set_active_isa(isa);
    ++paths;
    // Same seeds on every path and machine: the recorded outputs line up case by case.
    Rng rng(20260501);
    for (int c = 0; c < 24; ++c) attention_case(rng, (DType)(c % 3), c);
    for (int c = 0; c < 12; ++c) sparse_case(rng, (DType)(c % 3), c);
    for (int c = 0; c < 6; ++c) top_k_case(rng, c);
    for (int c = 0; c < 6; ++c) attention_case(rng, (DType)(c % 3), 24 + c, true);
  }
  std::printf("cpu_parity: %d ISA paths (", paths);
  for (int i = 0; i < cpu::kIsaCount; ++i)
    if (cpu::isa_supported((cpu::Isa)i)) std::printf(" %s", cpu::isa_name((cpu::Isa)i));
  std::printf(" ), %zu outputs, %d failures\n", recorded.size(), failures);

  // Another machine's file holds one run per path it has; every run here is compared with each.
  if (mode == "write" && argc > 2) {
    FILE* f = std::fopen(argv[2], "wb");
    if (!f || std::fwrite(recorded.data(), sizeof(float), recorded.size(), f) != recorded.size()) return 2;
    std::fclose(f);
  } else if (mode == "compare" && argc > 2) {
    FILE* f = std::fopen(argv[2], "rb");
    if (!f) return 2;
    std::vector<float> host;
    float x;
    while (std::fread(&x, sizeof x, 1, f) == 1) host.push_back(x);
    std::fclose(f);
    const size_t per_path = recorded.size() / paths;
    if (host.size() % per_path != 0) {
      std::printf("FAIL compare: host file has %zu outputs, not a multiple of %zu\n", host.size(), per_path);
      return 1;
    }
    // Every path here against every path there, value by value, within twice the SPEC §7 bound of
    // the value's check (both machines are within it of the reference).
    size_t bad = 0, first_bad = 0;
    double worst = 0;
    for (size_t a = 0; a < recorded.size(); ++a)
      for (size_t h = a % per_path; h < host.size(); h += per_path) {
        const double g = recorded[a], w = host[h];
        const bool ok = (std::isinf(g) || std::isinf(w)) ? g == w : std::fabs(g - w) <= bound[a];
        if (!std::isinf(g) && !std::isinf(w)) worst = std::max(worst, std::fabs(g - w) / (1 + std::fabs(w)));
        if (!ok && bad++ == 0) first_bad = a;
      }
    std::printf("compare with the host: %zu values x %zu host paths, %zu outside the bound, worst relative difference %g\n",
                recorded.size(), host.size() / per_path, bad, worst);
    if (bad) {
      std::printf("FAIL compare: first at value %zu: %g here\n", first_bad, recorded[first_bad]);
      ++failures;
    }
  }
  return failures == 0 && paths > 0 ? 0 : 1;
}
