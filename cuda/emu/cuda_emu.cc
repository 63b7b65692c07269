// The emulator's scheduler, fibers and runtime (see cuda_emu.h for the model).
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define LK_EMU_ASAN 1
#else
#define LK_EMU_ASAN 0
#endif

// ---------------------------------------------------------------- context switch (x86-64 SysV)
// lk_emu_switch(&save_sp, load_sp): saves the callee-saved registers, MXCSR and the x87 control
// word on the current stack, stores the stack pointer, and resumes the context saved at load_sp.
// A new fiber's stack is laid out so that the first switch "returns" into lk_emu_fiber_entry.
#if !defined(__x86_64__)
#error "the CUDA emulator's context switch is written for x86-64"
#endif
extern "C" void lk_emu_switch(void** save_sp, void* load_sp);
extern "C" void lk_emu_fiber_entry();
extern "C" void lk_emu_fiber_main();
asm(R"(
  .text
  .globl lk_emu_switch
  .type lk_emu_switch, @function
lk_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size lk_emu_switch, .-lk_emu_switch

  .globl lk_emu_fiber_entry
  .type lk_emu_fiber_entry, @function
lk_emu_fiber_entry:
  call lk_emu_fiber_main
  ud2
  .size lk_emu_fiber_entry, .-lk_emu_fiber_entry
)");

namespace lk_emu {
namespace {

[[noreturn]] void fail(const char* what) {
  const ThreadContext* t = nullptr;
  (void)t;
  std::fprintf(stderr, "lifelong-kernels CUDA emulator: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  ThreadContext ctx;
  void* sp = nullptr;       // saved stack pointer while switched out
  char* stack = nullptr;    // lowest usable address
  size_t stack_size = 0;
  bool done = false;
  Wait waiting = Wait::kNone;
};

struct Warp {
  unsigned live_mask = 0;     // lanes that exist and have not exited
  unsigned arrived_mask = 0;  // lanes waiting at the current rendezvous
  uint64_t generation = 0;
  unsigned expected = 0;      // mask of the rendezvous in progress
  uint64_t payload[32];
  unsigned ballot = 0;
};

struct BlockRun {
  std::vector<Fiber>* fibers = nullptr;
  std::vector<Warp> warps;
  int live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  int vote_pending = 0;  // predicates counted by __syncthreads_count / _or / _and at the open barrier
  int vote_result = 0;   // the count of the barrier released last

  uint64_t progress = 0;  // bumped whenever a wait completes or a thread exits
  const std::function<void()>* body = nullptr;
  unsigned char* dynamic_shared = nullptr;
};

// Per OS thread: the block being run, the running fiber, the scheduler's context, and stacks.
struct Scheduler {
  BlockRun* block = nullptr;
  Fiber* fiber = nullptr;
  void* scheduler_sp = nullptr;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // each: guard page + stack
  size_t stack_size = 0;
#if LK_EMU_ASAN
  void* fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

thread_local Scheduler tls;
thread_local cudaError_t last_error = cudaSuccess;

size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }

size_t configured_stack_size() {
  const char* env = std::getenv("LK_EMU_STACK_KB");
  long kb = env ? std::atol(env) : 0;
  if (kb <= 0) kb = LK_EMU_ASAN ? 512 : 256;
  const size_t page = page_size();
  return ((size_t)kb * 1024 + page - 1) / page * page;
}

void ensure_stacks(size_t count) {
  if (tls.stack_size == 0) tls.stack_size = configured_stack_size();
  const size_t page = page_size();
  while (tls.stacks.size() < count) {
    // A guard page below each stack turns an overflow into a fault instead of silent corruption.
    void* mem = mmap(nullptr, tls.stack_size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) fail("cannot map a fiber stack");
    if (mprotect(mem, page, PROT_NONE) != 0) fail("cannot protect a fiber stack's guard page");
    tls.stacks.push_back(static_cast<char*>(mem) + page);
  }
}

// Switches from the running fiber (or the scheduler) to `to_sp`, telling ASan about the stacks.
void switch_to_fiber(Fiber& f) {
#if LK_EMU_ASAN
  __sanitizer_start_switch_fiber(&tls.fake_stack, f.stack, f.stack_size);
#endif
  tls.fiber = &f;
  lk_emu_switch(&tls.scheduler_sp, f.sp);
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(tls.fake_stack, nullptr, nullptr);
#endif
  tls.fiber = nullptr;
}

void switch_to_scheduler(bool exiting) {
  Fiber& f = *tls.fiber;
#if LK_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, tls.main_stack_bottom, tls.main_stack_size);
#else
  (void)exiting;
#endif
  lk_emu_switch(&f.sp, tls.scheduler_sp);
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &tls.main_stack_bottom, &tls.main_stack_size);
#endif
}

void yield_fiber() { switch_to_scheduler(false); }

Warp& warp_of(const Fiber& f) { return tls.block->warps[f.ctx.linear / 32]; }

void exit_current() {
  Fiber& f = *tls.fiber;
  BlockRun& b = *tls.block;
  f.done = true;
  --b.live;
  ++b.progress;
  Warp& w = warp_of(f);
  w.live_mask &= ~(1u << (f.ctx.linear % 32));
  if (w.expected & (1u << (f.ctx.linear % 32)))
    fail("a thread exited while lanes of its warp waited for it at a shuffle / vote / __syncwarp");
  // Threads that exit count as arrived at __syncthreads (as on current GPUs).
  if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) {
    b.barrier_arrived = 0;
    b.vote_result = b.vote_pending;
    b.vote_pending = 0;
    ++b.barrier_generation;
  }
  switch_to_scheduler(true);
  fail("an exited fiber was resumed");
}

}  // namespace

