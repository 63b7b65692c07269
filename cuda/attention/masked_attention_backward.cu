// Host side of maskedAttentionBackward on CUDA: the tile plan (real tiles of both layouts, their
// summaries, work lists) is built on the host from the layouts (O(tokens)) and uploaded with them
// through the runtime's pinned staging into one cached device block (cuda/runtime.h), which also
// holds delta = dO · O; then three launches on the device's stream: delta (softmax), the dk / dv
// pass over key tiles and the dq pass over query tiles: on tensor cores (tc_attention_backward_kernel.cuh)
// for float16 / bfloat16 on sm_80+ with head sizes up to 128, else the scalar kernels
// (masked_attention_backward_kernel.cuh).
#include <cstring>
#include <string>
#include <vector>

#include "../backend.h"
#include "../common/compat.cuh"
#include "../common/host_check.cuh"
#include "../kernel_timing.h"
#include "../runtime.h"
#include "../common/device_info.h"
#include "masked_attention_backward_kernel.cuh"
#include "tc_attention_backward_kernel.cuh"

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

// The layouts' device copies inside the call's upload block.
struct LayoutOnDevice {
  const AttentionParams* f;
  size_t q_off, q_seg, q_role, k_off, k_seg, k_role;
  // Points p's layouts at the committed block `dev`.
  void apply(unsigned char* dev, AttentionParams* p) const {
    p->q_layout.offsets = reinterpret_cast<const int32_t*>(dev + q_off);
    p->q_layout.segments = f->q_layout.segments ? reinterpret_cast<const int32_t*>(dev + q_seg) : nullptr;
    p->q_layout.roles = f->q_layout.roles ? reinterpret_cast<const uint8_t*>(dev + q_role) : nullptr;
    p->kv_layout.offsets = reinterpret_cast<const int32_t*>(dev + k_off);
    p->kv_layout.segments = f->kv_layout.segments ? reinterpret_cast<const int32_t*>(dev + k_seg) : nullptr;
    p->kv_layout.roles = f->kv_layout.roles ? reinterpret_cast<const uint8_t*>(dev + k_role) : nullptr;
  }
};

LayoutOnDevice upload_layouts(const AttentionParams& f, Upload* up) {
  LayoutOnDevice l;
  l.f = &f;
  const size_t n_off = (size_t)f.batch + 1;
  l.q_off = up->add(f.q_layout.offsets, n_off * 4);
  l.q_seg = f.q_layout.segments ? up->add(f.q_layout.segments, (size_t)f.tq * 4) : 0;
  l.q_role = f.q_layout.roles ? up->add(f.q_layout.roles, (size_t)f.tq) : 0;
  l.k_off = up->add(f.kv_layout.offsets, n_off * 4);
  l.k_seg = f.kv_layout.segments ? up->add(f.kv_layout.segments, (size_t)f.tk * 4) : 0;
  l.k_role = f.kv_layout.roles ? up->add(f.kv_layout.roles, (size_t)f.tk) : 0;
  return l;
}

// Tiles of `tile` tokens of one layout (tile_plan.h): bases, summaries and, when asked, the work
// list, staged into the call's upload block.
struct TilesOnDevice {
  std::vector<int32_t> base;
  std::vector<TileSummary> sum;
  std::vector<TileRef> work;
  size_t base_at = 0, sum_at = 0, work_at = 0;
  TilesOnDevice(const LayoutView& l, int batch, int tile, bool with_work, Upload* up)
      : base(tile_bases(l.offsets, batch, tile)), sum(tile_summaries(l.offsets, l.segments, l.roles, batch, tile, base)) {
    if (with_work) work = tiles_longest_first(base);
    base_at = up->add(base.data(), base.size() * 4);
    sum_at = up->add(sum.data(), sum.size() * sizeof(TileSummary));
    if (with_work) work_at = up->add(work.data(), work.size() * sizeof(TileRef));
  }
  const int32_t* base_on(unsigned char* dev) const { return reinterpret_cast<const int32_t*>(dev + base_at); }
  const TileSummary* sum_on(unsigned char* dev) const { return reinterpret_cast<const TileSummary*>(dev + sum_at); }
  const TileRef* work_on(unsigned char* dev) const { return reinterpret_cast<const TileRef*>(dev + work_at); }
};

// What both paths hold once their tiles are staged and the upload is committed: the grids of both
// passes and of delta, the params pointed at the device copies of the layouts, and delta's room.
struct CommittedBackward {
  unsigned key_blocks = 0, query_blocks = 0, delta_blocks = 0;
  unsigned char* dev = nullptr;  // the call's upload block
  AttentionBackwardParams p{};
  float* delta = nullptr;  // [tq, heads], written on the device
};

