// The one list of kernels the GPU check runs, with their randomized cases (against the native CPU
// backend) and their benchmark shapes (bench/attention.ts, bench/sparse.ts, bench/memory-bank.ts).
// Add a kernel here and every build of the harness (GPU, emulator, sanitizers) runs it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <utility>

#include "../../cuda/common/mask_rules.h"
#include "../../cuda/kernel_timing.h"
#include "../../native/cpu/attention_cpu.h"
#include "../../native/cpu/gather_rows_cpu.h"
#include "../../native/cpu/sparse_cpu.h"
#include "check.h"

namespace lk::check {
namespace {

const std::vector<DType> kDtypes = {kFloat32, kFloat16, kBFloat16};

void must(const std::string& err, const char* what) {
  if (!err.empty()) throw std::runtime_error(std::string(what) + ": " + err);
}

// ---------------------------------------------------------------- jagged layouts

struct Layout {
  std::vector<int32_t> offsets{0}, segments;
  std::vector<uint8_t> roles;
  bool with_meta = true;  // false: segments / roles passed as null (all 0)
  int batch() const { return (int)offsets.size() - 1; }
  int64_t tokens() const { return offsets.back(); }
  int max_len() const {
    int m = 0;
    for (int b = 0; b < batch(); ++b) m = std::max(m, offsets[b + 1] - offsets[b]);
    return m;
  }
  LayoutView view() const {
    return LayoutView{offsets.data(), with_meta && !segments.empty() ? segments.data() : nullptr,
                      with_meta && !roles.empty() ? roles.data() : nullptr};
  }
};

// Lengths that hit the interesting cases: empty, 1, around the tiles' edges (16 / 32 / 64), long.
int random_length(Rng& rng, int max_len) {
  const std::vector<int> picks = {0, 1, rng.range(2, 15), 16, 31, 32, 33, 63, 64, 65, rng.range(1, max_len), rng.range(1, max_len)};
  return std::min(rng.pick(picks), max_len);
}

enum class Shape { kPlain, kPersRec, kRec2pmReference, kRec2pmUpdate, kMixed };

// One sequence of `len` tokens shaped for a preset (SPEC §3 "Layouts the presets are meant for"),
// built long enough and cut to `len` (segments stay nondecreasing).
void push_sequence(Rng& rng, Shape shape, int len, Layout& l) {
  std::vector<int32_t> seg;
  std::vector<uint8_t> role;
  auto push = [&](int s, int r, int n) { for (int i = 0; i < n; ++i) { seg.push_back(s); role.push_back((uint8_t)r); } };
  const int items = std::max(1, len / 3);
  for (int j = 0; (int)seg.size() < len; ++j) {
    const int mem = rng.range(1, 8);
    switch (shape) {
      case Shape::kPersRec: push(j, 0, rng.range(0, items)); push(j, 1, mem); break;
      case Shape::kRec2pmReference: push(j, 0, rng.range(0, items)); push(j, 1, mem); break;
      case Shape::kRec2pmUpdate: push(j, 1, rng.chance(0.8) ? mem : 0); push(j, 0, rng.range(0, items)); push(j, 1, mem); break;
      case Shape::kMixed: {
        const int n = rng.range(0, items);
        for (int i = 0; i < n; ++i) push(j, rng.pick(std::vector<int>{0, 0, 0, 1, 2}), 1);
        break;
      }
      default: push(0, 0, len); break;
    }
  }
  seg.resize((size_t)len);
  role.resize((size_t)len);
  // PerSRec / Rec2PM-update end with a few targets in the last segment.
  if ((shape == Shape::kPersRec || shape == Shape::kRec2pmUpdate) && len > 0 && rng.chance(0.5)) {
    const int t = std::min(len, rng.range(1, 3));
    for (int i = len - t; i < len; ++i) role[(size_t)i] = 2;
  }
  l.segments.insert(l.segments.end(), seg.begin(), seg.end());
  l.roles.insert(l.roles.end(), role.begin(), role.end());
  l.offsets.push_back(l.offsets.back() + len);
}

Layout layout_of(Rng& rng, Shape shape, const std::vector<int>& lengths) {
  Layout l;
  for (int len : lengths) push_sequence(rng, shape, len, l);
  l.with_meta = shape != Shape::kPlain || rng.chance(0.5);
  return l;
}

std::vector<int> random_lengths(Rng& rng, int batch, int max_len) {
  std::vector<int> v((size_t)batch);
  for (auto& x : v) x = random_length(rng, max_len);
  return v;
}

std::vector<int32_t> offsets_of(const std::vector<int>& lengths) {
  std::vector<int32_t> o{0};
  for (int l : lengths) o.push_back(o.back() + l);
  return o;
}

// ---------------------------------------------------------------- mask rules

MaskRule every_entry(uint8_t seg, bool causal) {
  MaskRule r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) { r.seg[i][j] = seg; r.causal[i][j] = causal ? 1 : 0; }
  return r;
}
// Rows = query role (item, memory, target), columns = key role; kSegNone where absent; all causal.
MaskRule causal_table(std::vector<std::vector<uint8_t>> t) {
  MaskRule r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) { r.seg[i][j] = t[(size_t)i][(size_t)j]; r.causal[i][j] = 1; }
  return r;
}

struct Preset {
  const char* name;
  MaskRule rule;
  Shape shape;
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {"causal", every_entry(kSegAny, true), Shape::kPlain},
      {"full", every_entry(kSegAny, false), Shape::kPlain},
      {"persrec", causal_table({{kSegSame, kSegEarlier, kSegNone}, {kSegSame, kSegSameOrEarlier, kSegNone}, {kSegSame, kSegEarlier, kSegSelf}}), Shape::kPersRec},
      {"rec2pm-reference", causal_table({{kSegAny, kSegNone, kSegNone}, {kSegAny, kSegSame, kSegNone}, {kSegAny, kSegNone, kSegSelf}}), Shape::kRec2pmReference},
      {"rec2pm-update", causal_table({{kSegSame, kSegSame, kSegNone}, {kSegSame, kSegSame, kSegNone}, {kSegSame, kSegSame, kSegSelf}}), Shape::kRec2pmUpdate},
  };
  return p;
}

MaskRule random_rule(Rng& rng) {
  MaskRule r = every_entry(kSegNone, false);
  for (int i = 0; i < 3; ++i) {
    if (rng.chance(0.1)) continue;
    for (int j = 0; j < 3; ++j)
      if (rng.chance(0.85)) { r.seg[i][j] = (uint8_t)rng.range(0, kNumSegRelations - 1); r.causal[i][j] = rng.chance(0.5); }
  }
  return r;
}

// ---------------------------------------------------------------- timing

