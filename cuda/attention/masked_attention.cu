// Host side of maskedAttention on CUDA: uploads the layouts and the tile plan (prefix sums of each
// sequence's tiles and the list of real query tiles, cuda/common/tile_plan.h) through the runtime's
// pinned staging (cuda/runtime.h: one async copy on the device's stream), summarizes the real
// tiles on the device and launches the kernel instantiated for the dtype and head capacity over the
// real query tiles only: memory and blocks follow the tokens, never batch x the longest sequence.
// Grid sizes are computed in 64-bit and checked against CUDA's limits (x < 2^31, heads in y at most
// 65,535); every failure clears the thread's last error (common/host_check.cuh).
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../multistream/staged_ops.h"
#include "../runtime.h"
#include "masked_attention_kernel.cuh"
#include "tc_attention.cuh"

namespace lk::cuda {
namespace {

// Device addresses of the tile plan.
struct DevicePlan {
  const TileRef* work;  // [q tiles]
  const TileSummary* q_tiles;
  const int32_t* q_base;
  const TileSummary* k_tiles;
  const int32_t* k_base;
  int32_t n_work;
};

template <typename T, int kCap>
void launch(const AttentionParams& p, const DevicePlan& plan) {
  using Tr = AttentionTraits<kCap>;
  const dim3 grid((unsigned)plan.n_work, (unsigned)p.heads, 1);
  auto* kernel = masked_attention_kernel<T, kCap>;
  LK_LAUNCH(kernel, grid, dim3(Tr::kThreads), 0, stream())(p, plan.work, plan.q_tiles, plan.q_base, plan.k_tiles, plan.k_base);
}

template <typename T>
void launch_for_capacity(int cap, const AttentionParams& p, const DevicePlan& plan) {
  switch (cap) {
    case 32: launch<T, 32>(p, plan); break;
    case 64: launch<T, 64>(p, plan); break;
    case 128: launch<T, 128>(p, plan); break;
    default: launch<T, 256>(p, plan); break;
  }
}

int block_m(int cap) {
  switch (cap) {
    case 32: return AttentionTraits<32>::kBlockM;
    case 64: return AttentionTraits<64>::kBlockM;
    case 128: return AttentionTraits<128>::kBlockM;
    default: return AttentionTraits<256>::kBlockM;
  }
}

int block_n(int cap) {
  switch (cap) {
    case 32: return AttentionTraits<32>::kBlockN;
    case 64: return AttentionTraits<64>::kBlockN;
    case 128: return AttentionTraits<128>::kBlockN;
    default: return AttentionTraits<256>::kBlockN;
  }
}

}  // namespace

bool head_dim_supported(int dim) {
  return dim == 8 || dim == 16 || dim == 32 || dim == 64 || dim == 128 || dim == 256;
}

std::string issue_masked_attention(const AttentionParams& host) {
  if (host.tq == 0 || host.batch == 0) return std::string();
  // Heads are the grid's y (the binding caps them at 65,535, the limit of grid.y).
  if (host.heads < 1 || host.heads > kMaxGridYZ)
    return "maskedAttention: " + std::to_string(host.heads) + " heads exceed the CUDA grid's 65,535";
  const int cap = head_capacity(host.head_dim, host.value_dim);
  // ---- tensor-core dispatch (tc_attention.cuh): float16 / bfloat16 on sm_80+ run the tensor-core
  // kernel, with its own tile sizes for the summaries; everything else the FP32 kernel.
  const TcChoice tc = choose_tc_attention(host);
  const int bm = tc.use ? tc.block_m : block_m(cap), bn = tc.use ? tc.block_n : block_n(cap);
  // ---- end of the tensor-core dispatch
  const std::vector<int32_t> q_base = tile_bases(host.q_layout.offsets, host.batch, bm);
  const std::vector<int32_t> k_base = tile_bases(host.kv_layout.offsets, host.batch, bn);
  const std::vector<TileRef> work = tiles_longest_first(q_base);
  const int32_t nq = q_base[(size_t)host.batch], nk = k_base[(size_t)host.batch];
  const bool shared_layout = host.kv_layout.offsets == host.q_layout.offsets &&
                             host.kv_layout.segments == host.q_layout.segments &&
                             host.kv_layout.roles == host.q_layout.roles;

  Upload st;  // one pinned staging buffer, one async copy, one device block from the cache
  const size_t n_off = (size_t)host.batch + 1;
  const size_t q_off = st.add(host.q_layout.offsets, n_off * 4);
  const size_t q_seg = host.q_layout.segments ? st.add(host.q_layout.segments, (size_t)host.tq * 4) : 0;
  const size_t q_role = host.q_layout.roles ? st.add(host.q_layout.roles, (size_t)host.tq) : 0;
  size_t k_off = q_off, k_seg = q_seg, k_role = q_role;
  if (!shared_layout) {
    k_off = st.add(host.kv_layout.offsets, n_off * 4);
    k_seg = host.kv_layout.segments ? st.add(host.kv_layout.segments, (size_t)host.tk * 4) : 0;
    k_role = host.kv_layout.roles ? st.add(host.kv_layout.roles, (size_t)host.tk) : 0;
  }
  const size_t q_base_at = st.add(q_base.data(), q_base.size() * sizeof(int32_t));
  const size_t k_base_at = st.add(k_base.data(), k_base.size() * sizeof(int32_t));
  const size_t work_at = st.add(work.data(), work.size() * sizeof(TileRef));
  // Summaries are written on the device: only their room is allocated, after the uploaded arrays.
  const size_t q_sum = st.room((size_t)nq * sizeof(TileSummary));
  const size_t k_sum = st.room((size_t)nk * sizeof(TileSummary));

  // Blocks of each launch (tile counts are int32; the summary grids are rounded up in 64-bit).
  const int threads = 128;
  unsigned work_blocks = 0, q_sum_blocks = 0, k_sum_blocks = 0;
  std::string err = grid_x(nq, "maskedAttention", &work_blocks);  // the grid's x is plan.n_work = nq
  if (err.empty()) err = grid_x(((int64_t)nq + threads - 1) / threads, "maskedAttention", &q_sum_blocks);
  if (err.empty()) err = grid_x(((int64_t)nk + threads - 1) / threads, "maskedAttention", &k_sum_blocks);
  if (!err.empty()) return err;

  err = st.commit("maskedAttention layout upload");
  if (!err.empty()) return err;
  unsigned char* dev = st.device();

  AttentionParams p = host;
  p.q_layout.offsets = reinterpret_cast<const int32_t*>(dev + q_off);
  p.q_layout.segments = host.q_layout.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr;
  p.q_layout.roles = host.q_layout.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr;
  p.kv_layout.offsets = reinterpret_cast<const int32_t*>(dev + k_off);
  p.kv_layout.segments = host.kv_layout.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr;
  p.kv_layout.roles = host.kv_layout.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr;
  TileSummary* q_tiles = reinterpret_cast<TileSummary*>(dev + q_sum);
  TileSummary* k_tiles = reinterpret_cast<TileSummary*>(dev + k_sum);
  const DevicePlan plan{reinterpret_cast<const TileRef*>(dev + work_at), q_tiles, reinterpret_cast<const int32_t*>(dev + q_base_at),
                        k_tiles, reinterpret_cast<const int32_t*>(dev + k_base_at), nq};

  if (err.empty() && nq > 0) {
    KernelSpan span;
    span.begin();
    auto* summary = tile_summary_kernel;
    LK_LAUNCH(summary, dim3(q_sum_blocks), dim3(threads), 0, stream())(p.q_layout, host.batch, bm, plan.q_base, nq, q_tiles);
    if (nk > 0)
      LK_LAUNCH(summary, dim3(k_sum_blocks), dim3(threads), 0, stream())(p.kv_layout, host.batch, bn, plan.k_base, nk, k_tiles);
    if (tc.use)  // tensor-core dispatch
      launch_tc_attention(tc, p, plan.work, plan.n_work, plan.q_tiles, plan.q_base, plan.k_tiles, plan.k_base);
    else switch (host.dtype) {
      case kFloat16: launch_for_capacity<__half>(cap, p, plan); break;
      case kBFloat16: launch_for_capacity<__nv_bfloat16>(cap, p, plan); break;
      default: launch_for_capacity<float>(cap, p, plan); break;
    }
    span.end();
  }
  return err;  // the layout block goes back to the cache, stream-ordered (cuda/runtime.h)
}

std::string masked_attention(const AttentionParams& host) {
  discard_stale_error();
  const std::string err = issue_masked_attention(host);
  return err.empty() ? finish("maskedAttention") : err;
}

}  // namespace lk::cuda