ThreadContext& current() {
  if (!tls.fiber) fail("a CUDA builtin (threadIdx, __syncthreads, ...) was used outside a kernel");
  return tls.fiber->ctx;
}

int lane_id() { return current().linear % 32; }

void syncthreads() { syncthreads_count(false); }

// The barrier's count is published when the last thread arrives and read by each thread as it
// leaves; it cannot be overwritten before then, since the next release needs every live thread.
int syncthreads_count(bool predicate) {
  BlockRun& b = *tls.block;
  Fiber& f = *tls.fiber;
  const uint64_t gen = b.barrier_generation;
  b.vote_pending += predicate ? 1 : 0;
  if (++b.barrier_arrived == b.live) {
    b.barrier_arrived = 0;
    b.vote_result = b.vote_pending;
    b.vote_pending = 0;
    ++b.barrier_generation;
    ++b.progress;
    return b.vote_result;
  }
  f.waiting = Wait::kBlock;
  while (b.barrier_generation == gen) yield_fiber();
  f.waiting = Wait::kNone;
  return b.vote_result;
}

// Every lane in `mask` arrives, then all leave together. Returns once the rendezvous completed.
static void warp_rendezvous(unsigned mask) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  const unsigned me = 1u << (f.ctx.linear % 32);
  if (!(mask & me)) fail("a warp-synchronous call's mask does not include the calling lane");
  if ((mask & w.live_mask) != mask) fail("a warp-synchronous call names lanes that do not exist or have exited");
  if (w.arrived_mask == 0) w.expected = mask;
  else if (w.expected != mask) fail("lanes of one warp reached warp-synchronous calls with different masks");
  const uint64_t gen = w.generation;
  w.arrived_mask |= me;
  if (w.arrived_mask == w.expected) {
    w.arrived_mask = 0;
    w.expected = 0;
    ++w.generation;
    ++tls.block->progress;
    return;
  }
  f.waiting = Wait::kWarp;
  while (w.generation == gen) yield_fiber();
  f.waiting = Wait::kNone;
}

void syncwarp(unsigned mask) { warp_rendezvous(mask); }

uint64_t warp_exchange(unsigned mask, uint64_t payload, int src_lane) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  w.payload[f.ctx.linear % 32] = payload;
  warp_rendezvous(mask);  // all values written
  if (src_lane < 0 || src_lane >= 32) src_lane = f.ctx.linear % 32;
  // A source outside the mask gives an undefined value on a GPU; here: the caller's own.
  const uint64_t got = (mask >> src_lane) & 1u ? w.payload[src_lane] : payload;
  warp_rendezvous(mask);  // all values read before the slots are reused
  return got;
}

