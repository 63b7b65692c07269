#include "mask_plan_cpu.h"

#include <stdexcept>

#include "../thread_pool.h"

namespace lk::cpu {
namespace {

// Summaries of the batch's real tiles of `tile` tokens, sequence b's at [base[b], base[b + 1]).
std::vector<TileSummary> summarize(const LayoutView& layout, int batch, int tile, const std::vector<int32_t>& base) {
  std::vector<TileSummary> out((size_t)base[(size_t)batch]);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < base[(size_t)b + 1] - base[(size_t)b]; ++t) {
      int64_t lo, hi;
      tile_tokens(layout.offsets[b], layout.offsets[b + 1], tile, t, &lo, &hi);
      out[(size_t)(base[(size_t)b] + t)] = summarize_tokens(layout.segments, layout.roles, lo, hi);
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<CpuPlanGeometry> build_cpu_plan(const PlanInputs& in) {
  auto g = std::make_unique<CpuPlanGeometry>();
  g->q_base = tile_bases(in.q.offsets, in.batch, kPlanBlockM);
  g->k_base = tile_bases(in.kv.offsets, in.batch, kPlanBlockN);
  g->q_tiles = summarize(in.q, in.batch, kPlanBlockM, g->q_base);
  g->k_tiles = summarize(in.kv, in.batch, kPlanBlockN, g->k_base);
  const int32_t nq = g->q_base[(size_t)in.batch];
  std::vector<int32_t> seq_of((size_t)nq);
  for (int b = 0; b < in.batch; ++b)
    for (int32_t i = g->q_base[(size_t)b]; i < g->q_base[(size_t)b + 1]; ++i) seq_of[(size_t)i] = b;
  // Two passes as on the device: counts, then the runs at the offsets their prefix sum gives.
  std::vector<QueryTileCount> counts((size_t)nq);
  ThreadPool& pool = ThreadPool::shared();
  pool.parallel_for(nq, [&](int64_t i, int) {
    const int b = seq_of[(size_t)i];
    counts[(size_t)i] = count_key_runs(in.rule, in.q.offsets, in.kv.offsets, b, (int)(i - g->q_base[(size_t)b]), kPlanBlockM,
                                       kPlanBlockN, g->q_tiles[(size_t)i], g->k_tiles.data() + g->k_base[(size_t)b]);
  });
  PlanOrder order;
  const std::string err = order_plan(counts, g->q_base, in.q.offsets, in.batch, kPlanBlockM, kPlanBlockN, 0, &order);
  if (!err.empty()) throw std::length_error(err);
  g->runs.resize((size_t)order.stats.runs);
  pool.parallel_for(nq, [&](int64_t i, int) {
    const int b = seq_of[(size_t)i];
    fill_key_runs(in.rule, in.q.offsets, in.kv.offsets, b, (int)(i - g->q_base[(size_t)b]), kPlanBlockM, kPlanBlockN,
                  g->q_tiles[(size_t)i], g->k_tiles.data() + g->k_base[(size_t)b], g->runs.data() + order.run_start[(size_t)i]);
  });
  g->work = std::move(order.work);
  g->stats = order.stats;
  return g;
}

const CpuPlanGeometry& cpu_plan_geometry(PlanState& state) {
  if (PlanGeometry* found = state.find(kPlanBlockM, kPlanBlockN)) return *static_cast<const CpuPlanGeometry*>(found);
  return *static_cast<const CpuPlanGeometry*>(state.add(build_cpu_plan(state.in)));
}

}  // namespace lk::cpu
