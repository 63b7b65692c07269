// Tensor-core and asynchronous-copy primitives (SPEC §8): each function is the PTX instruction it
// names, with the PTX ISA's register and fragment layouts, so kernels written against them run on
// a GPU and, unchanged, on the CPU emulator (cuda/emu/emu_tensor_core.cc), which computes the same
// result from the same per-lane fragments (float32 accumulation).
//
// Fragment layouts (PTX ISA 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point
// type" and 9.7.14.5.15 "ldmatrix"). Lane l: groupID g = l >> 2, threadID_in_group t = l % 4. A
// 32-bit register holds two 16-bit elements, the lower half first (the lower column / row index).
//   A (16x16, row-major, a[4]): a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                               a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   B (16x8, "col": K x N, b[2]): b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   C / D (16x8 float, c[4]):   c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//   ldmatrix .x4 / .x2 (8x8 matrices of 16-bit elements, one 16-byte row per address): lanes
//     8i..8i+7 give the addresses of rows 0..7 of matrix i (x4: lanes 0-31, matrices 0-3; x2: lanes
//     0-15, matrices 0-1). r[i] of lane l = M_i[g][2t, 2t+1]; with .trans, r[i] = M_i[2t, 2t+1][g].
//     So ldmatrix_x4 of the 16x16 A tile (matrices: rows 0-7 / 8-15 x cols 0-7, then rows 0-7 /
//     8-15 x cols 8-15) yields a[0..3]; ldmatrix_x2_trans of a K x N row-major B tile (rows k 0-7,
//     then 8-15, columns n 0-7) yields b[0..1]; ldmatrix_x2 of an N x K row-major tile (B^T) too.
//   Every lane must pass a valid, 16-byte-aligned shared-memory address, also the lanes whose
//   address .x2 ignores (PTX: on sm_75 all threads must hold valid addresses; repeat lane l & 15's).
//
// Rules: mma_* and ldmatrix_* are warp-collective (.sync.aligned): all 32 lanes of a full warp
// call them together, with the same instruction. cp_async_16 copies 16 bytes (both addresses
// 16-byte aligned) from global to shared memory; cp_async_commit closes the thread's current group
// of copies; cp_async_wait<N> returns once all but the N most recently committed groups of this
// thread have landed. Other threads see the data after the wait and a __syncthreads. On the
// emulator a destination reads 0xff bytes until its wait, and a thread that ends with copies never
// waited for fails the launch (cudaErrorLaunchFailure, with a message on stderr).
//
// Architectures: sm_80 and newer run the instructions above. sm_75 (Turing) has ldmatrix and
// mma.m16n8k8.f16 but neither m16n8k16, bf16 mma nor cp.async, so there:
//   - mma_m16n8k16_f16 is two mma.m16n8k8.f16 (k 0-7 from a[0], a[1], b[0]; k 8-15 from a[2], a[3], b[1]);
//   - mma_m16n8k16_bf16 is computed from the fragments with 32 warp shuffles and float FMAs
//     (mma_m16n8k16_bf16_by_shuffles below, also run on the emulator by the selftest): correct, slow;
//   - cp_async_16 is a synchronous 16-byte load + store and commit / wait do nothing.
#pragma once
#include <stdint.h>

#include "compat.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "cuda/common/mma.cuh needs sm_75 or newer (ldmatrix)"
#endif

