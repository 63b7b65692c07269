// The emulator's mma / ldmatrix / cp.async (cuda/common/mma.cuh) and its execution counters.
//
// mma and ldmatrix are warp collectives: each lane publishes its own registers (or the 16-byte row
// it addressed, read by that lane) through one warp_all_gather, then picks its result fragment
// from the gathered data following the PTX ISA tables (9.7.14.5.8 m16n8k16 .f16/.bf16 fragments,
// 9.7.14.5.15 ldmatrix). cp.async is per emulated thread: the source is read when the copy is
// issued, the destination is filled with 0xff bytes (NaN as floats, as never-written shared memory
// reads), and the bytes land when cp_async_wait retires the copy's group.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "../backend.h"
#include "cuda_emu.h"

namespace lk_emu {
namespace {

std::atomic<uint64_t> n_launches{0}, n_mma{0}, n_ldmatrix{0}, n_cp_async{0};

[[noreturn]] void fail(const char* what, int lane, const void* address) {
  const ThreadContext& t = current();
  std::fprintf(stderr,
               "lifelong-kernels CUDA emulator: %s (thread (%u, %u, %u) of block (%u, %u, %u), lane %d, address %p)\n", what,
               t.thread_idx.x, t.thread_idx.y, t.thread_idx.z, t.block_idx.x, t.block_idx.y, t.block_idx.z, lane, address);
  std::fflush(stderr);
  std::abort();
}

constexpr unsigned kFullWarp = 0xffffffffu;

// ---------------------------------------------------------------- mma.m16n8k16
struct MmaLane {
  uint32_t a[4];
  uint32_t b[2];
};
struct MmaSelf {
  int lane;
  MmaInput type;
  float c[4];
  float d[4];
};

float element(uint32_t reg, int half, MmaInput type) {
  const uint16_t bits = (uint16_t)(half ? reg >> 16 : reg & 0xffffu);
  return type == MmaInput::kBf16 ? lk::bfloat16_to_float(bits) : lk::half_to_float(bits);
}

// A[row][k] lives in lane 4 * (row % 8) + (k % 8) / 2, register (row >= 8) + 2 * (k >= 8), half k % 2.
float a_at(const void* const* lanes, int row, int k, MmaInput type) {
  const MmaLane* holder = static_cast<const MmaLane*>(lanes[4 * (row % 8) + (k % 8) / 2]);
  return element(holder->a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2, type);
}
// B[k][col] lives in lane 4 * col + (k % 8) / 2, register (k >= 8), half k % 2.
float b_at(const void* const* lanes, int k, int col, MmaInput type) {
  const MmaLane* holder = static_cast<const MmaLane*>(lanes[4 * col + (k % 8) / 2]);
  return element(holder->b[k >= 8 ? 1 : 0], k % 2, type);
}

void mma_read(const void* const* lanes, void* self_ptr) {
  MmaSelf& self = *static_cast<MmaSelf*>(self_ptr);
  const int g = self.lane >> 2, t = self.lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = self.c[i];
    // Products of two 16-bit floats are exact in float32; accumulation is float32, in k order.
    for (int k = 0; k < 16; ++k) acc = std::fma(a_at(lanes, row, k, self.type), b_at(lanes, k, col, self.type), acc);
    self.d[i] = acc;
  }
}

// ---------------------------------------------------------------- ldmatrix
struct Row {
  uint16_t e[8];
};
struct LdmatrixSelf {
  int lane, matrices;
  bool trans;
  uint32_t r[4];
};

void ldmatrix_read(const void* const* lanes, void* self_ptr) {
  LdmatrixSelf& self = *static_cast<LdmatrixSelf*>(self_ptr);
  const int g = self.lane >> 2, t = self.lane & 3;
  for (int m = 0; m < self.matrices; ++m) {
    uint16_t half[2];
    for (int h = 0; h < 2; ++h) {
      // Row j of matrix m was addressed (and read) by lane 8 m + j.
      half[h] = self.trans ? static_cast<const Row*>(lanes[8 * m + 2 * t + h])->e[g]   // M[2t + h][g]
                           : static_cast<const Row*>(lanes[8 * m + g])->e[2 * t + h];  // M[g][2t + h]
    }
    self.r[m] = (uint32_t)half[0] | ((uint32_t)half[1] << 16);
  }
}

// ---------------------------------------------------------------- cp.async
struct Copy {
  unsigned char* dst;
  unsigned char bytes[16];
};
struct ThreadCopies {
  std::vector<Copy> open;                // issued since the last commit
  std::deque<std::vector<Copy>> groups;  // committed, oldest first
  size_t pending() const {
    size_t n = open.size();
    for (const auto& g : groups) n += g.size();
    return n;
  }
};
// Per OS thread (the emulator runs a block's threads as fibers on one OS thread), indexed by the
// emulated thread's index in its block; every thread leaves its entry empty when it ends.
thread_local std::vector<ThreadCopies> thread_copies;
thread_local bool reported_this_launch = false;

ThreadCopies& my_copies() {
  const int t = current().linear;
  if ((size_t)t >= thread_copies.size()) thread_copies.resize((size_t)t + 1);
  return thread_copies[(size_t)t];
}

}  // namespace

