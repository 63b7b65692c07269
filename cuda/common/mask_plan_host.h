// Host side of mask plans (mask_plan.h), shared by the CPU and CUDA builders: the plan object the
// binding holds (layouts, rule, one built geometry per pair of tile sizes the kernels asked for) and
// the ordering step that turns per-query-tile counts into run offsets, the work order and the
// split-KV groups. Plain C++.
#pragma once
#include <stdint.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mask_plan.h"

namespace lk {

// What a built geometry holds, for tests and the README's tables (plan.stats() in TypeScript).
struct PlanStats {
  int block_m = 0, block_n = 0;
  int64_t query_tiles = 0;    // real query tiles of the batch
  int64_t full_tiles = 0;     // listed (query tile, key tile) pairs walked without checks
  int64_t partial_tiles = 0;  // listed pairs checked per element
  int64_t runs = 0;           // key runs stored
  int64_t work_items = 0;     // blocks per head of the attention launch
  int64_t split_tiles = 0;    // query tiles computed split-KV
  int64_t split_items = 0;    // work items writing partials
};

// The inputs of a plan: the layouts (host arrays) and the rule.
struct PlanInputs {
  int batch = 0;
  int64_t tq = 0, tk = 0;
  LayoutView q{nullptr, nullptr, nullptr}, kv{nullptr, nullptr, nullptr};
  MaskRule rule{};
};

// The plan inputs of one call's arguments (a call without a MaskPlan builds a plan of its own).
inline PlanInputs plan_inputs_of(const AttentionParams& p) { return PlanInputs{p.batch, p.tq, p.tk, p.q_layout, p.kv_layout, p.rule}; }

// One geometry's built plan; the CPU and CUDA builders derive their own (host vectors, device memory).
struct PlanGeometry {
  virtual ~PlanGeometry() = default;
  PlanStats stats;
  // The stats as known now: a geometry built on a device learns its counts when the build has
  // executed (false until then: stats() leaves it out).
  virtual bool stats_now(PlanStats* out) const {
    *out = stats;
    return true;
  }
};

// A MaskPlan: inputs plus the geometries built so far. Geometries are added, never removed, so a
// pointer from find() stays valid as long as the state lives (ops hold it through a shared_ptr).
class PlanState {
 public:
  PlanInputs in;
  std::shared_ptr<const void> keep;  // owns the arrays `in` points to
  bool on_cuda = false;

  PlanGeometry* find(int block_m, int block_n) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& g : geometries_)
      if (g->stats.block_m == block_m && g->stats.block_n == block_n) return g.get();
    return nullptr;
  }
  PlanGeometry* add(std::unique_ptr<PlanGeometry> g) {
    std::lock_guard<std::mutex> lock(mu_);
    geometries_.push_back(std::move(g));
    return geometries_.back().get();
  }
  std::vector<PlanStats> stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<PlanStats> out;
    for (const auto& g : geometries_) {
      PlanStats s;
      if (g->stats_now(&s)) out.push_back(s);
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<PlanGeometry>> geometries_;
};

// What the host decides from the counts.
struct PlanOrder {
  std::vector<int32_t> run_start;  // [query tiles + 1]: query tile i's runs are [run_start[i], run_start[i + 1])
  std::vector<PlanWork> work;      // heaviest first
  std::vector<PlanCombine> combine;
  int32_t slots = 0;
  PlanStats stats;
};