struct Timing {
  double kernel_ms = -1.0, op_ms = -1.0;
  int iterations = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return -1.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Runs `op` (a backend call) until enough time and iterations have passed; medians of the kernels'
// device time (cuda/kernel_timing.h) and of the whole op's host time. One run on the emulator.
template <typename Op>
Timing time_op(Context& ctx, Op op) {
  Timing t;
  std::vector<double> kernel, host;
  const int warmup = ctx.emulated ? 0 : 3;
  const int min_iters = ctx.emulated ? 1 : ctx.opt.bench_min_iters, max_iters = ctx.emulated ? 1 : ctx.opt.bench_max_iters;
  cuda::set_kernel_timing(true);
  for (int i = 0; i < warmup; ++i) op();
  double total = 0.0;
  while ((int)host.size() < max_iters && ((int)host.size() < min_iters || total < ctx.opt.bench_min_ms)) {
    const double t0 = host_ms();
    op();
    const double ms = host_ms() - t0;
    total += ms;
    host.push_back(ms);
    kernel.push_back(cuda::last_kernel_ms());
  }
  cuda::set_kernel_timing(false);
  t.kernel_ms = median(kernel);
  t.op_ms = median(host);
  t.iterations = (int)host.size();
  return t;
}

void finish_bench(BenchResult& b, const Timing& t) {
  b.kernel_ms = t.kernel_ms;
  b.op_ms = t.op_ms;
  b.iterations = t.iterations;
  if (t.kernel_ms > 0) {
    b.tflops = b.flops / (t.kernel_ms * 1e9);
    b.gbps = b.bytes / (t.kernel_ms * 1e6);
  }
}

// r after body(r) ran, timed (r.seconds); an exception fails it with its message.
template <typename F>
CheckResult run_timed(CheckResult r, F body) {
  const double t0 = host_ms();
  try {
    body(r);
  } catch (const std::exception& e) {
    r.ok = false;
    r.detail = std::string("exception: ") + e.what();
  }
  r.seconds = (host_ms() - t0) / 1000.0;
  return r;
}

template <typename F>
void timed_check(Context& ctx, CheckResult r, F body) {
  ctx.record(run_timed(std::move(r), body));
}

void merge(CheckResult& r, const Agreement& a) {
  r.max_error = std::max(r.max_error, a.max_error);
  r.tol = std::max(r.tol, a.tol);
  if (!a.ok && r.ok) { r.ok = false; r.detail = a.detail; }
}

// One check of `kernel` per dtype x variant (variants[v] names variant v), numbered n = 1, 2, ... in
// that order; each runs `reps` cases, case `rep` drawn from Rng(seed * seed_mul + n * n_mul + rep) so
// every check keeps its own reproducible stream. run_case(res, rng, dtype, v) runs one case.
template <typename RunCase>
void check_per_dtype(Context& ctx, const char* kernel, std::initializer_list<const char*> variants, int reps, uint64_t seed_mul,
                     uint64_t n_mul, RunCase run_case) {
  int n = 0;
  for (DType dtype : kDtypes) {
    int v = 0;
    for (const char* variant : variants) {
      CheckResult r;
      r.kernel = kernel;
      r.name = variant;
      r.dtype = dtype_name(dtype);
      ++n;
      timed_check(ctx, r, [&](CheckResult& res) {
        for (int rep = 0; rep < reps; ++rep) {
          Rng rng(ctx.opt.seed * seed_mul + (uint64_t)n * n_mul + (uint64_t)rep);
          run_case(res, rng, dtype, v);
        }
      });
      ++v;
    }
  }
}

// ---------------------------------------------------------------- masked attention

struct AttentionConfig {
  Normalize normalize;
  bool lse;
  int heads, kv_heads, head_dim, value_dim;
  bool cross;  // a separate kv layout (bottom-right causal alignment)
};

// Cycled over (rule, dtype) so that every preset meets softmax and silu, GQA / MQA, Dv != D, every
// head size and both self and cross attention.
const std::vector<AttentionConfig>& attention_configs() {
  static const std::vector<AttentionConfig> c = {
      {kSoftmax, true, 4, 2, 64, 32, false},   {kSilu, false, 2, 1, 16, 16, true},     {kSoftmax, false, 4, 4, 128, 64, true},
      {kSoftmax, true, 3, 1, 8, 8, false},     {kSilu, false, 4, 2, 32, 128, false},   {kSoftmax, true, 2, 2, 256, 256, true},
      {kSoftmax, true, 6, 3, 16, 8, true},     {kSilu, false, 1, 1, 64, 64, false},
  };
  return c;
}

struct AttentionRun {
  AttentionParams p;
  std::vector<float> out, lse;
};

void attention_case(Context& ctx, CheckResult& r, Rng& rng, const MaskRule& rule, Shape shape, DType dtype, const AttentionConfig& c) {
  const int batch = rng.range(1, ctx.opt.size.max_batch);
  const Layout ql = layout_of(rng, shape, random_lengths(rng, batch, ctx.opt.size.max_len));
  Layout kl = ql;
  if (c.cross) kl = layout_of(rng, shape, random_lengths(rng, batch, ctx.opt.size.max_len));
  const int64_t tq = ql.tokens(), tk = kl.tokens();
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, Dv = c.value_dim;
  const auto q = encode(random_floats(rng, (size_t)tq * H * D), dtype);
  const auto k = encode(random_floats(rng, (size_t)tk * Hkv * D), dtype);
  const auto v = encode(random_floats(rng, (size_t)tk * Hkv * Dv), dtype);
  AttentionParams p{};
  p.dtype = dtype;
  p.batch = batch;
  p.tq = tq;
  p.tk = tk;
  p.heads = H;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.value_dim = Dv;
  p.q_layout = ql.view();
  p.kv_layout = c.cross ? kl.view() : ql.view();
  p.rule = rule;
  p.scale = 1.0f / std::sqrt((float)D);
  p.normalize = c.normalize;
  p.max_q_len = ql.max_len();
  p.max_k_len = kl.max_len();
  p.silu_inv_divisor = 1.0f / (float)std::max(1, p.max_k_len);
  const size_t es = dtype_size(dtype), n_out = (size_t)tq * H * Dv, n_lse = (size_t)tq * H;
  const bool lse = c.lse && c.normalize == kSoftmax;

  // CPU oracle on host memory.
  std::vector<unsigned char> out_cpu(n_out * es);
  std::vector<float> lse_cpu(lse ? n_lse : 0);
  AttentionParams pc = p;
  pc.q = q.data(); pc.k = k.data(); pc.v = v.data(); pc.out = out_cpu.data(); pc.lse = lse ? lse_cpu.data() : nullptr;
  cpu::masked_attention(pc);

  DevBuf dq(q.data(), q.size()), dk(k.data(), k.size()), dv(v.data(), v.size()), dout(n_out * es), dlse(lse ? n_lse * 4 : 0);
  dout.poison();
  dlse.poison();
  AttentionParams pg = p;
  pg.q = dq.get(); pg.k = dk.get(); pg.v = dv.get(); pg.out = dout.get(); pg.lse = lse ? static_cast<float*>(dlse.get()) : nullptr;
  must(cuda::masked_attention(pg), "cuda::masked_attention");
  const auto out_gpu = dout.download();
  merge(r, agree(decode(out_gpu.data(), n_out, dtype), decode(out_cpu.data(), n_out, dtype), tolerance(dtype), "output"));
  if (lse) {
    const auto lse_gpu = dlse.download();
    merge(r, agree(decode(lse_gpu.data(), n_lse, kFloat32), lse_cpu, tolerance(dtype), "lse"));
  }
}

void check_attention(Context& ctx) {
  const auto& configs = attention_configs();
  std::vector<std::pair<std::string, const Preset*>> rules;
  for (const auto& p : presets()) rules.emplace_back(p.name, &p);
  rules.emplace_back("custom", nullptr);
  int n = 0;
  for (size_t ri = 0; ri < rules.size(); ++ri)
    for (size_t di = 0; di < kDtypes.size(); ++di, ++n) {
      const AttentionConfig& c = configs[(ri + 3 * di) % configs.size()];
      const DType dtype = kDtypes[di];
      char name[160];
      std::snprintf(name, sizeof name, "%s %s H=%d Hkv=%d D=%d Dv=%d%s%s", rules[ri].first.c_str(), c.normalize == kSilu ? "silu" : "softmax",
                    c.heads, c.kv_heads, c.head_dim, c.value_dim, c.lse && c.normalize == kSoftmax ? " lse" : "", c.cross ? " cross" : " self");
      CheckResult r;
      r.kernel = "masked_attention";
      r.name = name;
      r.dtype = dtype_name(dtype);
      timed_check(ctx, r, [&](CheckResult& res) {
        for (int rep = 0; rep < ctx.opt.size.repeat; ++rep) {
          Rng rng(ctx.opt.seed * 1000003u + (uint64_t)n * 7919u + (uint64_t)rep);
          const Preset* preset = rules[ri].second;
          const MaskRule rule = preset ? preset->rule : random_rule(rng);
          attention_case(ctx, res, rng, rule, preset ? preset->shape : Shape::kMixed, dtype, c);
        }
      });
    }
}

// bench/attention.ts: H = 4, D = 64, PerSRec / Rec2PM-update layouts of 200-item segments and 4
// memory tokens; 8 users x 1,024 and 1 x 4,096 tokens (plus 64 x 2,048 to fill the GPU).
Layout bench_layout(const std::string& rule, int users, int tokens) {
  Layout l;
  l.offsets.clear();
  l.offsets.push_back(0);
  for (int u = 0; u < users; ++u) {
    int n = 0, seg = 0;
    auto push = [&](int role, int count) {
      for (int i = 0; i < count && n < tokens; ++i, ++n) { l.segments.push_back(seg); l.roles.push_back((uint8_t)role); }
    };
    while (n < tokens) {
      if (rule == "rec2pm-update") { push(1, 4); push(0, 200); push(1, 4); }
      else { push(0, 200); push(1, 4); }
      ++seg;
    }
    l.offsets.push_back(l.offsets.back() + tokens);
  }
  return l;
}

double allowed_pairs(const MaskRule& rule, const Layout& l) {
  double allowed = 0;
  for (int b = 0; b < l.batch(); ++b) {
    const int64_t s = l.offsets[b];
    const int len = l.offsets[b + 1] - l.offsets[b];
    for (int i = 0; i < len; ++i) {
      int64_t row = 0;
      for (int j = 0; j < len; ++j)
        row += pair_allowed(rule, l.roles[s + i], l.roles[s + j], l.segments[s + i], l.segments[s + j], i, j);
      allowed += (double)row;
    }
  }
  return allowed;
}

void bench_attention(Context& ctx) {
  struct BShape { int users, tokens; };
  const std::vector<BShape> shapes = ctx.emulated ? std::vector<BShape>{{2, 64}} : std::vector<BShape>{{8, 1024}, {1, 4096}, {64, 2048}};
  const std::vector<DType> dtypes = ctx.emulated ? std::vector<DType>{kFloat32} : kDtypes;
  const int H = 4, D = 64;
  for (const auto& s : shapes) {
    const int64_t T = (int64_t)s.users * s.tokens;
    Rng rng(42);
    const auto qf = random_floats(rng, (size_t)T * H * D), kf = random_floats(rng, (size_t)T * H * D), vf = random_floats(rng, (size_t)T * H * D);
    for (const char* rule_name : {"causal", "persrec", "rec2pm-update"}) {
      const Preset* preset = nullptr;
      for (const auto& p : presets()) if (std::string(p.name) == rule_name) preset = &p;
      const Layout l = bench_layout(rule_name, s.users, s.tokens);
      const double allowed = allowed_pairs(preset->rule, l);
      for (DType dtype : dtypes) {
        const auto q = encode(qf, dtype), k = encode(kf, dtype), v = encode(vf, dtype);
        DevBuf dq(q.data(), q.size()), dk(k.data(), k.size()), dv(v.data(), v.size()), dout(q.size());
        AttentionParams p{};
        p.dtype = dtype; p.batch = s.users; p.tq = p.tk = T; p.heads = p.kv_heads = H; p.head_dim = p.value_dim = D;
        p.q_layout = p.kv_layout = l.view(); p.rule = preset->rule; p.scale = 0.125f; p.normalize = kSoftmax;
        p.max_q_len = p.max_k_len = s.tokens; p.silu_inv_divisor = 1.0f / s.tokens;
        p.q = dq.get(); p.k = dk.get(); p.v = dv.get(); p.out = dout.get(); p.lse = nullptr;
        BenchResult b;
        b.kernel = "masked_attention";
        b.shape = std::to_string(s.users) + "x" + std::to_string(s.tokens);
        b.rule = rule_name;
        b.dtype = dtype_name(dtype);
        b.path = "tiled (CUDA cores)";
        b.allowed_pairs = allowed;
        b.flops = allowed * H * (2.0 * D + 2.0 * D);
        b.bytes = 4.0 * (double)T * H * D * (double)dtype_size(dtype);  // q, k, v read once, out written once
        if (s.users == 64) b.note = "extra shape (fills the GPU), not in bench/attention.ts";
        finish_bench(b, time_op(ctx, [&] { must(cuda::masked_attention(p), "cuda::masked_attention"); }));
        ctx.record_bench(b);
      }
    }
  }
}

// ---------------------------------------------------------------- gather_rows

void check_gather(Context& ctx) {
  check_per_dtype(ctx, "gather_rows", {"copy", "blend"}, ctx.opt.size.repeat, 31u, 101u, [&](CheckResult& res, Rng& rng, DType dtype, int variant) {
    const bool blend = variant == 1;
    GatherParams p{};
    p.dtype = dtype;
    p.width = rng.pick(std::vector<int>{1, 7, 64, 300});
    const int sources = rng.range(1, kMaxGatherSources);
    std::vector<std::vector<unsigned char>> src((size_t)sources);
    std::vector<DevBuf> dsrc;
    for (int s = 0; s < sources; ++s) {
      p.source_rows[s] = rng.range(1, 4 * ctx.opt.size.max_len);
      src[(size_t)s] = encode(random_floats(rng, (size_t)(p.source_rows[s] * p.width)), dtype);
      dsrc.emplace_back(src[(size_t)s].data(), src[(size_t)s].size());
    }
    p.rows = rng.range(1, 4 * ctx.opt.size.max_len);
    p.dst_rows = p.rows + rng.range(0, 50);
    std::vector<int32_t> perm((size_t)p.dst_rows);
    std::iota(perm.begin(), perm.end(), 0);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.next() % i]);  // distinct destinations
    std::vector<uint8_t> sel((size_t)p.rows);
    std::vector<int32_t> src_row((size_t)p.rows), dst_row(perm.begin(), perm.begin() + p.rows);
    std::vector<float> alpha((size_t)p.rows);
    for (int64_t i = 0; i < p.rows; ++i) {
      sel[(size_t)i] = (uint8_t)rng.range(0, sources - 1);
      src_row[(size_t)i] = rng.range(0, (int)p.source_rows[sel[(size_t)i]] - 1);
      alpha[(size_t)i] = rng.chance(0.2) ? 1.0f : (float)(0.05 + 0.95 * rng.uniform());
    }
    p.src_sel = sel.data(); p.src_row = src_row.data(); p.dst_row = dst_row.data(); p.alpha = blend ? alpha.data() : nullptr;
    const auto dst0 = encode(random_floats(rng, (size_t)(p.dst_rows * p.width)), dtype);
    std::vector<unsigned char> dst_cpu = dst0;
    GatherParams pc = p;
    for (int s = 0; s < sources; ++s) pc.sources[s] = src[(size_t)s].data();
    pc.dst = dst_cpu.data();
    cpu::gather_rows(pc);
    DevBuf ddst(dst0.data(), dst0.size());
    GatherParams pg = p;
    for (int s = 0; s < sources; ++s) pg.sources[s] = dsrc[(size_t)s].get();
    pg.dst = ddst.get();
    must(cuda::gather_rows(pg), "cuda::gather_rows");
    const auto got = ddst.download();
    const size_t count = (size_t)(p.dst_rows * p.width);
    merge(res, agree(decode(got.data(), count, dtype), decode(dst_cpu.data(), count, dtype), tolerance(dtype), "dst"));
  });
}