namespace lk::cuda {

namespace mma_detail {

__device__ __forceinline__ int lane_in_warp() {
#ifdef LK_CUDA_EMULATE
  return ::lk_emu::lane_id();
#elif defined(__CUDA_ARCH__)
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  return (int)lane;
#else
  return 0;
#endif
}

__device__ __forceinline__ float bf16_lo(uint32_t r) { return __uint_as_float(r << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t r) { return __uint_as_float(r & 0xffff0000u); }

#if defined(__CUDA_ARCH__) && !defined(LK_CUDA_EMULATE)
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

}  // namespace mma_detail

// mma.m16n8k16 with bf16 inputs computed from the fragments by warp shuffles (the sm_75 path;
// exact products, float32 FMA accumulation in k order 2j, 2j+1, 2j+8, 2j+9 for j = 0..3). Lane
// (g, t) gathers A rows g and g+8 from lanes 4g + j and B columns 2t, 2t+1 from lanes 8t + j and
// 8t + 4 + j.
__device__ __forceinline__ void mma_m16n8k16_bf16_by_shuffles(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                              const float (&c)[4]) {
  using mma_detail::bf16_hi;
  using mma_detail::bf16_lo;
  const int lane = mma_detail::lane_in_warp();
  const int g = lane >> 2, t = lane & 3;
  float acc[4] = {c[0], c[1], c[2], c[3]};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int la = 4 * g + j, lb0 = 8 * t + j, lb1 = 8 * t + 4 + j;
    const uint32_t ar0 = __shfl_sync(0xffffffffu, a[0], la);  // A[g][2j, 2j+1]
    const uint32_t ar1 = __shfl_sync(0xffffffffu, a[1], la);  // A[g+8][2j, 2j+1]
    const uint32_t ar2 = __shfl_sync(0xffffffffu, a[2], la);  // A[g][2j+8, 2j+9]
    const uint32_t ar3 = __shfl_sync(0xffffffffu, a[3], la);  // A[g+8][2j+8, 2j+9]
    const uint32_t b00 = __shfl_sync(0xffffffffu, b[0], lb0);  // B[2j, 2j+1][2t]
    const uint32_t b01 = __shfl_sync(0xffffffffu, b[1], lb0);  // B[2j+8, 2j+9][2t]
    const uint32_t b10 = __shfl_sync(0xffffffffu, b[0], lb1);  // B[2j, 2j+1][2t+1]
    const uint32_t b11 = __shfl_sync(0xffffffffu, b[1], lb1);  // B[2j+8, 2j+9][2t+1]
    const uint32_t rows[2][2] = {{ar0, ar2}, {ar1, ar3}};
    const uint32_t cols[2][2] = {{b00, b01}, {b10, b11}};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t* ra = rows[i >> 1];
      const uint32_t* cb = cols[i & 1];
      float s = acc[i];
      s = fmaf(bf16_lo(ra[0]), bf16_lo(cb[0]), s);
      s = fmaf(bf16_hi(ra[0]), bf16_hi(cb[0]), s);
      s = fmaf(bf16_lo(ra[1]), bf16_lo(cb[1]), s);
      s = fmaf(bf16_hi(ra[1]), bf16_hi(cb[1]), s);
      acc[i] = s;
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) d[i] = acc[i];
}

#ifdef LK_CUDA_EMULATE
// ---------------------------------------------------------------- the CPU emulator

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  ::lk_emu::mma_m16n8k16(d, a, b, c, ::lk_emu::MmaInput::kBf16);
}
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  ::lk_emu::mma_m16n8k16(d, a, b, c, ::lk_emu::MmaInput::kF16);
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) { ::lk_emu::cp_async_16(smem_dst, gmem_src); }
__device__ __forceinline__ void cp_async_commit() { ::lk_emu::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N is how many of the newest groups may stay pending");
  ::lk_emu::cp_async_wait(N);
}

#else
// ---------------------------------------------------------------- nvcc: inline PTX

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  mma_m16n8k16_bf16_by_shuffles(d, a, b, c);  // sm_75: no bf16 tensor-core instruction
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  // sm_75: k 0-7 then k 8-15, each an m16n8k8 (A: a[0] rows g, a[1] rows g+8; B: b[0]).
  float t0, t1, t2, t3;
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %8, %9, %10};\n"
      : "=f"(t0), "=f"(t1), "=f"(t2), "=f"(t3)
      : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %8, %9, %10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[2]), "r"(a[3]), "r"(b[1]), "f"(t0), "f"(t1), "f"(t2), "f"(t3));
#endif
}

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(mma_detail::shared_address(smem_dst)), "l"(gmem_src)
               : "memory");
#elif defined(__CUDA_ARCH__)
  *static_cast<uint4*>(smem_dst) = *static_cast<const uint4*>(gmem_src);  // sm_75: synchronous
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp_async_wait<N>: N is how many of the newest groups may stay pending");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

#endif  // LK_CUDA_EMULATE

// ldmatrix of kCount (2 or 4) 8x8 matrices of 16-bit elements, transposed when kTranspose; the
// emulator's or the PTX instruction. (PTX takes the instruction as one literal, so each variant
// spells its own text; the operands are the kCount registers and the shared address.)
template <int kCount, bool kTranspose>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kCount], const void* smem_row) {
  static_assert(kCount == 2 || kCount == 4, "ldmatrix loads 2 or 4 matrices here");
#ifdef LK_CUDA_EMULATE
  ::lk_emu::ldmatrix(r, kCount, kTranspose, smem_row);
#elif defined(__CUDA_ARCH__)
  const uint32_t at = mma_detail::shared_address(smem_row);
  if constexpr (kCount == 4 && kTranspose)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at) : "memory");
  else if constexpr (kCount == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at) : "memory");
  else if constexpr (kTranspose)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(at) : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(at) : "memory");
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) { ldmatrix<4, false>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) { ldmatrix<4, true>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) { ldmatrix<2, false>(r, smem_row); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) { ldmatrix<2, true>(r, smem_row); }

}  // namespace lk::cuda
