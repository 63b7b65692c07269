// Host side of the tensor-core sparse attention (tc_sparse_attention.cuh): whether it applies and
// its launch. sparse.cu calls these for sparseAttention and the unfused indexedCrossAttention.
#pragma once
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/device_info.h"
#include "../common/sparse_params.h"
#include "../runtime.h"
#include "tc_sparse_attention.cuh"

namespace lk::cuda {

constexpr int kTcSparseMaxGroup = 16;  // query heads per kv head: one m16 tile

inline int tc_sparse_capacity(const SparseParams& p) {
  const int d = p.head_dim > p.value_dim ? p.head_dim : p.value_dim;
  return d <= 16 ? 16 : d <= 32 ? 32 : d <= 64 ? 64 : 128;
}

inline int tc_sparse_smem_bytes(int cap) {
  switch (cap) {
    case 16: return TcSparseTraits<16>::kSmemBytes;
    case 32: return TcSparseTraits<32>::kSmemBytes;
    case 64: return TcSparseTraits<64>::kSmemBytes;
    default: return TcSparseTraits<128>::kSmemBytes;
  }
}

// float16 / bfloat16, H / Hkv <= 16, D and Dv powers of two in 8..128, 16-byte aligned tensors,
// sm_80+ with the shared memory the capacity needs.
inline bool tc_sparse_applies(const SparseParams& p) {
  if (p.dtype != kFloat16 && p.dtype != kBFloat16) return false;
  if (p.kv_heads < 1 || p.kv_heads > 65535 || p.heads % p.kv_heads != 0 || p.heads / p.kv_heads > kTcSparseMaxGroup) return false;
  const auto dim_ok = [](int d) { return d >= 8 && d <= 128 && (d & (d - 1)) == 0; };
  if (!dim_ok(p.head_dim) || !dim_ok(p.value_dim)) return false;
  const auto aligned = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  if (!aligned(p.q) || !aligned(p.k) || !aligned(p.v)) return false;
  int sm = 0, optin = 0;
  if (!tc_device_info(&sm, &optin) || sm < 80) return false;
  const int need = tc_sparse_smem_bytes(tc_sparse_capacity(p));
  return need <= 48 * 1024 || need <= optin;
}

template <typename T, int kCap>
void launch_tc_sparse_cap(const SparseParams& p) {
  using Tr = TcSparseTraits<kCap>;
  auto* kernel = tc_sparse_attention_kernel<T, kCap>;
  // Above 48 KiB a kernel must opt in (per kernel; cheap, and safe to repeat from any thread). A
  // failure is left for the caller's cudaGetLastError.
  if (Tr::kSmemBytes > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes) != cudaSuccess)
    return;
  LK_LAUNCH(kernel, dim3((unsigned)p.nq, (unsigned)p.kv_heads), dim3(Tr::kThreads), (size_t)Tr::kSmemBytes, stream())(p);
}

// Grid (queries, kv heads): the host has checked nq against grid.x's limit; kv_heads <= 65,535.
inline void launch_tc_sparse(const SparseParams& p) {
  const bool bf16 = p.dtype == kBFloat16;
  switch (tc_sparse_capacity(p)) {
    case 16: bf16 ? launch_tc_sparse_cap<__nv_bfloat16, 16>(p) : launch_tc_sparse_cap<__half, 16>(p); break;
    case 32: bf16 ? launch_tc_sparse_cap<__nv_bfloat16, 32>(p) : launch_tc_sparse_cap<__half, 32>(p); break;
    case 64: bf16 ? launch_tc_sparse_cap<__nv_bfloat16, 64>(p) : launch_tc_sparse_cap<__half, 64>(p); break;
    default: bf16 ? launch_tc_sparse_cap<__nv_bfloat16, 128>(p) : launch_tc_sparse_cap<__half, 128>(p); break;
  }
}

}  // namespace lk::cuda