// bench/memory-bank.ts: 4,096 users x 4 slots x 64 (one update call); plus 1M rows x 256 for bandwidth.
void bench_gather(Context& ctx) {
  struct GShape { int64_t rows; int width; };
  const std::vector<GShape> shapes = ctx.emulated ? std::vector<GShape>{{256, 64}} : std::vector<GShape>{{16384, 64}, {1 << 20, 256}};
  for (const auto& s : shapes)
    for (DType dtype : ctx.emulated ? std::vector<DType>{kFloat32} : std::vector<DType>{kFloat32, kBFloat16})
      for (bool blend : {false, true}) {
        Rng rng(7);
        const size_t es = dtype_size(dtype), bytes = (size_t)s.rows * s.width * es;
        const auto src = encode(random_floats(rng, (size_t)s.rows * s.width), dtype);
        DevBuf dsrc(src.data(), bytes), ddst(src.data(), bytes);
        std::vector<uint8_t> sel((size_t)s.rows, 0);
        std::vector<int32_t> rows((size_t)s.rows);
        std::iota(rows.begin(), rows.end(), 0);
        for (size_t i = rows.size(); i > 1; --i) std::swap(rows[i - 1], rows[rng.next() % i]);
        std::vector<float> alpha((size_t)s.rows, 0.5f);
        GatherParams p{};
        p.dtype = dtype; p.width = s.width; p.sources[0] = dsrc.get(); p.source_rows[0] = s.rows; p.dst = ddst.get(); p.dst_rows = s.rows;
        p.rows = s.rows; p.src_sel = sel.data(); p.src_row = rows.data(); p.dst_row = rows.data(); p.alpha = blend ? alpha.data() : nullptr;
        BenchResult b;
        b.kernel = "gather_rows";
        b.shape = std::to_string(s.rows) + "x" + std::to_string(s.width);
        b.rule = blend ? "blend" : "copy";
        b.dtype = dtype_name(dtype);
        b.bytes = (blend ? 3.0 : 2.0) * (double)bytes;
        if (s.rows == 16384) b.note = "bench/memory-bank.ts: 4,096 users x 4 slots x 64";
        finish_bench(b, time_op(ctx, [&] { must(cuda::gather_rows(p), "cuda::gather_rows"); }));
        ctx.record_bench(b);
      }
}

