// Mask plans on CUDA (SPEC §3 "Plans"): one geometry (query / key tile sizes of the kernel that will
// walk it), built on the device by the kernels of mask_plan_device.cuh from the layouts, uploaded
// through the runtime's pinned staging on the device's stream; nothing in a build waits for the
// device. A MaskPlan keeps its geometries in device memory for every later call.
//
// The lists' lengths depend on the data, which the host never sees without waiting, so each list
// is allocated at a bound the host computes from the offsets alone (mask_plan.cu) and its entries
// past the real ones are marked unused (seq < 0: the kernels return at once). Only split-KV windows
// can make the work list longer than its real entries (a short query row whose listed key tiles
// span fewer tiles than its sequence has), so the attention grid equals the work in every other case.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <memory>
#include <string>

#include "../common/mask_plan_host.h"
#include "../runtime.h"

namespace lk::cuda {

struct CudaPlanGeometry : PlanGeometry {
  Upload memory;  // layouts, then the lists (+ room asked for by the builder)
  LayoutView q{nullptr, nullptr, nullptr}, kv{nullptr, nullptr, nullptr};  // device addresses
  const PlanWork* work = nullptr;
  const KeyRun* runs = nullptr;
  const PlanCombine* combine = nullptr;
  // Entries of each list: the attention grid (work), the combine grid, split-KV slots to hold.
  int32_t work_capacity = 0, run_capacity = 0, combine_capacity = 0, slot_capacity = 0;
  unsigned char* room = nullptr;  // slot_bytes x slot_capacity of device memory after the lists
  bool built_on_device = false;
  // A device build's totals (plan_build::PlanTotals), downloaded at the build op's completion; shared
  // with that completion, which may come after a call's own geometry is gone.
  struct DeviceTotals {
    int64_t values[6] = {0, 0, 0, 0, 0, 0};
    std::atomic<bool> ready{false};
  };
  std::shared_ptr<DeviceTotals> totals;

  bool stats_now(PlanStats* out) const override;
};

// Builds the plan of `in` (host layouts) for tiles of block_m queries x block_n keys, issued on
// stream(); slot_bytes per split-KV slot of device room follow the lists (a plan of one call keeps
// its split partials there; 0 for a MaskPlan's, which serves calls of any head count).
// keep_stats: the geometry's stats are filled in (and stats_ready set) when the build has executed
// (a MaskPlan's; a call's own plan is gone by then). Built on the device unless a list bound
// exceeds 32-bit indices (then on the host, which knows the exact sizes).
std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes, bool keep_stats,
                            std::unique_ptr<CudaPlanGeometry>* out);

// The two builders, for the test that compares them (binding: MaskPlan._lists).
std::string build_cuda_plan_on_device(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
                                      bool keep_stats, std::unique_ptr<CudaPlanGeometry>* out);
std::string build_cuda_plan_on_host(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
                                    std::unique_ptr<CudaPlanGeometry>* out);

// The geometry of `state` for these tile sizes, built and kept on first use.
std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out);

}  // namespace lk::cuda
