// Builds mask plans on the device (mask_plan.cuh): the layouts and the per-sequence tile bases (a
// prefix sum over the jagged batch, so empty sequences cost one entry) are uploaded once, tile
// summaries and each query tile's key-tile counts are computed by kernels, the host turns the counts
// into run offsets and the heaviest-first work order (mask_plan_host.h), and a second kernel pass
// writes the runs. Memory goes through the runtime's helpers (alloc / copy_to_device / copy_to_host).
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "mask_plan.cuh"
#include "mask_plan_kernels.cuh"

namespace lk::cuda {
namespace {

// Packs host arrays at 256-byte aligned offsets of one buffer: one allocation, one upload.
struct Packer {
  std::vector<unsigned char> bytes;
  size_t add(const void* src, size_t n) {
    const size_t at = (bytes.size() + 255) / 256 * 256;
    bytes.resize(at + n);
    if (src && n) std::memcpy(bytes.data() + at, src, n);
    return at;
  }
  size_t room(size_t n) { return add(nullptr, n); }
};

constexpr int kBuildThreads = 128;

}  // namespace

CudaPlanGeometry::~CudaPlanGeometry() {
  release(layout_mem);
  release(plan_mem);
}

std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, std::unique_ptr<CudaPlanGeometry>* out) {
  auto g = std::make_unique<CudaPlanGeometry>();
  const std::vector<int32_t> q_base = tile_bases(in.q.offsets, in.batch, block_m);
  const std::vector<int32_t> k_base = tile_bases(in.kv.offsets, in.batch, block_n);
  const int32_t nq = q_base[(size_t)in.batch], nk = k_base[(size_t)in.batch];
  const bool shared = in.kv.offsets == in.q.offsets && in.kv.segments == in.q.segments && in.kv.roles == in.q.roles;

  Packer pk;
  const size_t n_off = (size_t)in.batch + 1;
  const size_t q_off = pk.add(in.q.offsets, n_off * 4);
  const size_t q_seg = in.q.segments ? pk.add(in.q.segments, (size_t)in.tq * 4) : 0;
  const size_t q_role = in.q.roles ? pk.add(in.q.roles, (size_t)in.tq) : 0;
  size_t k_off = q_off, k_seg = q_seg, k_role = q_role;
  if (!shared) {
    k_off = pk.add(in.kv.offsets, n_off * 4);
    k_seg = in.kv.segments ? pk.add(in.kv.segments, (size_t)in.tk * 4) : 0;
    k_role = in.kv.roles ? pk.add(in.kv.roles, (size_t)in.tk) : 0;
  }
  const size_t q_base_at = pk.add(q_base.data(), q_base.size() * 4);
  const size_t k_base_at = pk.add(k_base.data(), k_base.size() * 4);
  const size_t uploaded = pk.bytes.size();
  const size_t q_sum_at = pk.room((size_t)nq * sizeof(TileSummary));
  const size_t k_sum_at = pk.room((size_t)nk * sizeof(TileSummary));
  const size_t count_at = pk.room((size_t)nq * sizeof(QueryTileCount));

  unsigned q_blocks = 0, k_blocks = 0;
  std::string err = grid_x(((int64_t)nq + kBuildThreads - 1) / kBuildThreads, "maskPlan", &q_blocks);
  if (err.empty()) err = grid_x(((int64_t)nk + kBuildThreads - 1) / kBuildThreads, "maskPlan", &k_blocks);
  if (err.empty()) err = alloc(pk.bytes.size(), &g->layout_mem);
  if (err.empty()) err = copy_to_device(g->layout_mem, pk.bytes.data(), uploaded);
  if (!err.empty()) return err;
  unsigned char* dev = static_cast<unsigned char*>(g->layout_mem);
  g->q = LayoutView{reinterpret_cast<const int32_t*>(dev + q_off),
                    in.q.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr,
                    in.q.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr};
  g->kv = LayoutView{reinterpret_cast<const int32_t*>(dev + k_off),
                     in.kv.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr,
                     in.kv.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr};
  PlanBuildArgs a;
  a.rule = in.rule;
  a.q_offsets = g->q.offsets;
  a.k_offsets = g->kv.offsets;
  a.batch = in.batch;
  a.block_m = block_m;
  a.block_n = block_n;
  a.q_base = reinterpret_cast<const int32_t*>(dev + q_base_at);
  a.k_base = reinterpret_cast<const int32_t*>(dev + k_base_at);
  TileSummary* q_sums = reinterpret_cast<TileSummary*>(dev + q_sum_at);
  TileSummary* k_sums = reinterpret_cast<TileSummary*>(dev + k_sum_at);
  QueryTileCount* counts_dev = reinterpret_cast<QueryTileCount*>(dev + count_at);
  a.q_sums = q_sums;
  a.k_sums = k_sums;
  a.n_query_tiles = nq;

  std::vector<QueryTileCount> counts((size_t)nq);
  if (nq > 0) {
    auto* summary = tile_summary_kernel;
    LK_LAUNCH(summary, dim3(q_blocks), dim3(kBuildThreads), 0, 0)(g->q, in.batch, block_m, a.q_base, nq, q_sums);
    if (nk > 0) LK_LAUNCH(summary, dim3(k_blocks), dim3(kBuildThreads), 0, 0)(g->kv, in.batch, block_n, a.k_base, nk, k_sums);
    auto* count = plan_count_kernel;
    LK_LAUNCH(count, dim3(q_blocks), dim3(kBuildThreads), 0, 0)(a, counts_dev);
    err = check(cudaGetLastError(), "maskPlan launch");
    // The counts decide the size of the runs and the work order: the one wait of a build.
    if (err.empty()) err = copy_to_host(counts.data(), counts_dev, counts.size() * sizeof(QueryTileCount));
    if (!err.empty()) return err;
  }

  PlanOrder order;
  err = order_plan(counts, q_base, in.q.offsets, in.batch, block_m, block_n, split_tiles_for(block_n), &order);
  if (!err.empty()) return err;
  Packer plan;
  const size_t start_at = plan.add(order.run_start.data(), order.run_start.size() * 4);
  const size_t work_at = plan.add(order.work.data(), order.work.size() * sizeof(PlanWork));
  const size_t comb_at = plan.add(order.combine.data(), order.combine.size() * sizeof(PlanCombine));
  const size_t filled = plan.bytes.size();
  const size_t runs_at = plan.room((size_t)order.stats.runs * sizeof(KeyRun));
  err = alloc(plan.bytes.size(), &g->plan_mem);
  if (err.empty()) err = copy_to_device(g->plan_mem, plan.bytes.data(), filled);
  if (!err.empty()) return err;
  unsigned char* pm = static_cast<unsigned char*>(g->plan_mem);
  g->work = reinterpret_cast<const PlanWork*>(pm + work_at);
  g->combine = reinterpret_cast<const PlanCombine*>(pm + comb_at);
  g->runs = reinterpret_cast<const KeyRun*>(pm + runs_at);
  g->n_work = (int32_t)order.work.size();
  g->n_combine = (int32_t)order.combine.size();
  g->slots = order.slots;
  g->stats = order.stats;
  if (nq > 0 && order.stats.runs > 0) {
    auto* fill = plan_fill_kernel;
    LK_LAUNCH(fill, dim3(q_blocks), dim3(kBuildThreads), 0, 0)(a, reinterpret_cast<const int32_t*>(pm + start_at),
                                                               reinterpret_cast<KeyRun*>(pm + runs_at));
    err = check(cudaGetLastError(), "maskPlan launch");
    if (!err.empty()) return err;
  }
  *out = std::move(g);
  return std::string();
}

std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out) {
  if (PlanGeometry* found = state.find(block_m, block_n)) {
    *out = static_cast<const CudaPlanGeometry*>(found);
    return std::string();
  }
  std::unique_ptr<CudaPlanGeometry> built;
  std::string err = build_cuda_plan(state.in, block_m, block_n, &built);
  if (!err.empty()) return err;
  *out = static_cast<const CudaPlanGeometry*>(state.add(std::move(built)));
  return std::string();
}

}  // namespace lk::cuda