// ---------------------------------------------------------------- sparse ops: shared inputs

struct SparseInputs {
  std::vector<int32_t> q_off, k_off;
  int batch = 0, max_len = 0;
  int64_t nq = 0, tk = 0;
  int hi = 1, di = 8, heads = 1, kv_heads = 1, head_dim = 16, value_dim = 16;
  DType dtype = kFloat32;
  std::vector<unsigned char> qi, ki, w, q, k, v;
};

SparseInputs sparse_inputs(Rng& rng, DType dtype, const std::vector<int>& q_lens, const std::vector<int>& k_lens, int hi, int di, int heads,
                           int kv_heads, int head_dim, int value_dim) {
  SparseInputs s;
  s.dtype = dtype;
  s.q_off = offsets_of(q_lens);
  s.k_off = offsets_of(k_lens);
  s.batch = (int)q_lens.size();
  s.nq = s.q_off.back();
  s.tk = s.k_off.back();
  for (int l : k_lens) s.max_len = std::max(s.max_len, l);
  s.hi = hi; s.di = di; s.heads = heads; s.kv_heads = kv_heads; s.head_dim = head_dim; s.value_dim = value_dim;
  s.qi = encode(random_floats(rng, (size_t)s.nq * hi * di), dtype);
  s.ki = encode(random_floats(rng, (size_t)s.tk * di), dtype);
  s.w = encode(random_floats(rng, (size_t)s.nq * hi), dtype);
  s.q = encode(random_floats(rng, (size_t)s.nq * heads * head_dim), dtype);
  s.k = encode(random_floats(rng, (size_t)s.tk * kv_heads * head_dim), dtype);
  s.v = encode(random_floats(rng, (size_t)s.tk * kv_heads * value_dim), dtype);
  return s;
}

IndexerParams indexer_params(const SparseInputs& s, const void* qi, const void* ki, const void* w, float* scores) {
  IndexerParams p{};
  p.q = qi; p.k = ki; p.w = w; p.scores = scores; p.dtype = s.dtype; p.batch = s.batch; p.nq = s.nq; p.tk = s.tk;
  p.heads = s.hi; p.dim = s.di; p.q_offsets = s.q_off.data(); p.k_offsets = s.k_off.data(); p.max_len = s.max_len;
  return p;
}

SparseParams sparse_params(const SparseInputs& s, const void* q, const void* k, const void* v, void* out, float* lse, const int32_t* idx, int top_k) {
  SparseParams p{};
  p.q = q; p.k = k; p.v = v; p.out = out; p.lse = lse; p.indices = idx; p.dtype = s.dtype; p.batch = s.batch; p.nq = s.nq; p.tk = s.tk;
  p.heads = s.heads; p.kv_heads = s.kv_heads; p.head_dim = s.head_dim; p.value_dim = s.value_dim; p.top_k = top_k;
  p.q_offsets = s.q_off.data(); p.k_offsets = s.k_off.data(); p.scale = 1.0f / std::sqrt((float)s.head_dim);
  return p;
}

// Device copies of a SparseInputs' tensors.
struct SparseDevice {
  DevBuf qi, ki, w, q, k, v;
  explicit SparseDevice(const SparseInputs& s)
      : qi(s.qi.data(), s.qi.size()), ki(s.ki.data(), s.ki.size()), w(s.w.data(), s.w.size()), q(s.q.data(), s.q.size()),
        k(s.k.data(), s.k.size()), v(s.v.data(), s.v.size()) {}
};

std::vector<float> cpu_scores(const SparseInputs& s) {
  std::vector<float> scores((size_t)s.nq * std::max(1, s.max_len));
  if (s.nq && s.max_len) cpu::indexer_scores(indexer_params(s, s.qi.data(), s.ki.data(), s.w.data(), scores.data()));
  return scores;
}