// Checks the grids (key_tiles / query_tiles work items, delta's blocks) against the CUDA limits,
// adds delta's room, commits `up` and fills *out. "" or the error (then nothing was launched).
std::string commit_backward(const AttentionBackwardParams& host, const LayoutOnDevice& lay, size_t key_tiles, size_t query_tiles,
                            Upload* up, CommittedBackward* out) {
  const AttentionParams& f = host.fwd;
  std::string err = grid_x((int64_t)key_tiles, "maskedAttentionBackward", &out->key_blocks);
  if (err.empty()) err = grid_x((int64_t)query_tiles, "maskedAttentionBackward", &out->query_blocks);
  if (err.empty()) err = grid_x((f.tq * f.heads + 127) / 128, "maskedAttentionBackward", &out->delta_blocks);
  if (!err.empty()) return err;
  const size_t delta_at = up->room((size_t)f.tq * f.heads * sizeof(float));
  err = up->commit("maskedAttentionBackward plan upload");
  if (!err.empty()) return err;
  out->dev = up->device();
  out->p = host;
  lay.apply(out->dev, &out->p.fwd);
  out->delta = reinterpret_cast<float*>(out->dev + delta_at);
  return std::string();
}

// The tensor-core passes run float16 / bfloat16 on sm_80 and newer (the emulator reports 9.0, so the
// parity suites run them) with head sizes powers of two in 8..128 and every tensor 16-byte aligned
// (cp.async rows); returns the head capacity they are instantiated for, 0 for the scalar kernels.
int choose_tc_backward(const AttentionBackwardParams& p) {
  const AttentionParams& f = p.fwd;
  if (f.dtype != kFloat16 && f.dtype != kBFloat16) return 0;
  const auto dim_ok = [](int d) { return d >= 8 && d <= 128 && (d & (d - 1)) == 0; };
  if (!dim_ok(f.head_dim) || !dim_ok(f.value_dim)) return 0;
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  for (const void* ptr : {f.q, f.k, f.v, p.d_out, (const void*)p.dq, (const void*)p.dk, (const void*)p.dv})
    if (!aligned(ptr)) return 0;
  int sm = 0, optin = 0;
  if (!tc_device_info(&sm, &optin) || sm < 80) return 0;
  const int cap = tc_head_capacity(f.head_dim, f.value_dim);
  const int need = cap <= 16 ? TcBackwardTraits<16>::kDqSmemBytes : cap <= 32 ? TcBackwardTraits<32>::kDqSmemBytes
                 : cap <= 64 ? TcBackwardTraits<64>::kDqSmemBytes : TcBackwardTraits<128>::kDqSmemBytes;  // the larger pass
  if (need > 48 * 1024 && need > optin) return 0;
  return cap;
}

// A kernel above 48 KiB of shared memory must opt in (a failure is left for cudaGetLastError).
template <typename K>
bool allow_smem(K* kernel, int bytes) {
  return bytes <= 48 * 1024 || cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) == cudaSuccess;
}

template <typename T, int kCap>
void launch_tc_passes(const AttentionBackwardParams& p, const TcBackwardPlan& plan, unsigned key_blocks, unsigned query_blocks) {
  using Tr = TcBackwardTraits<kCap>;
  if (key_blocks > 0) {
    auto* dkdv = tc_attention_dkdv_kernel<T, kCap>;
    if (!allow_smem(dkdv, Tr::kDkdvSmemBytes)) return;
    LK_LAUNCH(dkdv, dim3(key_blocks, (unsigned)p.fwd.kv_heads), dim3(Tr::kThreads), (size_t)Tr::kDkdvSmemBytes, stream())(p, plan);
  }
  if (query_blocks > 0) {
    auto* dq = tc_attention_dq_kernel<T, kCap>;
    if (!allow_smem(dq, Tr::kDqSmemBytes)) return;
    LK_LAUNCH(dq, dim3(query_blocks, (unsigned)p.fwd.heads), dim3(Tr::kThreads), (size_t)Tr::kDqSmemBytes, stream())(p, plan);
  }
}

