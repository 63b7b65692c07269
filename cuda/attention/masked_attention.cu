// Host side of maskedAttention on CUDA: takes the mask plan of the call's layouts and rule for the
// chosen kernel's tile sizes — a MaskPlan's (built once, kept in device memory), or one built on the
// host for this call and uploaded with the call's layouts through the runtime's pinned staging
// (mask_plan.cu; no wait for the device) — and launches the kernel instantiated for the dtype and
// head capacity over the plan's work items on the device's stream (cuda/runtime.h): real query tiles
// only, split-KV windows for short query rows over long keys, then the split-KV combine when the plan
// has split items. Grid sizes are checked against CUDA's limits (x < 2^31, heads in y at most
// 65,535); every failure clears the thread's last error (common/host_check.cuh).
#include <memory>
#include <string>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../multistream/staged_ops.h"
#include "../runtime.h"
#include "mask_plan.cuh"
#include "masked_attention_kernel.cuh"
#include "split_combine.cuh"
#include "tc_attention.cuh"

namespace lk::cuda {
namespace {

template <typename T, int kCap>
void launch(const AttentionParams& p, const PlanView& plan, int32_t n_work, const SplitPartials& part) {
  using Tr = AttentionTraits<kCap>;
  auto* kernel = masked_attention_kernel<T, kCap>;
  LK_LAUNCH(kernel, dim3((unsigned)n_work, (unsigned)p.heads, 1), dim3(Tr::kThreads), 0, stream())(p, plan, part);
}

template <typename T>
void launch_for_capacity(int cap, const AttentionParams& p, const PlanView& plan, int32_t n_work, const SplitPartials& part) {
  switch (cap) {
    case 32: launch<T, 32>(p, plan, n_work, part); break;
    case 64: launch<T, 64>(p, plan, n_work, part); break;
    case 128: launch<T, 128>(p, plan, n_work, part); break;
    default: launch<T, 256>(p, plan, n_work, part); break;
  }
}

template <typename T>
void launch_combine(const AttentionParams& p, const CudaPlanGeometry& g, const SplitPartials& part) {
  auto* kernel = split_combine_kernel<T>;
  LK_LAUNCH(kernel, dim3((unsigned)g.combine_capacity, (unsigned)p.heads, 1), dim3(128), 0, stream())(p, g.combine, part);
}

// The scalar kernel's tile sizes (AttentionTraits) for head capacity kCap.
template <int kCap>
void scalar_tiles(int* bm, int* bn) {
  *bm = AttentionTraits<kCap>::kBlockM;
  *bn = AttentionTraits<kCap>::kBlockN;
}

// The tile sizes of the kernel a call with these arguments runs.
void tile_sizes(const AttentionParams& p, TcChoice* tc, int* bm, int* bn) {
  *tc = choose_tc_attention(p);
  if (tc->use) {
    *bm = tc->block_m;
    *bn = tc->block_n;
    return;
  }
  switch (head_capacity(p.head_dim, p.value_dim)) {
    case 32: scalar_tiles<32>(bm, bn); break;
    case 64: scalar_tiles<64>(bm, bn); break;
    case 128: scalar_tiles<128>(bm, bn); break;
    default: scalar_tiles<256>(bm, bn); break;
  }
}

}  // namespace

bool head_dim_supported(int dim) {
  return dim == 8 || dim == 16 || dim == 32 || dim == 64 || dim == 128 || dim == 256;
}

std::string prepare_mask_plan(PlanState& state, const AttentionParams& like) {
  discard_stale_error();
  TcChoice tc;
  int bm = 0, bn = 0;
  tile_sizes(like, &tc, &bm, &bn);
  const CudaPlanGeometry* g = nullptr;
  std::string err = cuda_plan_geometry(state, bm, bn, &g);
  return err.empty() ? finish("maskPlan") : err;
}

std::string issue_masked_attention(const AttentionParams& host, PlanState* state) {
  if (host.tq == 0 || host.batch == 0) return std::string();
  // Heads are the grid's y (the binding caps them at 65,535, the limit of grid.y).
  if (host.heads < 1 || host.heads > kMaxGridYZ)
    return "maskedAttention: " + std::to_string(host.heads) + " heads exceed the CUDA grid's 65,535";
  TcChoice tc;
  int bm = 0, bn = 0;
  tile_sizes(host, &tc, &bm, &bn);

  // Split-KV partials of one slot: per head and row, Dv floats of o and m, l, seen.
  const size_t slot_bytes = (size_t)host.heads * kSplitRows * ((size_t)host.value_dim + 3) * 4;
  const CudaPlanGeometry* g = nullptr;
  std::unique_ptr<CudaPlanGeometry> own;  // a plan for this call only (no MaskPlan given)
  std::string err;
  if (state) {
    err = cuda_plan_geometry(*state, bm, bn, &g);
  } else {
    err = build_cuda_plan(plan_inputs_of(host), bm, bn, slot_bytes, false, &own);
    g = own.get();
  }
  if (!err.empty()) return err;
  if (g->work_capacity == 0) return std::string();

  AttentionParams p = host;
  p.q_layout = g->q;
  p.kv_layout = g->kv;
  SplitPartials part{nullptr, nullptr, nullptr, nullptr};
  DeviceScratch partials;  // a MaskPlan's calls: partials of this call's head count
  if (g->slot_capacity > 0) {
    const size_t rows = (size_t)g->slot_capacity * (size_t)p.heads * kSplitRows;
    unsigned char* room = g->room;
    if (!room) {
      err = partials.allocate(slot_bytes * (size_t)g->slot_capacity, "maskedAttention split-KV partials");
      if (!err.empty()) return err;
      room = partials.get();
    }
    float* f = reinterpret_cast<float*>(room);
    part.o = f;
    part.m = f + rows * (size_t)p.value_dim;
    part.l = part.m + rows;
    part.seen = reinterpret_cast<int32_t*>(part.l + rows);
  }
  const PlanView plan{g->work, g->runs};
  {
    KernelSpan span;
    span.begin();
    const int cap = head_capacity(host.head_dim, host.value_dim);
    if (tc.use)  // tensor-core dispatch
      launch_tc_attention(tc, p, plan, g->work_capacity, part);
    else switch (host.dtype) {
      case kFloat16: launch_for_capacity<__half>(cap, p, plan, g->work_capacity, part); break;
      case kBFloat16: launch_for_capacity<__nv_bfloat16>(cap, p, plan, g->work_capacity, part); break;
      default: launch_for_capacity<float>(cap, p, plan, g->work_capacity, part); break;
    }
    if (g->combine_capacity > 0) switch (host.dtype) {
      case kFloat16: launch_combine<__half>(p, *g, part); break;
      case kBFloat16: launch_combine<__nv_bfloat16>(p, *g, part); break;
      default: launch_combine<float>(p, *g, part); break;
    }
    span.end();
  }
  return err;  // plan and partials go back to the cache, stream-ordered (cuda/runtime.h)
}

std::string masked_attention(const AttentionParams& host, PlanState* state) {
  discard_stale_error();
  const std::string err = issue_masked_attention(host, state);
  return err.empty() ? finish("maskedAttention") : err;
}

}  // namespace lk::cuda
