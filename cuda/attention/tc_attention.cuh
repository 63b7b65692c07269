// Host side of the tensor-core attention kernel (tc_attention_kernel.cuh): when it applies, its
// tile sizes (for the tile summaries) and its launch. masked_attention.cu asks choose_tc_attention
// once per call and launches either this kernel or the FP32 one over the same tile plan.
#pragma once
#include <stdint.h>


#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/device_info.h"
#include "../common/mask_plan.h"
#include "../common/mask_rules.h"
#include "../common/tile_plan.h"
#include "../runtime.h"
#include "tc_attention_kernel.cuh"
#include "tc_traits.cuh"

namespace lk::cuda {

struct TcChoice {
  bool use = false;
  int cap = 0;      // head capacity the kernel is instantiated for
  int pack = 1;     // heads per block (tc_head_pack)
  int block_m = 0;  // query / key tile sizes of the summaries and the grid
  int block_n = 0;
};

inline int tc_smem_bytes(int cap, int pack) {
  switch (cap) {
    case 16: return pack == 4 ? TcAttentionTraits<16, 4>::kSmemBytes
                  : pack == 2 ? TcAttentionTraits<16, 2>::kSmemBytes : TcAttentionTraits<16>::kSmemBytes;
    case 32: return pack == 2 ? TcAttentionTraits<32, 2>::kSmemBytes : TcAttentionTraits<32>::kSmemBytes;
    case 64: return TcAttentionTraits<64>::kSmemBytes;
    case 128: return TcAttentionTraits<128>::kSmemBytes;
    default: return TcAttentionTraits<256>::kSmemBytes;
  }
}

// The tensor-core kernel runs float16 / bfloat16 (softmax and silu) on sm_80 and newer (the
// emulator reports 9.0, so the parity suites run it), with every tensor 16-byte aligned (cp.async
// and the 16-byte output stores) and head sizes powers of two in 8..256; heads of 8..32 are packed
// several per block when the head count allows (tc_head_pack). Everything else — float32,
// sm_75, an unaligned view — keeps the FP32 kernel.
inline TcChoice choose_tc_attention(const AttentionParams& p) {
  TcChoice c;
  if (p.dtype != kFloat16 && p.dtype != kBFloat16) return c;
  const auto dim_ok = [](int d) { return d >= 8 && d <= 256 && (d & (d - 1)) == 0; };
  if (!dim_ok(p.head_dim) || !dim_ok(p.value_dim)) return c;
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  if (!aligned(p.q) || !aligned(p.k) || !aligned(p.v) || !aligned(p.out)) return c;
  int sm = 0, optin = 0;
  if (!tc_device_info(&sm, &optin) || sm < 80) return c;
  const int cap = tc_head_capacity(p.head_dim, p.value_dim);
  const int pack = tc_head_pack(cap, p.heads);
  const int need = tc_smem_bytes(cap, pack);
  if (need > 48 * 1024 && need > optin) return c;
  c.use = true;
  c.cap = cap;
  c.pack = pack;
  static_assert(TcAttentionTraits<16>::kBlockM == TcAttentionTraits<256>::kBlockM, "one query tile size");
  static_assert(TcAttentionTraits<16>::kBlockN == TcAttentionTraits<128>::kBlockN, "one key tile size up to 128");
  c.block_m = TcAttentionTraits<64>::kBlockM;
  c.block_n = cap == 256 ? TcAttentionTraits<256>::kBlockN : TcAttentionTraits<64>::kBlockN;
  return c;
}

template <typename T, int kCap, int kPack = 1>
void launch_tc_attention(const AttentionParams& p, const PlanView& plan, int32_t n_work, const SplitPartials& part) {
  using Tr = TcAttentionTraits<kCap, kPack>;
  auto* kernel = tc_attention_kernel<T, kCap, kPack>;
  // Above 48 KiB a kernel must opt in (per kernel; cheap, and safe to repeat from any thread). A
  // failure is left for the caller's cudaGetLastError.
  if (Tr::kSmemBytes > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes) != cudaSuccess)
    return;
  LK_LAUNCH(kernel, dim3((unsigned)n_work, (unsigned)(p.heads / kPack), 1), dim3(Tr::kThreads), (size_t)Tr::kSmemBytes, stream())(p, plan, part);
}

template <typename T>
void launch_tc_attention_for(const TcChoice& c, const AttentionParams& p, const PlanView& plan, int32_t n_work,
                             const SplitPartials& part) {
  switch (c.cap) {
    case 16:
      if (c.pack == 4) launch_tc_attention<T, 16, 4>(p, plan, n_work, part);
      else if (c.pack == 2) launch_tc_attention<T, 16, 2>(p, plan, n_work, part);
      else launch_tc_attention<T, 16>(p, plan, n_work, part);
      break;
    case 32:
      if (c.pack == 2) launch_tc_attention<T, 32, 2>(p, plan, n_work, part);
      else launch_tc_attention<T, 32>(p, plan, n_work, part);
      break;
    case 64: launch_tc_attention<T, 64>(p, plan, n_work, part); break;
    case 128: launch_tc_attention<T, 128>(p, plan, n_work, part); break;
    default: launch_tc_attention<T, 256>(p, plan, n_work, part); break;
  }
}

// Launches the kernel `c` chose for p's dtype over the plan's n_work items.
inline void launch_tc_attention(const TcChoice& c, const AttentionParams& p, const PlanView& plan, int32_t n_work,
                                const SplitPartials& part) {
  if (p.dtype == kBFloat16) launch_tc_attention_for<__nv_bfloat16>(c, p, plan, n_work, part);
  else launch_tc_attention_for<__half>(c, p, plan, n_work, part);
}

}  // namespace lk::cuda