unsigned warp_ballot(unsigned mask, bool predicate) {
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  if (mask == 0) return w.live_mask;  // __activemask
  w.payload[f.ctx.linear % 32] = predicate ? 1u : 0u;
  warp_rendezvous(mask);  // every predicate written
  unsigned bits = 0;
  for (int lane = 0; lane < 32; ++lane)
    if (((mask >> lane) & 1u) && w.payload[lane]) bits |= 1u << lane;
  warp_rendezvous(mask);  // every lane has read before the slots are reused
  return bits;
}

// ---- for emu_tensor_core.cc (mma / ldmatrix): see emu_tensor_core.h.
void warp_all_gather(unsigned mask, const void* mine, void (*read)(const void* const* lanes, void* self), void* self) {
  current();  // aborts outside a kernel
  Fiber& f = *tls.fiber;
  Warp& w = warp_of(f);
  w.payload[f.ctx.linear % 32] = reinterpret_cast<uintptr_t>(mine);
  warp_rendezvous(mask);  // every lane has published
  const void* lanes[32];
  for (int lane = 0; lane < 32; ++lane) lanes[lane] = (mask >> lane) & 1u ? reinterpret_cast<const void*>(w.payload[lane]) : nullptr;
  read(lanes, self);
  warp_rendezvous(mask);  // every lane has read before any publication goes away
}
// ---- end of the block for emu_tensor_core.cc

void set_last_error(cudaError_t e) { last_error = e; }

// Dynamic shared memory a kernel may ask for: 48 KiB unless raised by cudaFuncSetAttribute, up to
// the opt-in limit of the emulated device (an sm_90 part's 227 KiB).
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kOptinDynamicShared = 227 * 1024;
std::mutex attribute_mutex;
std::map<const void*, size_t>& dynamic_limits() {
  static std::map<const void*, size_t> limits;
  return limits;
}

cudaError_t set_function_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || (size_t)value > kOptinDynamicShared) {
    last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> lock(attribute_mutex);
  dynamic_limits()[kernel] = (size_t)value;
  return cudaSuccess;
}

void* dynamic_shared() {
  if (!tls.block) fail("dynamic shared memory used outside a kernel");
  return tls.block->dynamic_shared;
}

cudaError_t run_grid(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  const uint64_t threads = (uint64_t)block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) return cudaErrorInvalidConfiguration;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
    return cudaErrorInvalidConfiguration;
  if (shared_bytes > kDefaultDynamicShared) {
    std::lock_guard<std::mutex> lock(attribute_mutex);
    const auto it = dynamic_limits().find(kernel);
    if (it == dynamic_limits().end() || shared_bytes > it->second) return cudaErrorInvalidValue;
  }
  if (tls.block) fail("a kernel launched another kernel (dynamic parallelism is not emulated)");
  note_launch();  // emu_tensor_core.cc: launch counter
  // Exactly the bytes asked for, on the heap: AddressSanitizer sees any access past them.
  std::unique_ptr<unsigned char[]> dynamic(shared_bytes ? new unsigned char[shared_bytes] : nullptr);
  ensure_stacks(threads);
  tls.fibers.resize(threads);
  const int n_warps = (int)((threads + 31) / 32);
  BlockRun run;
  run.fibers = &tls.fibers;
  run.body = &body;
  run.dynamic_shared = dynamic.get();
  tls.block = &run;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        run.warps.assign(n_warps, Warp());
        for (int w = 0; w < n_warps; ++w) {
          const uint64_t lanes = threads - (uint64_t)w * 32 >= 32 ? 32 : threads - (uint64_t)w * 32;
          run.warps[w].live_mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
        }
        run.live = (int)threads;
        run.barrier_arrived = 0;
        run.vote_pending = 0;
        if (shared_bytes) std::memset(dynamic.get(), 0xff, shared_bytes);  // fresh garbage: NaN floats
        for (uint64_t t = 0; t < threads; ++t) {
          Fiber& f = tls.fibers[t];
          f = Fiber();
          f.ctx.linear = (int)t;
          f.ctx.thread_idx = uint3{(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y), (unsigned)(t / ((uint64_t)block.x * block.y))};
          f.ctx.block_idx = uint3{bx, by, bz};
          f.ctx.block_dim = block;
          f.ctx.grid_dim = grid;
          f.stack = tls.stacks[t];
          f.stack_size = tls.stack_size;
#if LK_EMU_ASAN
          ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);  // frames left by the previous block
