// Device side of a mask plan's build (mask_plan.cu): tile summaries, then per query tile the
// count and the runs of its key tiles (mask_plan.h's walk, one thread per real query tile).
#pragma once
#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/mask_plan.h"
#include "../common/mask_rules.h"
#include "../common/tile_plan.h"

namespace lk::cuda {

// One thread per real tile: tile i of the batch (sequence b's are [base[b], base[b + 1])) summarized
// over its `tile` tokens.
__global__ void tile_summary_kernel(LayoutView layout, int batch, int tile, const int32_t* base, int32_t total,
                                    TileSummary* out) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int b = sequence_of(base, batch, idx);
  int64_t lo, hi;
  tile_tokens(layout.offsets[b], layout.offsets[b + 1], tile, (int)(idx - base[b]), &lo, &hi);
  out[idx] = summarize_tokens(layout.segments, layout.roles, lo, hi);
}

// The geometry and layouts the two passes share.
struct PlanBuildArgs {
  MaskRule rule;
  const int32_t* q_offsets;
  const int32_t* k_offsets;
  int batch, block_m, block_n;
  const int32_t* q_base;
  const int32_t* k_base;
  const TileSummary* q_sums;
  const TileSummary* k_sums;
  int32_t n_query_tiles;
};

// Pass 1: one thread per real query tile counts its key runs and listed tiles.
__global__ void plan_count_kernel(PlanBuildArgs a, QueryTileCount* counts) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.n_query_tiles) return;
  const int b = sequence_of(a.q_base, a.batch, i);
  counts[i] = count_key_runs(a.rule, a.q_offsets, a.k_offsets, b, (int)(i - a.q_base[b]), a.block_m, a.block_n,
                             a.q_sums[i], a.k_sums + a.k_base[b]);
}

// Pass 2: the same walk writes the runs at the offsets the host computed from the counts.
__global__ void plan_fill_kernel(PlanBuildArgs a, const int32_t* run_start, KeyRun* runs) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.n_query_tiles) return;
  const int b = sequence_of(a.q_base, a.batch, i);
  fill_key_runs(a.rule, a.q_offsets, a.k_offsets, b, (int)(i - a.q_base[b]), a.block_m, a.block_n, a.q_sums[i],
                a.k_sums + a.k_base[b], runs + run_start[i]);
}

}  // namespace lk::cuda