template <typename T>
void launch_tc_for(int cap, const AttentionBackwardParams& p, const TcBackwardPlan& plan, unsigned key_blocks, unsigned query_blocks,
                   unsigned delta_blocks, float* delta) {
  if (p.fwd.normalize == kSoftmax && delta_blocks > 0) {
    auto* kernel = attention_delta_kernel<T>;
    LK_LAUNCH(kernel, dim3(delta_blocks), dim3(128), 0, stream())(p, delta);
  }
  switch (cap) {
    case 16: launch_tc_passes<T, 16>(p, plan, key_blocks, query_blocks); break;
    case 32: launch_tc_passes<T, 32>(p, plan, key_blocks, query_blocks); break;
    case 64: launch_tc_passes<T, 64>(p, plan, key_blocks, query_blocks); break;
    default: launch_tc_passes<T, 128>(p, plan, key_blocks, query_blocks); break;
  }
}

// The tensor-core path's plan: summaries of 32- and 64-row query tiles and 64-key tiles, the work
// lists of the two passes; uploaded as the scalar path's.
std::string backward_on_tensor_cores(const AttentionBackwardParams& host, int cap) {
  const AttentionParams& f = host.fwd;
  using Tr = TcBackwardTraits<64>;
  static_assert(TcBackwardTraits<16>::kKeyBlock == Tr::kKeyBlock && TcBackwardTraits<128>::kQueryTile == Tr::kQueryTile &&
                    TcBackwardTraits<128>::kRowBlock == Tr::kRowBlock && Tr::kKeyBlock == Tr::kKeyTile,
                "one set of tile sizes for every capacity");
  Upload up;
  const LayoutOnDevice lay = upload_layouts(f, &up);
  const TilesOnDevice q32(f.q_layout, f.batch, Tr::kQueryTile, false, &up), q64(f.q_layout, f.batch, Tr::kRowBlock, true, &up);
  const TilesOnDevice k64(f.kv_layout, f.batch, Tr::kKeyTile, true, &up);
  CommittedBackward c;
  const std::string err = commit_backward(host, lay, k64.work.size(), q64.work.size(), &up, &c);
  if (!err.empty()) return err;
  unsigned char* dev = c.dev;
  const TcBackwardPlan plan{q32.sum_on(dev), q32.base_on(dev), q64.sum_on(dev), q64.base_on(dev), k64.sum_on(dev), k64.base_on(dev),
                            q64.work_on(dev), k64.work_on(dev), c.delta};
  KernelSpan span;
  span.begin();
  if (f.dtype == kBFloat16) launch_tc_for<__nv_bfloat16>(cap, c.p, plan, c.key_blocks, c.query_blocks, c.delta_blocks, c.delta);
  else launch_tc_for<__half>(cap, c.p, plan, c.key_blocks, c.query_blocks, c.delta_blocks, c.delta);
  span.end();
  return finish("maskedAttentionBackward");
}

}  // namespace

std::string masked_attention_backward(const AttentionBackwardParams& host) {
  discard_stale_error();
  const AttentionParams& f = host.fwd;
  if (f.batch == 0 || (f.tq == 0 && f.tk == 0)) return std::string();
  if (f.heads > kMaxGridYZ) return "maskedAttentionBackward: " + std::to_string(f.heads) + " heads exceed the CUDA grid's 65,535";
  if (f.head_dim > 256 || f.value_dim > 256) return "maskedAttentionBackward: head sizes up to 256 are supported";
  if (const int cap = choose_tc_backward(host)) return backward_on_tensor_cores(host, cap);
  Upload up;
  const LayoutOnDevice lay = upload_layouts(f, &up);
  const TilesOnDevice qt(f.q_layout, f.batch, BackwardTraits::kBlockM, true, &up), kt(f.kv_layout, f.batch, BackwardTraits::kBlockN, true, &up);
  CommittedBackward c;
  const std::string err = commit_backward(host, lay, kt.work.size(), qt.work.size(), &up, &c);
  if (!err.empty()) return err;
  unsigned char* dev = c.dev;
  const BackwardPlan plan{qt.sum_on(dev), qt.base_on(dev), kt.sum_on(dev), kt.base_on(dev), qt.work_on(dev), kt.work_on(dev), c.delta};
  KernelSpan span;
  span.begin();
  switch (f.dtype) {
    case kFloat16: launch_for<__half>(c.p, plan, c.key_blocks, c.query_blocks, c.delta_blocks, c.delta); break;
    case kBFloat16: launch_for<__nv_bfloat16>(c.p, plan, c.key_blocks, c.query_blocks, c.delta_blocks, c.delta); break;
    default: launch_for<float>(c.p, plan, c.key_blocks, c.query_blocks, c.delta_blocks, c.delta); break;
  }
  span.end();
  return finish("maskedAttentionBackward");  // the plan block goes back to the cache, stream-ordered
}

}  // namespace lk::cuda