// ---------------------------------------------------------------- indexer_scores

Agreement indexer_agree(const SparseInputs& s, const SparseDevice& d) {
  const std::vector<float> ref = cpu_scores(s);
  DevBuf dscores(ref.size() * 4);
  dscores.poison();
  must(cuda::indexer_scores(indexer_params(s, d.qi.get(), d.ki.get(), d.w.get(), static_cast<float*>(dscores.get()))), "cuda::indexer_scores");
  const auto got = dscores.download();
  const size_t n = (size_t)s.nq * s.max_len;  // the scratch row when max_len = 0 is never written
  return agree(decode(got.data(), n, kFloat32), std::vector<float>(ref.begin(), ref.begin() + (ptrdiff_t)n), 1e-5f, "scores");
}

void check_indexer(Context& ctx) {
  check_per_dtype(ctx, "indexer_scores", {"jagged"}, 2 * ctx.opt.size.repeat, 17u, 1009u, [&](CheckResult& res, Rng& rng, DType dtype, int) {
    const int batch = rng.range(1, ctx.opt.size.max_batch);
    std::vector<int> ql((size_t)batch), kl((size_t)batch);
    for (int b = 0; b < batch; ++b) {
      ql[(size_t)b] = rng.pick(std::vector<int>{0, 1, rng.range(2, 9)});
      kl[(size_t)b] = rng.pick(std::vector<int>{0, 1, 5, 127, 128, 129, rng.range(1, 3 * ctx.opt.size.max_len)});
    }
    const SparseInputs s = sparse_inputs(rng, dtype, ql, kl, rng.pick(std::vector<int>{1, 2, 4, 8}), rng.pick(std::vector<int>{8, 20, 32, 64}), 1, 1, 8, 8);
    const SparseDevice d(s);
    merge(res, indexer_agree(s, d));
  });
}

// ---------------------------------------------------------------- top_k

void check_topk(Context& ctx) {
  const std::vector<int> col_choices = ctx.opt.size.max_len >= 300 ? std::vector<int>{1, 17, 300, 2000, 5000} : std::vector<int>{1, 17, 300};
  for (int variant = 0; variant < 2; ++variant) {
    CheckResult r;
    r.kernel = "top_k";
    r.name = variant ? "with lengths" : "whole rows";
    r.dtype = "float32";
    timed_check(ctx, r, [&](CheckResult& res) {
      for (int rep = 0; rep < 3 * ctx.opt.size.repeat; ++rep) {
        Rng rng(ctx.opt.seed * 13u + (uint64_t)variant * 7u + (uint64_t)rep);
        const int rows = rng.range(1, 12), cols = rng.pick(col_choices);
        std::vector<float> scores((size_t)rows * cols);
        for (int i = 0; i < rows; ++i) {
          float* row = scores.data() + (size_t)i * cols;
          const int kind = i % 6;
          for (int j = 0; j < cols; ++j) {
            switch (kind) {
              case 0: row[j] = (float)(rng.uniform() * 2 - 1); break;                                   // random
              case 1: row[j] = 1.5f; break;                                                              // all tied
              case 2: row[j] = (float)(j % 7 == 0 ? 2 : j % 3); break;                                   // ties at the threshold
              case 3: row[j] = j % 4 == 0 ? NAN : j % 4 == 1 ? -INFINITY : j % 4 == 2 ? INFINITY : -(float)j; break;
              case 4: row[j] = 1.0f + (float)j * 1.1920929e-7f * (float)((j * 37) % 5); break;          // low bits only
              default: row[j] = j < 5 ? (float)j : NAN; break;                                          // few candidates
            }
          }
        }
        const int k = std::min(2048, rng.pick(std::vector<int>{1, 7, 64, cols, cols + 3}));
        std::vector<int32_t> lengths((size_t)rows);
        for (auto& l : lengths) l = rng.range(0, cols);
        TopKParams p{};
        p.rows = rows; p.cols = cols; p.k = k; p.lengths = variant ? lengths.data() : nullptr;
        std::vector<int32_t> idx_cpu((size_t)rows * k);
        std::vector<float> val_cpu((size_t)rows * k);
        TopKParams pc = p;
        pc.scores = scores.data(); pc.indices = idx_cpu.data(); pc.values = val_cpu.data();
        cpu::top_k(pc);
        DevBuf ds(scores.data(), scores.size() * 4), di(idx_cpu.size() * 4), dvals(val_cpu.size() * 4);
        di.poison();
        dvals.poison();
        TopKParams pg = p;
        pg.scores = static_cast<const float*>(ds.get()); pg.indices = static_cast<int32_t*>(di.get()); pg.values = static_cast<float*>(dvals.get());
        must(cuda::top_k(pg), "cuda::top_k");
        const auto gi = di.download(), gv = dvals.download();
        for (size_t i = 0; i < idx_cpu.size() && res.ok; ++i) {
          int32_t g;
          float v;
          std::memcpy(&g, gi.data() + 4 * i, 4);
          std::memcpy(&v, gv.data() + 4 * i, 4);
          // Equal, or a different index of exactly the same value (SPEC §7: ties).
          const bool same_value = v == val_cpu[i] || (std::isnan(v) && std::isnan(val_cpu[i]));
          if ((g != idx_cpu[i] && !(g >= 0 && idx_cpu[i] >= 0 && same_value)) || !same_value) {
            char buf[200];
            std::snprintf(buf, sizeof buf, "rows %d cols %d k %d: slot %zu index %d value %g, cpu index %d value %g", rows, cols, k, i, g, (double)v,
                          idx_cpu[i], (double)val_cpu[i]);
            res.ok = false;
            res.detail = buf;
          }
        }
      }
    });
  }
}

// ---------------------------------------------------------------- sparse_attention

SparseInputs random_sparse(Rng& rng, DType dtype, const Size& size, int max_keys) {
  const int batch = rng.range(1, size.max_batch);
  std::vector<int> ql((size_t)batch), kl((size_t)batch);
  for (int b = 0; b < batch; ++b) {
    ql[(size_t)b] = rng.pick(std::vector<int>{0, 1, rng.range(2, 9)});
    kl[(size_t)b] = rng.pick(std::vector<int>{0, 1, 5, rng.range(1, max_keys), rng.range(1, max_keys)});
  }
  const int kv = rng.pick(std::vector<int>{1, 2, 3});
  const int heads = kv * rng.pick(std::vector<int>{1, 2, 4});
  return sparse_inputs(rng, dtype, ql, kl, rng.pick(std::vector<int>{1, 2, 4}), rng.pick(std::vector<int>{8, 32, 64}), heads, kv,
                       rng.pick(std::vector<int>{8, 16, 64, 128}), rng.pick(std::vector<int>{8, 32, 128, 256}));
}

// CPU sparse attention over `idx` [nq, top_k] (the oracle for GPU outputs).
void cpu_sparse(const SparseInputs& s, const std::vector<int32_t>& idx, int top_k, std::vector<unsigned char>& out, std::vector<float>* lse) {
  out.assign((size_t)s.nq * s.heads * s.value_dim * dtype_size(s.dtype), 0);
  if (lse) lse->assign((size_t)s.nq * s.heads, 0.0f);
  cpu::sparse_attention(sparse_params(s, s.q.data(), s.k.data(), s.v.data(), out.data(), lse ? lse->data() : nullptr, idx.data(), top_k));
}

