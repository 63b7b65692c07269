// The emulator's tensor-core and cp.async primitives, behind cuda/common/mma.cuh (SPEC §8), and
// its execution counters. Included at the end of cuda_emu.h; implemented in emu_tensor_core.cc.
#pragma once
#include <cstdint>

namespace lk_emu {

// Warp all-gather (defined in cuda_emu.cc, next to the warp rendezvous it uses): every lane in
// `mask` publishes `mine`; once all have, each lane runs `read(lanes, self)` with lanes[l] = lane
// l's `mine` (nullptr for lanes outside `mask`); no lane returns before every lane has finished
// reading, so `mine` may point into the lane's own stack. One collective, as a shuffle is.
void warp_all_gather(unsigned mask, const void* mine, void (*read)(const void* const* lanes, void* self), void* self);

enum class MmaInput { kF16, kBf16 };

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.f32 across the calling (full) warp.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4], MmaInput type);
// ldmatrix.sync.aligned.m8n8.{x2,x4}{.trans}.shared.b16: `matrices` is 2 or 4; r has that many.
void ldmatrix(uint32_t* r, int matrices, bool trans, const void* smem_row);
// cp.async.cg.shared.global (16 bytes), commit_group, wait_group n: per emulated thread.
void cp_async_16(void* smem_dst, const void* gmem_src);
void cp_async_commit();
void cp_async_wait(int n);

// Hooks called by cuda_emu.cc: a launch is about to run its blocks; an emulated thread's kernel
// body returned (fails the launch if the thread left cp.async copies never waited for).
void note_launch();
void note_thread_exit();

// Since load, across all OS threads: launches run, and warp-wide mma / ldmatrix instructions and
// per-thread cp_async_16 copies executed.
struct Counters {
  uint64_t launches, mma, ldmatrix, cp_async;
};
Counters counters();

}  // namespace lk_emu
