// Builds mask plans for the CUDA kernels (mask_plan.cuh). The layouts go up in one pinned-staged
// copy on the device's stream (runtime.h, Upload) and the kernels of mask_plan_device.cuh compute
// the lists from them, on the same stream: nothing here waits for the device, so a call that builds
// its own plan issues the upload, the build and its attention kernels back to back.
//
// Sizes. The host knows the offsets (it uploads them) but not what the rule makes of the segments
// and roles, so it sizes every list by a bound from the offsets alone, O(batch) (list_bounds):
// runs <= query tiles x key tiles of each sequence (one run per key tile at most), work items <=
// query tiles + the split windows a short row could need, combine groups <= its split-eligible query
// tiles. The device writes the real lengths as scan totals and marks the rest unused. The run bound
// is the dense tile count, 8 bytes per tile pair (0.5 MiB for a 16k causal row at 64 x 64 tiles):
// memory in proportion to the dense work, the price of never reading counts back before the
// kernels that use them are issued. Bounds beyond 32-bit indices fall back to the host walk
// (mask_plan_host.h), which knows exact sizes.
#include <algorithm>
#include <string>

#include "../backend.h"
#include "../common/host_check.cuh"
#include "mask_plan.cuh"
#include "mask_plan_device.cuh"

namespace lk::cuda {
namespace {

namespace pb = plan_build;

// Offsets in the geometry's device block of the uploaded layouts.
struct LayoutAt {
  size_t q_off = 0, q_seg = 0, q_role = 0, k_off = 0, k_seg = 0, k_role = 0;
};

LayoutAt add_layouts(const PlanInputs& in, Upload& up) {
  LayoutAt at;
  const bool shared = in.kv.offsets == in.q.offsets && in.kv.segments == in.q.segments && in.kv.roles == in.q.roles;
  const size_t n_off = (size_t)in.batch + 1;
  at.q_off = up.add(in.q.offsets, n_off * 4);
  at.q_seg = in.q.segments ? up.add(in.q.segments, (size_t)in.tq * 4) : 0;
  at.q_role = in.q.roles ? up.add(in.q.roles, (size_t)in.tq) : 0;
  at.k_off = at.q_off, at.k_seg = at.q_seg, at.k_role = at.q_role;
  if (!shared) {
    at.k_off = up.add(in.kv.offsets, n_off * 4);
    at.k_seg = in.kv.segments ? up.add(in.kv.segments, (size_t)in.tk * 4) : 0;
    at.k_role = in.kv.roles ? up.add(in.kv.roles, (size_t)in.tk) : 0;
  }
  return at;
}

void set_layouts(const PlanInputs& in, const LayoutAt& at, CudaPlanGeometry* g) {
  unsigned char* dev = g->memory.device();
  g->q = LayoutView{reinterpret_cast<const int32_t*>(dev + at.q_off),
                    in.q.segments ? reinterpret_cast<const int32_t*>(dev + at.q_seg) : nullptr,
                    in.q.roles ? reinterpret_cast<const uint8_t*>(dev + at.q_role) : nullptr};
  g->kv = LayoutView{reinterpret_cast<const int32_t*>(dev + at.k_off),
                     in.kv.segments ? reinterpret_cast<const int32_t*>(dev + at.k_seg) : nullptr,
                     in.kv.roles ? reinterpret_cast<const uint8_t*>(dev + at.k_role) : nullptr};
}

// The lists' bounds (see the top of the file) and the largest item cost, from the offsets.
struct ListBounds {
  int64_t query_tiles = 0, key_tiles = 0, runs = 0, work = 0, combine = 0, slots = 0;
  int max_cost = 0;
};

ListBounds list_bounds(const PlanInputs& in, int block_m, int block_n, int split_tiles) {
  ListBounds r;
  for (int b = 0; b < in.batch; ++b) {
    const int lq = in.q.offsets[b + 1] - in.q.offsets[b];
    const int64_t qt = tiles_of(lq, block_m), kt = tiles_of(in.kv.offsets[b + 1] - in.kv.offsets[b], block_n);
    r.query_tiles += qt;
    r.key_tiles += kt;
    r.runs += qt * kt;
    r.work += qt;
    if (qt > 0) r.max_cost = (int)std::max<int64_t>(r.max_cost, 2 * kt);  // query_tile_cost <= 2 x its key tiles
    // split_pieces: a span of at most kt tiles.
    const int most = split_pieces(lq, (int)std::min<int64_t>(kt, INT32_MAX), split_tiles);
    if (qt > 0 && most > 0) {
      r.work += qt * (most - 1);
      r.combine += qt;
      r.slots += qt * most;
      r.max_cost = std::max(r.max_cost, split_tiles);
    }
  }
  return r;
}

int64_t sort_chunks(int64_t work) { return (work + pb::kSortChunk - 1) / pb::kSortChunk; }
int64_t hist_entries(const ListBounds& b) { return (int64_t)(b.max_cost + 1) * sort_chunks(b.work); }

bool fits_device_build(const ListBounds& b) {
  const int64_t most = INT32_MAX - 1;  // scans write a total after the last entry
  return b.runs <= most && b.work <= most && b.slots <= most && b.query_tiles + b.key_tiles <= most &&
         hist_entries(b) <= most;
}

void finish_geometry(CudaPlanGeometry* g, size_t runs_at, size_t work_at, size_t comb_at, size_t room_at, size_t slot_bytes) {
  unsigned char* dev = g->memory.device();
  g->work = reinterpret_cast<const PlanWork*>(dev + work_at);
  g->runs = reinterpret_cast<const KeyRun*>(dev + runs_at);
  g->combine = reinterpret_cast<const PlanCombine*>(dev + comb_at);
  g->room = slot_bytes > 0 && g->slot_capacity > 0 ? dev + room_at : nullptr;
}

}  // namespace

namespace {
// The device's totals over the host-known fields of `stats`.
void apply_totals(const CudaPlanGeometry::DeviceTotals& t, PlanStats* stats) {
  const int64_t* v = t.values;
  stats->full_tiles = v[0];
  stats->partial_tiles = v[1];
  stats->runs = v[2];
  stats->work_items = v[3];
  stats->split_tiles = v[4];
  stats->split_items = v[5];
}
}  // namespace

bool CudaPlanGeometry::stats_now(PlanStats* out) const {
  *out = stats;
  if (!totals) return true;
  if (!totals->ready.load(std::memory_order_acquire)) return false;
  apply_totals(*totals, out);
  return true;
}

std::string build_cuda_plan_on_host(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
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
  const LayoutAt at = add_layouts(in, up);
  const size_t work_at = up.add(order.work.data(), order.work.size() * sizeof(PlanWork));
  const size_t runs_at = up.add(lists.runs.data(), lists.runs.size() * sizeof(KeyRun));
  const size_t comb_at = up.add(order.combine.data(), order.combine.size() * sizeof(PlanCombine));
  const size_t room_at = up.room(slot_bytes * (size_t)order.slots);
  err = up.commit("maskPlan upload");
  if (!err.empty()) return err;
  set_layouts(in, at, g.get());
  g->work_capacity = (int32_t)order.work.size();
  g->run_capacity = (int32_t)lists.runs.size();
  g->combine_capacity = (int32_t)order.combine.size();
  g->slot_capacity = order.slots;
  finish_geometry(g.get(), runs_at, work_at, comb_at, room_at, slot_bytes);
  g->stats = order.stats;
  *out = std::move(g);
  return std::string();
}

std::string build_cuda_plan_on_device(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes,
                                      bool keep_stats, std::unique_ptr<CudaPlanGeometry>* out) {
  const int split_tiles = split_tiles_for(block_n);
  const ListBounds bound = list_bounds(in, block_m, block_n, split_tiles);
  if (!fits_device_build(bound)) return "maskPlan: the plan's list bounds exceed 32-bit indices";
  const int32_t nq = (int32_t)bound.query_tiles, nk = (int32_t)bound.key_tiles;
  const int32_t work_cap = (int32_t)bound.work, comb_cap = (int32_t)bound.combine;

  auto g = std::make_unique<CudaPlanGeometry>();
  g->built_on_device = true;
  g->stats.block_m = block_m;
  g->stats.block_n = block_n;
  g->stats.query_tiles = nq;
  Upload& up = g->memory;
  const LayoutAt at = add_layouts(in, up);
  const size_t runs_at = up.room((size_t)bound.runs * sizeof(KeyRun));
  const size_t work_at = up.room((size_t)work_cap * sizeof(PlanWork));
  const size_t comb_at = up.room((size_t)comb_cap * sizeof(PlanCombine));
  const size_t room_at = up.room(slot_bytes * (size_t)bound.slots);
  std::string err = up.commit("maskPlan upload");
  if (!err.empty()) return err;
  set_layouts(in, at, g.get());
  g->work_capacity = work_cap;
  g->run_capacity = (int32_t)bound.runs;
  g->combine_capacity = comb_cap;
  g->slot_capacity = (int32_t)bound.slots;
  finish_geometry(g.get(), runs_at, work_at, comb_at, room_at, slot_bytes);
  if (nq == 0) {  // no query tiles: empty lists, nothing to compute
    *out = std::move(g);
    return std::string();
  }

  // Scratch of the build only: back to the cache when this returns, stream-ordered (runtime.h).
  const int64_t batch = in.batch, chunks = sort_chunks(work_cap), hist = hist_entries(bound);
  size_t total = 0;
  auto take = [&total](size_t bytes) {
    const size_t a = (total + 255) / 256 * 256;
    total = a + bytes;
    return a;
  };
  const size_t q_tiles_at = take((size_t)(batch + 1) * 4), k_tiles_at = take((size_t)(batch + 1) * 4);
  const size_t q_sums_at = take((size_t)nq * sizeof(TileSummary)), k_sums_at = take((size_t)nk * sizeof(TileSummary));
  const size_t counts_at = take((size_t)nq * sizeof(QueryTileCount));
  size_t sizes_at[4];
  for (size_t& s : sizes_at) s = take((size_t)(nq + 1) * 4);
  const size_t items_at = take((size_t)work_cap * sizeof(PlanWork)), cost_at = take((size_t)work_cap * 4);
  const size_t hist_at = take((size_t)(hist + 1) * 4);
  const int64_t scan_ints = std::max({pb::scan_scratch_ints(batch), pb::scan_scratch_ints(nq), pb::scan_scratch_ints(hist), (int64_t)1});
  const size_t scan_at = take((size_t)scan_ints * 4);
  const size_t tile_counts_at = take(2 * sizeof(unsigned long long)), totals_at = take(sizeof(pb::PlanTotals));
  DeviceScratch scratch;
  err = scratch.allocate(total, "maskPlan scratch");
  if (!err.empty()) return err;
  unsigned char* s = scratch.get();
  auto ints = [s](size_t a) { return reinterpret_cast<int32_t*>(s + a); };
  int32_t* q_base = ints(q_tiles_at);
  int32_t* k_base = ints(k_tiles_at);
  auto* q_sums = reinterpret_cast<TileSummary*>(s + q_sums_at);
  auto* k_sums = reinterpret_cast<TileSummary*>(s + k_sums_at);
  auto* counts = reinterpret_cast<QueryTileCount*>(s + counts_at);
  const pb::TileSizes sizes{ints(sizes_at[0]), ints(sizes_at[1]), ints(sizes_at[2]), ints(sizes_at[3])};
  auto* items = reinterpret_cast<PlanWork*>(s + items_at);
  int32_t* cost = ints(cost_at);
  int32_t* hist_start = ints(hist_at);
  int32_t* scan_scratch = ints(scan_at);
  auto* tile_counts = reinterpret_cast<unsigned long long*>(s + tile_counts_at);
  auto* totals = reinterpret_cast<pb::PlanTotals*>(s + totals_at);
  auto* runs = const_cast<KeyRun*>(g->runs);
  auto* work = const_cast<PlanWork*>(g->work);
  auto* combine = const_cast<PlanCombine*>(g->combine);
  const cudaStream_t st = stream();

  // Tile bases: a prefix sum over the sequences (an empty one adds a zero, nothing more).
  LK_LAUNCH(pb::sequence_tiles_kernel, dim3(pb::flat_blocks(std::max<int64_t>(batch, 1))), dim3(pb::kFlatThreads), 0, st)(
      g->q.offsets, g->kv.offsets, in.batch, block_m, block_n, q_base, k_base, tile_counts);
  pb::scan_exclusive(q_base, batch, scan_scratch);
  pb::scan_exclusive(k_base, batch, scan_scratch);
  LK_LAUNCH(pb::tile_summaries_kernel, dim3(pb::flat_blocks((int64_t)nq + nk)), dim3(pb::kFlatThreads), 0, st)(
      g->q, g->kv, in.batch, block_m, block_n, q_base, k_base, nq, nk, q_sums, k_sums);
  // Classification and counts, their scans, then the runs at their starts.
  const dim3 walk_grid((unsigned)((nq + pb::kWalkWarps - 1) / pb::kWalkWarps)), walk_block(pb::kWalkWarps * 32);
  LK_LAUNCH(pb::key_runs_kernel<false>, walk_grid, walk_block, 0, st)(
      in.rule, g->q.offsets, g->kv.offsets, in.batch, block_m, block_n, split_tiles, q_base, k_base, q_sums, k_sums, nq,
      counts, sizes, tile_counts, nullptr, nullptr);
  for (int32_t* column : {sizes.runs, sizes.items, sizes.splits, sizes.slots}) pb::scan_exclusive(column, nq, scan_scratch);
  LK_LAUNCH(pb::key_runs_kernel<true>, walk_grid, walk_block, 0, st)(
      in.rule, g->q.offsets, g->kv.offsets, in.batch, block_m, block_n, split_tiles, q_base, k_base, q_sums, k_sums, nq,
      counts, sizes, tile_counts, sizes.runs, runs);
  LK_LAUNCH(pb::work_items_kernel, dim3(pb::flat_blocks(nq)), dim3(pb::kFlatThreads), 0, st)(
      g->q.offsets, in.batch, split_tiles, q_base, nq, counts, sizes, comb_cap, items, cost, combine);
  // Heaviest first: a stable counting sort by cost.
  const int32_t* n_items = sizes.items + nq;
  LK_LAUNCH(pb::zero_kernel, dim3(pb::flat_blocks(hist)), dim3(pb::kFlatThreads), 0, st)(hist_start, hist);
  LK_LAUNCH(pb::cost_histogram_kernel, dim3(pb::flat_blocks(work_cap)), dim3(pb::kFlatThreads), 0, st)(
      cost, n_items, bound.max_cost, (int32_t)chunks, hist_start);
  pb::scan_exclusive(hist_start, hist, scan_scratch);
  LK_LAUNCH(pb::sort_scatter_kernel, dim3((unsigned)chunks), dim3(pb::kSortThreads), 0, st)(
      items, cost, n_items, bound.max_cost, (int32_t)chunks, hist_start, work_cap, work);
  LK_LAUNCH(pb::plan_totals_kernel, dim3(1), dim3(32), 0, st)(nq, sizes, tile_counts, totals);

  g->totals = std::make_shared<CudaPlanGeometry::DeviceTotals>();
  if (keep_stats) {
    // The totals reach the host with the op's completion, never by waiting here.
    std::shared_ptr<CudaPlanGeometry::DeviceTotals> t = g->totals;
    err = download_async(t->values, totals, sizeof(pb::PlanTotals));
    if (!err.empty()) return err;
    after_op([t] { t->ready.store(true, std::memory_order_release); });
  }
  *out = std::move(g);
  return std::string();
}

std::string build_cuda_plan(const PlanInputs& in, int block_m, int block_n, size_t slot_bytes, bool keep_stats,
                            std::unique_ptr<CudaPlanGeometry>* out) {
  if (!fits_device_build(list_bounds(in, block_m, block_n, split_tiles_for(block_n))))
    return build_cuda_plan_on_host(in, block_m, block_n, slot_bytes, out);
  return build_cuda_plan_on_device(in, block_m, block_n, slot_bytes, keep_stats, out);
}

std::string cuda_plan_geometry(PlanState& state, int block_m, int block_n, const CudaPlanGeometry** out) {
  if (PlanGeometry* found = state.find(block_m, block_n)) {
    *out = static_cast<const CudaPlanGeometry*>(found);
    return std::string();
  }
  std::unique_ptr<CudaPlanGeometry> built;
  std::string err = build_cuda_plan(state.in, block_m, block_n, 0, true, &built);
  if (!err.empty()) return err;
  *out = static_cast<const CudaPlanGeometry*>(state.add(std::move(built)));
  return std::string();
}

std::string mask_plan_lists(const PlanState& plan, int block_m, int block_n, bool on_device,
                            const std::shared_ptr<PlanListsCopy>& out) {
  discard_stale_error();
  std::unique_ptr<CudaPlanGeometry> g;
  std::string err = on_device ? build_cuda_plan_on_device(plan.in, block_m, block_n, 0, true, &g)
                              : build_cuda_plan_on_host(plan.in, block_m, block_n, 0, &g);
  if (!err.empty()) return err;
  out->work.resize((size_t)g->work_capacity);
  out->runs.resize((size_t)g->run_capacity);
  out->combine.resize((size_t)g->combine_capacity);
  out->stats = g->stats;
  err = download_async(out->work.data(), g->work, out->work.size() * sizeof(PlanWork));
  if (err.empty()) err = download_async(out->runs.data(), g->runs, out->runs.size() * sizeof(KeyRun));
  if (err.empty()) err = download_async(out->combine.data(), g->combine, out->combine.size() * sizeof(PlanCombine));
  if (!err.empty()) return err;
  if (std::shared_ptr<CudaPlanGeometry::DeviceTotals> totals = g->totals)
    after_op([out, totals] { apply_totals(*totals, &out->stats); });  // after the totals' download
  return finish("maskPlan lists");  // the geometry's memory goes back to the cache, stream-ordered
}

}  // namespace lk::cuda