void check_sparse(Context& ctx) {
  check_per_dtype(ctx, "sparse_attention", {"GQA, Dv != D, duplicates and -1, lse"}, 2 * ctx.opt.size.repeat, 19u, 211u,
                  [&](CheckResult& res, Rng& rng, DType dtype, int) {
    const SparseInputs s = random_sparse(rng, dtype, ctx.opt.size, 3 * ctx.opt.size.max_len);
    const int top_k = rng.pick(std::vector<int>{1, 16, 37, 300});
    std::vector<int32_t> idx((size_t)s.nq * top_k);
    for (int b = 0; b < s.batch; ++b) {
      const int len = s.k_off[b + 1] - s.k_off[b];
      for (int64_t i = s.q_off[b]; i < s.q_off[b + 1]; ++i)
        for (int j = 0; j < top_k; ++j) idx[(size_t)(i * top_k + j)] = len == 0 || rng.chance(0.15) ? -1 : rng.range(0, len - 1);  // repeats happen
    }
    std::vector<unsigned char> out_cpu;
    std::vector<float> lse_cpu;
    cpu_sparse(s, idx, top_k, out_cpu, &lse_cpu);
    const SparseDevice d(s);
    DevBuf dout(out_cpu.size()), dlse(lse_cpu.size() * 4);
    dout.poison();
    dlse.poison();
    must(cuda::sparse_attention(sparse_params(s, d.q.get(), d.k.get(), d.v.get(), dout.get(), static_cast<float*>(dlse.get()), idx.data(), top_k)),
         "cuda::sparse_attention");
    const size_t n_out = (size_t)s.nq * s.heads * s.value_dim;
    merge(res, agree(decode(dout.download().data(), n_out, dtype), decode(out_cpu.data(), n_out, dtype), tolerance(dtype), "output"));
    merge(res, agree(decode(dlse.download().data(), lse_cpu.size(), kFloat32), lse_cpu, tolerance(dtype), "lse"));
  });
}

// ---------------------------------------------------------------- indexed_cross_attention

// The GPU's choice, checked as SPEC §7 allows: each chosen value is the CPU indexer's score of the
// chosen key (so a different key only where scores are near-equal), the values slot by slot match
// the CPU's selection, and the output is the CPU's sparse attention over the GPU's chosen keys.
// The CPU's answer for one indexedCrossAttention case.
struct IcaRef {
  int top_k = 0;
  std::vector<float> scores;  // the CPU indexer's [nq, max_len]
  std::vector<int32_t> indices;
  std::vector<float> values;
  std::vector<unsigned char> out;
};

IcaRef ica_cpu(const SparseInputs& s, int top_k) {
  IcaRef r;
  r.top_k = top_k;
  r.scores = cpu_scores(s);
  r.indices.resize((size_t)s.nq * top_k);
  r.values.resize(r.indices.size());
  r.out.resize((size_t)s.nq * s.heads * s.value_dim * dtype_size(s.dtype));
  IndexerParams ip = indexer_params(s, s.qi.data(), s.ki.data(), s.w.data(), nullptr);
  SparseParams sp = sparse_params(s, s.q.data(), s.k.data(), s.v.data(), r.out.data(), nullptr, nullptr, top_k);
  TopKParams tp{};
  tp.rows = s.nq; tp.cols = s.max_len; tp.k = top_k; tp.indices = r.indices.data(); tp.values = r.values.data();
  cpu::indexed_cross_attention(ip, tp, sp);
  return r;
}

// The GPU's choice, checked as SPEC §7 allows: each chosen value is the CPU indexer's score of the
// chosen key (so a different key only where scores are near-equal), the values slot by slot match
// the CPU's selection, and the output is the CPU's sparse attention over the GPU's chosen keys (the
// CPU's own output when the choice is the same: no CPU work then, for the threaded check).
void ica_gpu(CheckResult& res, const SparseInputs& s, const SparseDevice& d, const IcaRef& ref) {
  const int top_k = ref.top_k;
  DevBuf dout(ref.out.size()), didx(ref.indices.size() * 4), dval(ref.values.size() * 4);
  dout.poison();
  didx.poison();
  dval.poison();
  IndexerParams ipg = indexer_params(s, d.qi.get(), d.ki.get(), d.w.get(), nullptr);
  SparseParams spg = sparse_params(s, d.q.get(), d.k.get(), d.v.get(), dout.get(), nullptr, nullptr, top_k);
  TopKParams tpg{};
  tpg.rows = s.nq; tpg.cols = s.max_len; tpg.k = top_k;
  tpg.indices = static_cast<int32_t*>(didx.get());
  tpg.values = static_cast<float*>(dval.get());
  must(cuda::indexed_cross_attention(ipg, tpg, spg), "cuda::indexed_cross_attention");
  const auto gi_bytes = didx.download();
  std::vector<int32_t> gi(ref.indices.size());
  if (!gi.empty()) std::memcpy(gi.data(), gi_bytes.data(), gi.size() * 4);
  const std::vector<float> gv = decode(dval.download().data(), ref.values.size(), kFloat32);
  std::vector<float> chosen(gv.size());
  for (int b = 0; b < s.batch && res.ok; ++b) {
    const int len = s.k_off[b + 1] - s.k_off[b];
    for (int64_t i = s.q_off[b]; i < s.q_off[b + 1]; ++i)
      for (int j = 0; j < top_k; ++j) {
        const size_t at = (size_t)(i * top_k + j);
        const int32_t g = gi[at];
        if (g < -1 || g >= len) {
          res.ok = false;
          res.detail = "index " + std::to_string(g) + " outside [-1, " + std::to_string(len) + ") at row " + std::to_string(i);
          return;
        }
        chosen[at] = g >= 0 ? ref.scores[(size_t)i * s.max_len + g] : -INFINITY;
      }
  }
  merge(res, agree(gv, chosen, 1e-5f, "chosen values vs cpu scores of the chosen keys"));
  merge(res, agree(gv, ref.values, 1e-5f, "selected values vs cpu selection"));
  std::vector<unsigned char> out_ref;
  if (gi != ref.indices) cpu_sparse(s, gi, top_k, out_ref, nullptr);
  const std::vector<unsigned char>& want = gi == ref.indices ? ref.out : out_ref;
  const size_t n_out = (size_t)s.nq * s.heads * s.value_dim;
  merge(res, agree(decode(dout.download().data(), n_out, s.dtype), decode(want.data(), n_out, s.dtype), tolerance(s.dtype), "output"));
}

void ica_agree(CheckResult& res, const SparseInputs& s, int top_k) {
  const IcaRef ref = ica_cpu(s, top_k);
  const SparseDevice d(s);
  ica_gpu(res, s, d, ref);
}

