#include "mask_plan_cpu.h"

#include <stdexcept>

#include "../thread_pool.h"

namespace lk::cpu {

std::unique_ptr<CpuPlanGeometry> build_cpu_plan(const PlanInputs& in) {
  ThreadPool& pool = ThreadPool::shared();
  auto on_pool = [&pool](int64_t n, const auto& fn) { pool.parallel_for(n, [&fn](int64_t i, int) { fn(i); }); };
  HostPlanLists lists;
  // No split-KV on the CPU: a task walks a whole query tile's keys.
  const std::string err = build_plan_lists(in, kPlanBlockM, kPlanBlockN, 0, on_pool, &lists);
  if (!err.empty()) throw std::length_error(err);
  auto g = std::make_unique<CpuPlanGeometry>();
  g->q_base = std::move(lists.q_base);
  g->k_base = std::move(lists.k_base);
  g->q_tiles = std::move(lists.q_tiles);
  g->k_tiles = std::move(lists.k_tiles);
  g->runs = std::move(lists.runs);
  g->work = std::move(lists.order.work);
  g->stats = lists.order.stats;
  return g;
}

const CpuPlanGeometry& cpu_plan_geometry(PlanState& state) {
  if (PlanGeometry* found = state.find(kPlanBlockM, kPlanBlockN)) return *static_cast<const CpuPlanGeometry*>(found);
  return *static_cast<const CpuPlanGeometry*>(state.add(build_cpu_plan(state.in)));
}

}  // namespace lk::cpu
