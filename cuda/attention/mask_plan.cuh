// Mask plans on CUDA (SPEC §3 "Plans"): one geometry (query / key tile sizes of the kernel that will
// walk it). Its lists are built on the host with the walk the CPU shares (mask_plan_host.h,
// build_plan_lists) and uploaded through the runtime's pinned staging on the device's stream, so
// building one never waits for the device; a MaskPlan keeps its geometries in device memory for
// every later call.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <memory>
#include <string>

#include "../common/mask_plan_host.h"
#include "../runtime.h"

namespace lk::cuda {

struct CudaPlanGeometry : PlanGeometry {
  Upload memory;  // layouts, work list, key runs, combine groups (+ room asked for by the builder)
  LayoutView q{nullptr, nullptr, nullptr}, kv{nullptr, nullptr, nullptr};  // device addresses
  const PlanWork* work = nullptr;
  const KeyRun* runs = nullptr;
  const PlanCombine* combine = nullptr;
  int32_t n_work = 0, n_combine = 0, slots = 0;
  unsigned char* room = nullptr;  // slot_bytes x slots of device memory after the lists
};

// Builds the plan of `in` (host layouts) for tiles of block_m queries x block_n keys and enqueues its
// upload on stream(); slot_bytes per split-KV slot of device room follow the lists (a plan of one
// call keeps its split partials there; 0 for a MaskPlan's, which serves calls of any head count).
std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
                            std::unique_ptr<CudaPlanGeometry>* out);

// The geometry of `state` for these tile sizes, built and kept on first use.
std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out);

}  // namespace lk::cuda