void check_ica(Context& ctx) {
  check_per_dtype(ctx, "indexed_cross_attention", {"fused", "unfused (topK > 512)"}, 2 * ctx.opt.size.repeat, 23u, 331u,
                  [&](CheckResult& res, Rng& rng, DType dtype, int variant) {
    const SparseInputs s = random_sparse(rng, dtype, ctx.opt.size, 3 * ctx.opt.size.max_len);
    const int top_k = variant ? rng.pick(std::vector<int>{513, 700}) : rng.pick(std::vector<int>{1, 16, 37, 256});
    ica_agree(res, s, top_k);
  });
  // Rows longer than the fused kernel's 16,384 keys: the unfused path (medium and large sizes).
  if (ctx.opt.size.max_len >= 300) {
    CheckResult r;
    r.kernel = "indexed_cross_attention";
    r.name = "unfused (rows of 16,384 / 20,000 keys)";
    r.dtype = "float32";
    timed_check(ctx, r, [&](CheckResult& res) {
      Rng rng(ctx.opt.seed * 29u);
      ica_agree(res, sparse_inputs(rng, kFloat32, {2, 3}, {16384, 20000}, 2, 32, 2, 1, 64, 64), 64);
      ica_agree(res, sparse_inputs(rng, kFloat32, {3}, {16384}, 2, 32, 2, 2, 32, 32), 128);
    });
  }
}

// indexer_scores over every key of s (Hi x Di per query), into `scores`.
void bench_indexer(Context& ctx, const SparseInputs& s, const SparseDevice& d, DevBuf& scores, const std::string& shape) {
  BenchResult b;
  b.kernel = "indexer_scores";
  b.shape = shape;
  b.dtype = dtype_name(s.dtype);
  const double es = (double)dtype_size(s.dtype);
  b.flops = (double)s.nq * 2.0 * s.hi * s.di * s.max_len;
  b.bytes = es * ((double)s.tk * s.di + (double)s.nq * s.hi * (s.di + 1)) + 4.0 * (double)s.nq * s.max_len;
  const IndexerParams ip = indexer_params(s, d.qi.get(), d.ki.get(), d.w.get(), static_cast<float*>(scores.get()));
  finish_bench(b, time_op(ctx, [&] { must(cuda::indexer_scores(ip), "cuda::indexer_scores"); }));
  ctx.record_bench(b);
}

// The DeepSeek-V3.2 (DSA) shape of issue #11: indexer 64 heads x 128 over 100,000 keys (the
// tensor-core indexer for bfloat16), top-k 2,048 of those rows (radix select), and sparse attention
// over the 2,048 with one kv head shared by 16 query heads of 128 (the head-batched gathers).
void bench_sparse_deepseek(Context& ctx) {
  const int queries = ctx.emulated ? 2 : 64, keys = ctx.emulated ? 3000 : 100000, HI = 64, DI = 128, H = 16, D = 128, topk = 2048;
  const DType dtype = kBFloat16;
  Rng rng(6);
  const SparseInputs s = sparse_inputs(rng, dtype, {queries}, {keys}, HI, DI, H, 1, D, D);
  const SparseDevice d(s);
  const double es = (double)dtype_size(dtype);
  const int selected = std::min(topk, keys);
  DevBuf scores((size_t)s.nq * keys * 4), out((size_t)s.nq * H * D * (size_t)es);
  DevBuf idx((size_t)s.nq * topk * 4), vals((size_t)s.nq * topk * 4);
  const std::string shape = "deepseek " + std::to_string(queries) + "q keys=" + std::to_string(keys);
  bench_indexer(ctx, s, d, scores, shape);
  TopKParams tp{};
  tp.rows = s.nq; tp.cols = keys; tp.k = topk; tp.scores = static_cast<const float*>(scores.get());
  tp.indices = static_cast<int32_t*>(idx.get()); tp.values = static_cast<float*>(vals.get());
  {
    BenchResult b;
    b.kernel = "top_k";
    b.shape = shape;
    b.rule = "topK=2048";
    b.dtype = "float32";
    b.bytes = 4.0 * (double)s.nq * keys + 8.0 * (double)s.nq * topk;
    finish_bench(b, time_op(ctx, [&] { must(cuda::top_k(tp), "cuda::top_k"); }));
    ctx.record_bench(b);
  }
  {
    std::vector<int32_t> host_idx((size_t)s.nq * topk);
    must(cuda::top_k(tp), "cuda::top_k");
    must(cuda::copy_to_host(host_idx.data(), idx.get(), host_idx.size() * 4), "download indices");
    BenchResult b;
    b.kernel = "sparse_attention";
    b.shape = shape + " H=16 Hkv=1";
    b.rule = "topK=2048";
    b.dtype = dtype_name(dtype);
    b.flops = (double)s.nq * 2.0 * H * (D + D) * selected;
    // q and out once, each selected K / V row once per (query, kv head): the head-batched gather
    b.bytes = es * (2.0 * (double)s.nq * H * D + (double)s.nq * selected * (D + D));
    const SparseParams sp = sparse_params(s, d.q.get(), d.k.get(), d.v.get(), out.get(), nullptr, host_idx.data(), topk);
    finish_bench(b, time_op(ctx, [&] { must(cuda::sparse_attention(sp), "cuda::sparse_attention"); }));
    ctx.record_bench(b);
  }
}

// bench/sparse.ts: 64 users x 4 queries, H = 8, D = 64, indexer Hi = 2, Di = 64; 1k / 5k / 20k keys;
// top-k 256 / 1,024: the fused op (or its unfused fallback) and the three steps.
void bench_sparse(Context& ctx) {
  const int users = ctx.emulated ? 2 : 64, queries = ctx.emulated ? 2 : 4, H = 8, D = 64, HI = 2, DI = 64;
  const std::vector<int> key_counts = ctx.emulated ? std::vector<int>{300} : std::vector<int>{1000, 5000, 20000};
  const std::vector<int> topks = ctx.emulated ? std::vector<int>{16, 600} : std::vector<int>{256, 1024};
  for (DType dtype : ctx.emulated ? std::vector<DType>{kFloat32} : std::vector<DType>{kFloat32, kBFloat16})
    for (int keys : key_counts) {
      Rng rng(5);
      const SparseInputs s = sparse_inputs(rng, dtype, std::vector<int>((size_t)users, queries), std::vector<int>((size_t)users, keys), HI, DI, H, H, D, D);
      const SparseDevice d(s);
      const double es = (double)dtype_size(dtype);
      DevBuf scores((size_t)s.nq * keys * 4), out((size_t)s.nq * H * D * (size_t)es);
      const std::string shape = std::to_string(users) + "x" + std::to_string(queries) + " keys=" + std::to_string(keys);
      bench_indexer(ctx, s, d, scores, shape);
      for (int topk : topks) {
        const int selected = std::min(topk, keys);
        DevBuf idx((size_t)s.nq * topk * 4), vals((size_t)s.nq * topk * 4);
        TopKParams tp{};
        tp.rows = s.nq; tp.cols = keys; tp.k = topk; tp.scores = static_cast<const float*>(scores.get());
        tp.indices = static_cast<int32_t*>(idx.get()); tp.values = static_cast<float*>(vals.get());
        const std::string topk_rule = "topK=" + std::to_string(topk);
        {
          BenchResult b;
          b.kernel = "top_k";
          b.shape = shape;
          b.rule = topk_rule;
          b.dtype = "float32";
          b.bytes = 4.0 * (double)s.nq * keys + 8.0 * (double)s.nq * topk;
          finish_bench(b, time_op(ctx, [&] { must(cuda::top_k(tp), "cuda::top_k"); }));
          ctx.record_bench(b);
        }
        const double attend_flops = (double)s.nq * 2.0 * H * (D + D) * selected;
        const double attend_bytes = es * ((double)s.nq * H * (D + D) + (double)s.nq * selected * H * (D + D));
        {
          // Host indices for the backend (it uploads them): the top-k's own choice.
          std::vector<int32_t> host_idx((size_t)s.nq * topk);
          must(cuda::top_k(tp), "cuda::top_k");
          must(cuda::copy_to_host(host_idx.data(), idx.get(), host_idx.size() * 4), "download indices");
          BenchResult b;
          b.kernel = "sparse_attention";
          b.shape = shape;
          b.rule = topk_rule;
          b.dtype = dtype_name(dtype);
          b.flops = attend_flops;
          b.bytes = attend_bytes;
          const SparseParams sp = sparse_params(s, d.q.get(), d.k.get(), d.v.get(), out.get(), nullptr, host_idx.data(), topk);
          finish_bench(b, time_op(ctx, [&] { must(cuda::sparse_attention(sp), "cuda::sparse_attention"); }));
          ctx.record_bench(b);
        }
        {
          BenchResult b;
          b.kernel = "indexed_cross_attention";
          b.shape = shape;
          b.rule = topk_rule;
          b.dtype = dtype_name(dtype);
          b.path = topk <= 512 && keys <= 16384 ? "fused" : "unfused";
          // bench/sparse.ts: the indexer over every key plus attention over the selected keys; bytes:
          // every indexer key once and each query's selected K and V rows.
          b.flops = (double)s.nq * 2.0 * HI * DI * keys + attend_flops;
          b.bytes = es * ((double)s.tk * DI + (double)s.nq * selected * H * (D + D));
          const IndexerParams ip = indexer_params(s, d.qi.get(), d.ki.get(), d.w.get(), nullptr);
          const SparseParams sp = sparse_params(s, d.q.get(), d.k.get(), d.v.get(), out.get(), nullptr, nullptr, topk);
          finish_bench(b, time_op(ctx, [&] { must(cuda::indexed_cross_attention(ip, tp, sp), "cuda::indexed_cross_attention"); }));
          ctx.record_bench(b);
        }
      }
    }
  bench_sparse_deepseek(ctx);
}

}  // namespace