// Orders the work of one geometry. counts[i] belongs to query tile i (q_base: tile_plan.h). With
// split_tiles > 0, a sequence of at most kSplitRows queries whose listed key tiles span more than
// split_tiles tiles becomes one item per window of split_tiles key tiles (split-KV). Cost of an item:
// mask_plan.h (query_tile_cost; a split piece, its window); ties keep (sequence, tile) order, as the
// device builder's sort does (cuda/attention/mask_plan.cu). O(query tiles log query tiles), never O(batch x longest).
inline std::string order_plan(const std::vector<QueryTileCount>& counts, const std::vector<int32_t>& q_base,
                              const int32_t* q_offsets, int batch, int block_m, int block_n, int split_tiles,
                              PlanOrder* out) {
  const size_t nq = counts.size();
  PlanOrder& o = *out;
  o = PlanOrder();
  o.stats.block_m = block_m;
  o.stats.block_n = block_n;
  o.stats.query_tiles = (int64_t)nq;
  o.run_start.resize(nq + 1);
  int64_t total = 0;
  for (size_t i = 0; i < nq; ++i) {
    o.run_start[i] = (int32_t)total;
    total += counts[i].runs;
    if (total > INT32_MAX) return "maskPlan: more than 2^31 - 1 key runs";
    o.stats.full_tiles += counts[i].full;
    o.stats.partial_tiles += counts[i].partial;
  }
  o.run_start[nq] = (int32_t)total;
  o.stats.runs = total;

  std::vector<int64_t> cost;
  cost.reserve(nq);
  o.work.reserve(nq);
  for (int b = 0; b < batch; ++b) {
    const int lq = q_offsets[b + 1] - q_offsets[b];
    for (int t = 0; t < q_base[(size_t)b + 1] - q_base[(size_t)b]; ++t) {
      const size_t i = (size_t)q_base[(size_t)b] + (size_t)t;
      const QueryTileCount& c = counts[i];
      const int32_t r0 = o.run_start[i], r1 = o.run_start[i + 1];
      const int pieces = split_pieces(lq, c.end - c.first, split_tiles);
      if (pieces > 0) {
        if ((int64_t)o.slots + pieces > INT32_MAX) return "maskPlan: too many split-KV slots";
        o.combine.push_back(PlanCombine{b, t, o.slots, pieces});
        for (int s = 0; s < pieces; ++s) {
          const int lo = c.first + s * split_tiles, hi = std::min(c.end, lo + split_tiles);
          o.work.push_back(PlanWork{b, t, r0, r1, lo, hi, o.slots + s});
          cost.push_back(hi - lo);
        }
        o.slots += pieces;
        o.stats.split_tiles += 1;
        o.stats.split_items += pieces;
      } else {
        o.work.push_back(PlanWork{b, t, r0, r1, c.first, c.end, -1});
        cost.push_back(query_tile_cost(c));
      }
    }
  }
  std::vector<int32_t> order(o.work.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = (int32_t)i;
  std::stable_sort(order.begin(), order.end(), [&cost](int32_t a, int32_t b) { return cost[(size_t)a] > cost[(size_t)b]; });
  std::vector<PlanWork> sorted(o.work.size());
  for (size_t i = 0; i < order.size(); ++i) sorted[i] = o.work[(size_t)order[i]];
  o.work.swap(sorted);
  o.stats.work_items = (int64_t)o.work.size();
  return std::string();
}

// Key tiles per split-KV item for key tiles of block_n keys: about 1,024 keys, so that a 16k-key row
// over 4-8 heads fills a GPU's SMs while each item still amortizes its Q load and partial store.
inline int split_tiles_for(int block_n) { return std::max(1, 1024 / block_n); }

// The lists of one geometry (tile bases and summaries, key runs, the ordered work), built on the
// host with the shared walk of mask_plan.h. The CPU kernel walks them in place; CUDA uploads them.
struct HostPlanLists {
  std::vector<int32_t> q_base, k_base;       // tile_plan.h prefix sums of each sequence's tiles
  std::vector<TileSummary> q_tiles, k_tiles;  // every real tile, numbered by q_base / k_base
  std::vector<KeyRun> runs;
  PlanOrder order;  // run_start, work (heaviest first), combine groups, slots, stats
};

// Builds the lists of `in` for tiles of block_m queries x block_n keys (split_tiles: order_plan).
// for_each(n, fn) calls fn(i) for every i in [0, n), in any order and on any threads (the CPU
// passes its thread pool). Two passes: each query tile's counts, then its runs at the offsets their
// prefix sum gives. "" or the error.
template <typename ForEach>
std::string build_plan_lists(const PlanInputs& in, int block_m, int block_n, int split_tiles, ForEach for_each,
                             HostPlanLists* out) {
  HostPlanLists& g = *out;
  g.q_base = tile_bases(in.q.offsets, in.batch, block_m);
  g.k_base = tile_bases(in.kv.offsets, in.batch, block_n);
  g.q_tiles = tile_summaries(in.q.offsets, in.q.segments, in.q.roles, in.batch, block_m, g.q_base);
  g.k_tiles = tile_summaries(in.kv.offsets, in.kv.segments, in.kv.roles, in.batch, block_n, g.k_base);
  const int32_t nq = g.q_base[(size_t)in.batch];
  std::vector<int32_t> seq_of((size_t)nq);
  for (int b = 0; b < in.batch; ++b)
    for (int32_t i = g.q_base[(size_t)b]; i < g.q_base[(size_t)b + 1]; ++i) seq_of[(size_t)i] = b;
  std::vector<QueryTileCount> counts((size_t)nq);
  for_each((int64_t)nq, [&](int64_t i) {
    const int b = seq_of[(size_t)i];
    counts[(size_t)i] = count_key_runs(in.rule, in.q.offsets, in.kv.offsets, b, (int)(i - g.q_base[(size_t)b]), block_m, block_n,
                                       g.q_tiles[(size_t)i], g.k_tiles.data() + g.k_base[(size_t)b]);
  });
  const std::string err = order_plan(counts, g.q_base, in.q.offsets, in.batch, block_m, block_n, split_tiles, &g.order);
  if (!err.empty()) return err;
  g.runs.resize((size_t)g.order.stats.runs);
  for_each((int64_t)nq, [&](int64_t i) {
    const int b = seq_of[(size_t)i];
    fill_key_runs(in.rule, in.q.offsets, in.kv.offsets, b, (int)(i - g.q_base[(size_t)b]), block_m, block_n,
                  g.q_tiles[(size_t)i], g.k_tiles.data() + g.k_base[(size_t)b], g.runs.data() + g.order.run_start[(size_t)i]);
  });
  return std::string();
}

}  // namespace lk