#endif
          // Initial frame: 8 bytes MXCSR/FPU control, six callee-saved registers, return address.
          uint64_t* top = reinterpret_cast<uint64_t*>(f.stack + f.stack_size);
          top -= 2;  // keep 16-byte alignment for the entry's call
          *--top = reinterpret_cast<uint64_t>(&lk_emu_fiber_entry);
          for (int r = 0; r < 6; ++r) *--top = 0;
          --top;
          uint32_t mxcsr = 0;
          uint16_t fpu_control = 0;
          asm volatile("stmxcsr %0" : "=m"(mxcsr));
          asm volatile("fnstcw %0" : "=m"(fpu_control));
          std::memset(top, 0, 8);
          std::memcpy(top, &mxcsr, 4);
          std::memcpy(reinterpret_cast<char*>(top) + 4, &fpu_control, 2);
          f.sp = top;
        }
        // Round-robin until every thread has exited; no progress in a whole round is a deadlock.
        int idle_rounds = 0;
        while (run.live > 0) {
          const uint64_t before = run.progress;
          for (uint64_t t = 0; t < threads; ++t)
            if (!tls.fibers[t].done) switch_to_fiber(tls.fibers[t]);
          if (run.progress == before && run.live > 0) {
            if (++idle_rounds >= 2) {
              std::fprintf(stderr, "lifelong-kernels CUDA emulator: deadlock in block (%u, %u, %u): %d threads wait forever "
                                   "(at __syncthreads or a warp-synchronous call that some threads never reach)\n", bx, by, bz, run.live);
              std::abort();
            }
          } else {
            idle_rounds = 0;
          }
        }
      }
  tls.block = nullptr;
  return cudaSuccess;
}

}  // namespace lk_emu

extern "C" void lk_emu_fiber_main() {
#if LK_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &lk_emu::tls.main_stack_bottom, &lk_emu::tls.main_stack_size);
#endif
  (*lk_emu::tls.block->body)();
  lk_emu::note_thread_exit();  // emu_tensor_core.cc: cp.async copies never waited for fail the launch
  lk_emu::exit_current();
}

// ---------------------------------------------------------------- runtime API
namespace {
cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) lk_emu::last_error = e;
  return e;
}
}  // namespace

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = lk_emu::last_error;
  lk_emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return lk_emu::last_error; }
cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { return record(device == 0 ? cudaSuccess : cudaErrorInvalidValue); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return record(cudaErrorInvalidValue);
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "CUDA emulator (CPU)");
  prop->totalGlobalMem = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  prop->sharedMemPerBlock = 49152;
  prop->sharedMemPerBlockOptin = lk_emu::kOptinDynamicShared;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = (int)sysconf(_SC_NPROCESSORS_ONLN);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return record(*ptr ? cudaSuccess : cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* ptr) { std::free(ptr); return cudaSuccess; }
cudaError_t cudaMallocHost(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
cudaError_t cudaFreeHost(void* ptr) { return cudaFree(ptr); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) { return cudaMemcpy(dst, src, bytes, kind); }
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return cudaMemset(dst, value, bytes); }
cudaError_t cudaStreamCreate(cudaStream_t* stream) { *stream = nullptr; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) { *stream = nullptr; return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  *total_bytes = (size_t)sysconf(_SC_PHYS_PAGES) * page;
  *free_bytes = (size_t)sysconf(_SC_AVPHYS_PAGES) * page;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return record(cudaErrorInvalidValue);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)lk_emu::kDefaultDynamicShared; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)lk_emu::kOptinDynamicShared; return cudaSuccess;
  }
  return record(cudaErrorInvalidValue);
}