const std::vector<Kernel>& kernels() {
  static const std::vector<Kernel> list = {
      {"masked_attention", "every preset + a random rule, GQA, Dv != D, f32/f16/bf16, softmax/silu, lse, self and cross", check_attention, bench_attention},
      {"gather_rows", "copy and blend from 1-3 sources, widths 1-300", check_gather, bench_gather},
      {"indexer_scores", "jagged, key counts around the 128-key tiles", check_indexer, nullptr},
      {"top_k", "ties, NaN, +-Inf, low bits, short rows, with / without lengths", check_topk, nullptr},
      {"sparse_attention", "GQA, Dv != D, duplicates and -1, lse", check_sparse, bench_sparse},
      {"indexed_cross_attention", "fused and unfused paths", check_ica, nullptr},
  };
  return list;
}

// ---------------------------------------------------------------- host hazards (issue #9 part 4)

void run_faults(Context& ctx) {
  auto fault = [&](const char* name, const std::function<void(CheckResult&)>& body) {
    CheckResult r;
    r.kernel = "host";
    r.name = name;
    ctx.record_fault(run_timed(std::move(r), body));
  };
  // A small op whose result is known: the next op after a failure must run clean.
  auto small_op = [](CheckResult& r) {
    Rng rng(3);
    const SparseInputs s = sparse_inputs(rng, kFloat32, {3, 2}, {4, 5}, 1, 8, 1, 1, 8, 8);
    const SparseDevice d(s);
    merge(r, indexer_agree(s, d));
  };
  fault("failed allocation (1 PiB) leaves no error behind", [&](CheckResult& r) {
    void* p = nullptr;
    const std::string err = cuda::alloc((size_t)1 << 50, &p);
    if (err.empty()) { cuda::release(p); r.ok = false; r.detail = "a 1 PiB allocation succeeded"; return; }
    if (last_error_pending()) { r.ok = false; r.detail = "cudaPeekAtLastError still set after: " + err; return; }
    r.detail = err;
    small_op(r);
  });
  fault("stale error from the caller's own CUDA call is not the next op's", [&](CheckResult& r) {
    if (!inject_stale_error()) { r.detail = "could not leave an error pending (nothing to check)"; return; }
    small_op(r);
  });
  fault("indexer_scores with 70,000 queries (grid.y limit 65,535)", [&](CheckResult& r) {
    Rng rng(70000);
    const SparseInputs s = sparse_inputs(rng, kFloat32, {30000, 0, 40000}, {5, 3, 9}, 2, 8, 1, 1, 8, 8);
    const SparseDevice d(s);
    merge(r, indexer_agree(s, d));
  });
  fault("indexed_cross_attention, unfused, 70,000 queries", [&](CheckResult& r) {
    if (ctx.emulated && std::string(ctx.opt.size.name) == "small") { r.detail = "skipped on the emulator at --size small (test/cuda-host.test.ts runs it)"; return; }
    Rng rng(513);
    ica_agree(r, sparse_inputs(rng, kFloat32, {62000, 0, 8000}, {0, 7, 12}, 1, 8, 2, 2, 8, 8), 513);
  });
  fault("unfused scratch in chunks (4,096 queries x 20,000 keys = 328 MB of scores)", [&](CheckResult& r) {
    if (ctx.emulated) { r.detail = "skipped on the emulator (too slow)"; return; }
    Rng rng(4096);
    ica_agree(r, sparse_inputs(rng, kFloat32, {4096}, {20000}, 2, 16, 2, 1, 16, 16), 64);
  });
  fault("fused kernel from 4 threads at once, different shared-memory sizes", [&](CheckResult& r) {
    // The dynamic shared-memory limit used to be set per call: a concurrent call with a smaller
    // row could lower it between another call's set and launch. Four threads, four row lengths.
    // (A smoke test on the emulator, whose window between set and launch is too narrow to hit: the
    // old per-call code passed it there in 3 tries; on a GPU each thread launches 200 times.)
    // Two rows above 12,288 keys (48 KiB of scores, the default limit), two below.
    const std::vector<int> lens = {100, 3000, 13000, 16384};
    // The CPU answers first: the threads then only launch, download and compare, many times over.
    std::vector<SparseInputs> ins;
    std::vector<IcaRef> refs;
    std::vector<std::unique_ptr<SparseDevice>> devs;
    for (size_t i = 0; i < lens.size(); ++i) {
      Rng rng(900 + i);
      ins.push_back(sparse_inputs(rng, kFloat32, {1}, {lens[i]}, 1, 8, 1, 1, 8, 8));
      refs.push_back(ica_cpu(ins.back(), 8));
      devs.push_back(std::make_unique<SparseDevice>(ins.back()));
    }
    const int reps = ctx.emulated ? 30 : 200;
    std::vector<CheckResult> per(lens.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < lens.size(); ++i)
      threads.emplace_back([&, i] {
        try {
          for (int rep = 0; rep < reps && per[i].ok; ++rep) ica_gpu(per[i], ins[i], *devs[i], refs[i]);
        } catch (const std::exception& e) {
          per[i].ok = false;
          per[i].detail = e.what();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& p : per)
      if (!p.ok && r.ok) { r.ok = false; r.detail = p.detail; }
  });
}

}  // namespace lk::check
