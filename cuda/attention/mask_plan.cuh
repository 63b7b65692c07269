// Mask plans on CUDA (SPEC §3 "Plans"): one geometry (query / key tile sizes of the kernel that will
// walk it) built on the device and kept in device memory for reuse by every later call.
#pragma once
#include <stdint.h>

#include <memory>
#include <string>

#include "../common/mask_plan_host.h"

namespace lk::cuda {

struct CudaPlanGeometry : PlanGeometry {
  void* layout_mem = nullptr;  // device layouts, tile bases, summaries, counts
  void* plan_mem = nullptr;    // run starts, runs, work list, combine groups
  LayoutView q{nullptr, nullptr, nullptr}, kv{nullptr, nullptr, nullptr};  // device addresses
  const PlanWork* work = nullptr;
  const KeyRun* runs = nullptr;
  const PlanCombine* combine = nullptr;
  int32_t n_work = 0, n_combine = 0, slots = 0;
  ~CudaPlanGeometry() override;
};

// Builds the plan of `in` (host layouts) for tiles of block_m queries x block_n keys.
std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, std::unique_ptr<CudaPlanGeometry>* out);

// The geometry of `state` for these tile sizes, built and kept on first use.
std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out);

}  // namespace lk::cuda