void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4], MmaInput type) {
  const MmaLane mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  MmaSelf self{lane_id(), type, {c[0], c[1], c[2], c[3]}, {0, 0, 0, 0}};
  warp_all_gather(kFullWarp, &mine, mma_read, &self);
  if (self.lane == 0) n_mma.fetch_add(1, std::memory_order_relaxed);
  for (int i = 0; i < 4; ++i) d[i] = self.d[i];
}

void ldmatrix(uint32_t* r, int matrices, bool trans, const void* smem_row) {
  const int lane = lane_id();
  Row mine{};
  if (lane < 8 * matrices) {  // x2: only lanes 0-15 supply rows
    if (reinterpret_cast<uintptr_t>(smem_row) % 16 != 0) fail("ldmatrix: a row address is not 16-byte aligned", lane, smem_row);
    std::memcpy(mine.e, smem_row, 16);
    note_shared_access(smem_row, 16, false);  // the race detector sees this lane's row read
  }
  LdmatrixSelf self{lane, matrices, trans, {0, 0, 0, 0}};
  warp_all_gather(kFullWarp, &mine, ldmatrix_read, &self);
  if (lane == 0) n_ldmatrix.fetch_add(1, std::memory_order_relaxed);
  for (int m = 0; m < matrices; ++m) r[m] = self.r[m];
}

void cp_async_16(void* smem_dst, const void* gmem_src) {
  if (reinterpret_cast<uintptr_t>(smem_dst) % 16 != 0) fail("cp_async_16: the shared destination is not 16-byte aligned", lane_id(), smem_dst);
  if (reinterpret_cast<uintptr_t>(gmem_src) % 16 != 0) fail("cp_async_16: the global source is not 16-byte aligned", lane_id(), gmem_src);
  Copy copy;
  copy.dst = static_cast<unsigned char*>(smem_dst);
  std::memcpy(copy.bytes, gmem_src, 16);
  std::memset(smem_dst, 0xff, 16);  // in flight: reads see 0xff bytes until the wait
  // The copy may land any time until its wait: a write at issue (catches other threads still
  // reading the stage it overwrites) and again at the wait (catches readers not ordered after it).
  note_shared_access(smem_dst, 16, true);
  my_copies().open.push_back(copy);
  n_cp_async.fetch_add(1, std::memory_order_relaxed);
}

void cp_async_commit() {
  ThreadCopies& tc = my_copies();
  tc.groups.push_back(std::move(tc.open));  // an empty group is a group too, as in PTX
  tc.open.clear();
}

void cp_async_wait(int n) {
  ThreadCopies& tc = my_copies();
  while (tc.groups.size() > (size_t)(n < 0 ? 0 : n)) {
    for (const Copy& copy : tc.groups.front()) {
      std::memcpy(copy.dst, copy.bytes, 16);
      note_shared_access(copy.dst, 16, true);
    }
    tc.groups.pop_front();
  }
}

void note_launch() {
  reported_this_launch = false;
  n_launches.fetch_add(1, std::memory_order_relaxed);
}

void note_thread_exit() {
  if (thread_copies.empty()) return;
  ThreadCopies& tc = my_copies();
  const size_t pending = tc.pending();
  if (pending == 0) return;
  if (!reported_this_launch) {
    reported_this_launch = true;
    const ThreadContext& t = current();
    std::fprintf(stderr,
                 "lifelong-kernels CUDA emulator: thread (%u, %u, %u) of block (%u, %u, %u) ended with %zu cp.async cop%s never "
                 "completed by cp_async_wait (%zu not even committed); the launch fails (further threads not reported)\n",
                 t.thread_idx.x, t.thread_idx.y, t.thread_idx.z, t.block_idx.x, t.block_idx.y, t.block_idx.z, pending,
                 pending == 1 ? "y" : "ies", tc.open.size());
    std::fflush(stderr);
  }
  tc.open.clear();
  tc.groups.clear();
  set_last_error(cudaErrorLaunchFailure);
}

Counters counters() {
  return Counters{n_launches.load(std::memory_order_relaxed), n_mma.load(std::memory_order_relaxed),
                  n_ldmatrix.load(std::memory_order_relaxed), n_cp_async.load(std::memory_order_relaxed)};
}

}  // namespace lk_emu

namespace lk::cuda {

bool emulator_counters(EmulatorCounters* out) {
  const lk_emu::Counters c = lk_emu::counters();
  out->launches = c.launches;
  out->mma = c.mma;
  out->ldmatrix = c.ldmatrix;
  out->cp_async = c.cp_async;
  return true;
}

}  // namespace lk::cuda
