// Builds mask plans for the CUDA kernels (mask_plan.cuh): the lists come from the host walk shared
// with the CPU (mask_plan_host.h) and go up with the layouts in one pinned-staged copy on the
// device's stream (runtime.h, Upload). Nothing here waits for the device: a call that builds its own
// plan issues the upload and its kernels back to back.
#include <string>

#include "../common/host_check.cuh"
#include "mask_plan.cuh"

namespace lk::cuda {

std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
                            std::unique_ptr<CudaPlanGeometry>* out) {
  HostPlanLists lists;
  auto serial = [](int64_t n, const auto& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  };
  std::string err = build_plan_lists(in, block_m, block_n, split_tiles_for(block_n), serial, &lists);
  if (!err.empty()) return err;
  const PlanOrder& order = lists.order;
  if (order.work.size() > (size_t)INT32_MAX) return "maskPlan: more than 2^31 - 1 work items";

  auto g = std::make_unique<CudaPlanGeometry>();
  Upload& up = g->memory;
  const bool shared = in.kv.offsets == in.q.offsets && in.kv.segments == in.q.segments && in.kv.roles == in.q.roles;
  const size_t n_off = (size_t)in.batch + 1;
  const size_t q_off = up.add(in.q.offsets, n_off * 4);
  const size_t q_seg = in.q.segments ? up.add(in.q.segments, (size_t)in.tq * 4) : 0;
  const size_t q_role = in.q.roles ? up.add(in.q.roles, (size_t)in.tq) : 0;
  size_t k_off = q_off, k_seg = q_seg, k_role = q_role;
  if (!shared) {
    k_off = up.add(in.kv.offsets, n_off * 4);
    k_seg = in.kv.segments ? up.add(in.kv.segments, (size_t)in.tk * 4) : 0;
    k_role = in.kv.roles ? up.add(in.kv.roles, (size_t)in.tk) : 0;
  }
  const size_t work_at = up.add(order.work.data(), order.work.size() * sizeof(PlanWork));
  const size_t runs_at = up.add(lists.runs.data(), lists.runs.size() * sizeof(KeyRun));
  const size_t comb_at = up.add(order.combine.data(), order.combine.size() * sizeof(PlanCombine));
  const size_t room_at = up.room(slot_bytes * (size_t)order.slots);
  err = up.commit("maskPlan upload");
  if (!err.empty()) return err;

  unsigned char* dev = up.device();
  g->q = LayoutView{reinterpret_cast<const int32_t*>(dev + q_off),
                    in.q.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr,
                    in.q.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr};
  g->kv = LayoutView{reinterpret_cast<const int32_t*>(dev + k_off),
                     in.kv.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr,
                     in.kv.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr};
  g->work = reinterpret_cast<const PlanWork*>(dev + work_at);
  g->runs = reinterpret_cast<const KeyRun*>(dev + runs_at);
  g->combine = reinterpret_cast<const PlanCombine*>(dev + comb_at);
  g->room = slot_bytes > 0 && order.slots > 0 ? dev + room_at : nullptr;
  g->n_work = (int32_t)order.work.size();
  g->n_combine = (int32_t)order.combine.size();
  g->slots = order.slots;
  g->stats = order.stats;
  *out = std::move(g);
  return std::string();
}

std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out) {
  if (PlanGeometry* found = state.find(block_m, block_n)) {
    *out = static_cast<const CudaPlanGeometry*>(found);
    return std::string();
  }
  std::unique_ptr<CudaPlanGeometry> built;
  std::string err = build_cuda_plan(state.in, block_m, block_n, 0, &built);
  if (!err.empty()) return err;
  *out = static_cast<const CudaPlanGeometry*>(state.add(std::move(built)));
  return std::string();
}

}  // namespace lk::cuda
