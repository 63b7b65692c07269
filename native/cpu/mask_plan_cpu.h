// Mask plans on the CPU (SPEC §3 "Plans"): the geometry the CPU attention kernel walks, built on the
// host with the walk the CUDA plans share (cuda/common/mask_plan_host.h, build_plan_lists).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../../cuda/common/mask_plan_host.h"

namespace lk::cpu {

// Tiles of the CPU attention kernel: query rows per task, keys per key tile.
constexpr int kPlanBlockM = 32;
constexpr int kPlanBlockN = 64;

struct CpuPlanGeometry : PlanGeometry {
  std::vector<int32_t> q_base, k_base;
  std::vector<TileSummary> q_tiles, k_tiles;
  std::vector<KeyRun> runs;
  std::vector<PlanWork> work;  // heaviest first; no split items (the CPU walks whole rows)
};

std::unique_ptr<CpuPlanGeometry> build_cpu_plan(const PlanInputs& in);

// The CPU geometry of `state`, built and kept on first use.
const CpuPlanGeometry& cpu_plan_geometry(PlanState& state);

}  // namespace lk::cpu
