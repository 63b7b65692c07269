// Host side of maskedAttentionBackward on CUDA: the tile plan (real tiles of both layouts, their
// summaries, work lists) is built on the host from the layouts (O(tokens)) and uploaded with them
// through the runtime's pinned staging into one cached device block (cuda/runtime.h), which also
// holds delta = dO · O; then three launches on the device's stream: delta (softmax), the dk / dv
// pass over key tiles and the dq pass over query tiles (masked_attention_backward_kernel.cuh).
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../runtime.h"
#include "masked_attention_backward_kernel.cuh"

namespace lk::cuda {
namespace {

template <typename T, int kCap>
void launch_passes(const AttentionBackwardParams& p, const BackwardPlan& plan, unsigned key_blocks, unsigned query_blocks) {
  const dim3 threads(BackwardTraits::kThreads);
  if (key_blocks > 0) {
    auto* dkdv = masked_attention_dkdv_kernel<T, kCap>;
    LK_LAUNCH(dkdv, dim3(key_blocks, (unsigned)p.fwd.kv_heads), threads, 0, stream())(p, plan);
  }
  if (query_blocks > 0) {
    auto* dq = masked_attention_dq_kernel<T, kCap>;
    LK_LAUNCH(dq, dim3(query_blocks, (unsigned)p.fwd.heads), threads, 0, stream())(p, plan);
  }
}

template <typename T>
void launch_for(const AttentionBackwardParams& p, const BackwardPlan& plan, unsigned key_blocks, unsigned query_blocks,
                unsigned delta_blocks, float* delta) {
  if (p.fwd.normalize == kSoftmax && delta_blocks > 0) {
    auto* kernel = attention_delta_kernel<T>;
    LK_LAUNCH(kernel, dim3(delta_blocks), dim3(128), 0, stream())(p, delta);
  }
  const int cap = p.fwd.head_dim > p.fwd.value_dim ? p.fwd.head_dim : p.fwd.value_dim;
  if (cap <= 32) launch_passes<T, 32>(p, plan, key_blocks, query_blocks);
  else if (cap <= 64) launch_passes<T, 64>(p, plan, key_blocks, query_blocks);
  else if (cap <= 128) launch_passes<T, 128>(p, plan, key_blocks, query_blocks);
  else launch_passes<T, 256>(p, plan, key_blocks, query_blocks);
}

}  // namespace

std::string masked_attention_backward(const AttentionBackwardParams& host) {
  discard_stale_error();
  const AttentionParams& f = host.fwd;
  if (f.batch == 0 || (f.tq == 0 && f.tk == 0)) return std::string();
  if (f.heads > kMaxGridYZ) return "maskedAttentionBackward: " + std::to_string(f.heads) + " heads exceed the CUDA grid's 65,535";
  if (f.head_dim > 256 || f.value_dim > 256) return "maskedAttentionBackward: head sizes up to 256 are supported";
  constexpr int BM = BackwardTraits::kBlockM, BN = BackwardTraits::kBlockN;
  const std::vector<int32_t> q_base = tile_bases(f.q_layout.offsets, f.batch, BM);
  const std::vector<int32_t> k_base = tile_bases(f.kv_layout.offsets, f.batch, BN);
  const std::vector<TileSummary> q_sum = tile_summaries(f.q_layout.offsets, f.q_layout.segments, f.q_layout.roles, f.batch, BM, q_base);
  const std::vector<TileSummary> k_sum = tile_summaries(f.kv_layout.offsets, f.kv_layout.segments, f.kv_layout.roles, f.batch, BN, k_base);
  const std::vector<TileRef> q_work = tiles_longest_first(q_base);
  const std::vector<TileRef> k_work = tiles_longest_first(k_base);
  unsigned key_blocks = 0, query_blocks = 0;
  std::string err = grid_x((int64_t)k_work.size(), "maskedAttentionBackward", &key_blocks);
  if (err.empty()) err = grid_x((int64_t)q_work.size(), "maskedAttentionBackward", &query_blocks);
  unsigned delta_blocks = 0;
  if (err.empty()) err = grid_x((f.tq * f.heads + 127) / 128, "maskedAttentionBackward", &delta_blocks);
  if (!err.empty()) return err;

  Upload up;
  const size_t n_off = (size_t)f.batch + 1;
  const size_t q_off = up.add(f.q_layout.offsets, n_off * 4);
  const size_t q_seg = f.q_layout.segments ? up.add(f.q_layout.segments, (size_t)f.tq * 4) : 0;
  const size_t q_role = f.q_layout.roles ? up.add(f.q_layout.roles, (size_t)f.tq) : 0;
  const size_t k_off = up.add(f.kv_layout.offsets, n_off * 4);
  const size_t k_seg = f.kv_layout.segments ? up.add(f.kv_layout.segments, (size_t)f.tk * 4) : 0;
  const size_t k_role = f.kv_layout.roles ? up.add(f.kv_layout.roles, (size_t)f.tk) : 0;
  const size_t q_base_at = up.add(q_base.data(), q_base.size() * 4);
  const size_t k_base_at = up.add(k_base.data(), k_base.size() * 4);
  const size_t q_sum_at = up.add(q_sum.data(), q_sum.size() * sizeof(TileSummary));
  const size_t k_sum_at = up.add(k_sum.data(), k_sum.size() * sizeof(TileSummary));
  const size_t q_work_at = up.add(q_work.data(), q_work.size() * sizeof(TileRef));
  const size_t k_work_at = up.add(k_work.data(), k_work.size() * sizeof(TileRef));
  const size_t delta_at = up.room((size_t)f.tq * f.heads * sizeof(float));  // written on the device
  err = up.commit("maskedAttentionBackward plan upload");
  if (!err.empty()) return err;
  unsigned char* dev = up.device();

  AttentionBackwardParams p = host;
  p.fwd.q_layout.offsets = reinterpret_cast<const int32_t*>(dev + q_off);
  p.fwd.q_layout.segments = f.q_layout.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr;
  p.fwd.q_layout.roles = f.q_layout.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr;
  p.fwd.kv_layout.offsets = reinterpret_cast<const int32_t*>(dev + k_off);
  p.fwd.kv_layout.segments = f.kv_layout.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr;
  p.fwd.kv_layout.roles = f.kv_layout.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr;
  float* delta = reinterpret_cast<float*>(dev + delta_at);
  const BackwardPlan plan{reinterpret_cast<const TileSummary*>(dev + q_sum_at), reinterpret_cast<const int32_t*>(dev + q_base_at),
                          reinterpret_cast<const TileSummary*>(dev + k_sum_at), reinterpret_cast<const int32_t*>(dev + k_base_at),
                          reinterpret_cast<const TileRef*>(dev + q_work_at), reinterpret_cast<const TileRef*>(dev + k_work_at), delta};
  KernelSpan span;
  span.begin();
  switch (f.dtype) {
    case kFloat16: launch_for<__half>(p, plan, key_blocks, query_blocks, delta_blocks, delta); break;
    case kBFloat16: launch_for<__nv_bfloat16>(p, plan, key_blocks, query_blocks, delta_blocks, delta); break;
    default: launch_for<float>(p, plan, key_blocks, query_blocks, delta_blocks, delta); break;
  }
  span.end();
  return finish("maskedAttentionBackward");  // the plan block goes back to the cache, stream-ordered
}

}  // namespace lk::cuda
