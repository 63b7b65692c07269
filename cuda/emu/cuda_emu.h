// A CPU emulation of the CUDA execution model, so that the project's kernel and launch sources
// (cuda/**/*.cu) compile with g++ and run without a GPU, ASan/UBSan included, and so that the
// emulator verifies them: it is the only place the kernels' exact source runs without a GPU.
//
// Model (details in cuda_emu.cc and SPEC section 8):
// - A launch runs its blocks one after another; the threads of a block are fibers on one OS thread,
//   switched only at __syncthreads, warp shuffles / votes / __syncwarp, so every barrier is real.
//   LK_EMU_SEED=n runs the blocks, and the threads between two synchronization points, in an order
//   drawn from seed n (index order when unset), so a missing barrier shows whoever runs first.
// - `__shared__` is `static thread_local`: one copy per OS thread, i.e. per block in flight. The
//   emulator finds each kernel's __shared__ variables in the module's symbol table (their names
//   carry the kernel's) and fills them, and the launch's dynamic shared memory, with 0xff bytes
//   (NaN floats) before every block, so reads of never-written shared memory show up as NaN. It
//   also enforces 48 KiB of static shared memory per kernel.
// - Built with LK_EMU_RACECHECK and the kernel sources compiled with -fsanitize=thread, every
//   shared-memory access is checked against the barrier / warp-synchronization order: two threads
//   touching the same bytes, at least one writing, with no __syncthreads between them (or, for
//   lanes of one warp, no __syncwarp / warp collective) fail the launch, naming both threads.
// - Launches, cudaMemcpyAsync / cudaMemsetAsync / cudaMemset, event records and host functions are
//   queued on their stream and run, in issue order, only when the host synchronizes (a stream, an
//   event, the device, a synchronous cudaMemcpy or cudaFree), so a host that uses results before
//   synchronizing reads stale data, as it may on a GPU. Errors of queued work surface at the next
//   synchronization (or cudaGetLastError), as on a GPU. CUDA_LAUNCH_BLOCKING=1 runs every operation
//   when it is issued instead, as CUDA's variable does.
// - cudaMalloc gives exactly the bytes asked (256-byte aligned): AddressSanitizer sees one byte of
//   overrun. LK_EMU_DEVICE_MEMORY=bytes gives the device that much memory (cudaMalloc beyond it
//   fails with cudaErrorMemoryAllocation, as a full GPU does), so allocators' out-of-memory paths run. cudaMemcpy* refuse a device-side pointer outside every device allocation and a
//   host-side pointer inside one. Launch limits are the device's (1,024 threads, grid.y / grid.z
//   <= 65,535, dynamic shared memory above 48 KiB only after cudaFuncSetAttribute).
// Restrictions for kernel authors: __shared__ variables are declared (not initialised) inside
// kernels (a device function's own __shared__ variables are neither refilled per block nor
// race-checked: declare them in the kernel and pass them down); dynamic shared
// memory is reached through LK_DYNAMIC_SHARED (compat.cuh), not `extern __shared__`;
// warp-synchronous functions must be called by every lane named in their mask (else the emulator
// aborts with a message).
#pragma once
#ifndef LK_CUDA_EMULATE
#error "cuda_emu.h is the emulated-CUDA build only (define LK_CUDA_EMULATE)"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../common/half_convert.h"

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))  // after the standard headers, which use the name
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static thread_local

// ---------------------------------------------------------------- index types and builtins
struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

constexpr int warpSize = 32;

namespace lk_emu {

struct ThreadContext {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  int linear;  // thread index inside the block
};

ThreadContext& current();  // the running emulated thread; aborts outside a kernel

void syncthreads();
int syncthreads_count(bool predicate);  // __syncthreads that also counts the threads' predicates
void syncwarp(unsigned mask);
// Warp rendezvous exchanging 64-bit payloads: returns the payload of lane `src` (in the caller's
// warp); ballot collects predicates. Both abort if a lane named in `mask` has exited.
uint64_t warp_exchange(unsigned mask, uint64_t payload, int src_lane);
unsigned warp_ballot(unsigned mask, bool predicate);
int lane_id();

}  // namespace lk_emu

#define threadIdx (::lk_emu::current().thread_idx)
#define blockIdx (::lk_emu::current().block_idx)
#define blockDim (::lk_emu::current().block_dim)
#define gridDim (::lk_emu::current().grid_dim)

inline void __syncthreads() { lk_emu::syncthreads(); }
inline int __syncthreads_count(int predicate) { return lk_emu::syncthreads_count(predicate != 0); }
inline int __syncthreads_or(int predicate) { return lk_emu::syncthreads_count(predicate != 0) != 0; }
inline int __syncthreads_and(int predicate) { return lk_emu::syncthreads_count(predicate == 0) == 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { lk_emu::syncwarp(mask); }
namespace lk_emu {
[[noreturn]] void trap();  // __trap(): the thread ends and its launch fails (cudaErrorLaunchFailure)
}
inline void __trap() { lk_emu::trap(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------- warp shuffles and votes
namespace lk_emu {
template <typename T>
uint64_t to_payload(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
  uint64_t p = 0;
  std::memcpy(&p, &v, sizeof(T));
  return p;
}
template <typename T>
T from_payload(uint64_t p) {
  T v;
  std::memcpy(&v, &p, sizeof(T));
  return v;
}
// Source lane of a shuffle in the sub-warp of `width` lanes containing `lane`.
inline int shfl_src(int lane, int src, int width) { return (lane & ~(width - 1)) + (src & (width - 1)); }
}  // namespace lk_emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  const int lane = lk_emu::lane_id();
  return lk_emu::from_payload<T>(lk_emu::warp_exchange(mask, lk_emu::to_payload(v), lk_emu::shfl_src(lane, src_lane, width)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = lk_emu::lane_id();
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;  // outside the sub-warp: own value
  return lk_emu::from_payload<T>(lk_emu::warp_exchange(mask, lk_emu::to_payload(v), src));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = lk_emu::lane_id();
  const int in_sub = (lane & (width - 1)) + (int)delta;
  const int src = in_sub < width ? lane + (int)delta : lane;
  return lk_emu::from_payload<T>(lk_emu::warp_exchange(mask, lk_emu::to_payload(v), src));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = lk_emu::lane_id();
  const int in_sub = (lane & (width - 1)) - (int)delta;
  const int src = in_sub >= 0 ? lane - (int)delta : lane;
  return lk_emu::from_payload<T>(lk_emu::warp_exchange(mask, lk_emu::to_payload(v), src));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) { return lk_emu::warp_ballot(mask, predicate != 0) & mask; }
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }
inline unsigned __activemask() { return lk_emu::warp_ballot(0u, true); }

// ---------------------------------------------------------------- atomics (real, across OS threads)
#define LK_EMU_ATOMIC_RMW(name, builtin, T) \
  inline T name(T* addr, T v) { return builtin(addr, v, __ATOMIC_SEQ_CST); }
LK_EMU_ATOMIC_RMW(atomicAdd, __atomic_fetch_add, int)
LK_EMU_ATOMIC_RMW(atomicAdd, __atomic_fetch_add, unsigned)
LK_EMU_ATOMIC_RMW(atomicAdd, __atomic_fetch_add, unsigned long long)
LK_EMU_ATOMIC_RMW(atomicSub, __atomic_fetch_sub, int)
LK_EMU_ATOMIC_RMW(atomicSub, __atomic_fetch_sub, unsigned)
LK_EMU_ATOMIC_RMW(atomicOr, __atomic_fetch_or, int)
LK_EMU_ATOMIC_RMW(atomicOr, __atomic_fetch_or, unsigned)
LK_EMU_ATOMIC_RMW(atomicAnd, __atomic_fetch_and, int)
LK_EMU_ATOMIC_RMW(atomicAnd, __atomic_fetch_and, unsigned)
LK_EMU_ATOMIC_RMW(atomicExch, __atomic_exchange_n, int)
LK_EMU_ATOMIC_RMW(atomicExch, __atomic_exchange_n, unsigned)
#undef LK_EMU_ATOMIC_RMW

template <typename T, typename Op>
inline T lk_emu_cas_loop(T* addr, Op op) {
  T old = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(addr, &old, op(old), false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
  return old;
}
inline float atomicAdd(float* addr, float v) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(addr);
  const uint32_t old = lk_emu_cas_loop(bits, [v](uint32_t o) { return lk::float_bits(lk::bits_float(o) + v); });
  return lk::bits_float(old);
}
inline double atomicAdd(double* addr, double v) {
  uint64_t* bits = reinterpret_cast<uint64_t*>(addr);
  const uint64_t old = lk_emu_cas_loop(bits, [v](uint64_t o) {
    double d; std::memcpy(&d, &o, 8); d += v; uint64_t r; std::memcpy(&r, &d, 8); return r;
  });
  double d;
  std::memcpy(&d, &old, 8);
  return d;
}
inline float atomicExch(float* addr, float v) {
  const uint32_t old = __atomic_exchange_n(reinterpret_cast<uint32_t*>(addr), lk::float_bits(v), __ATOMIC_SEQ_CST);
  return lk::bits_float(old);
}
inline int atomicMax(int* a, int v) { return lk_emu_cas_loop(a, [v](int o) { return o > v ? o : v; }); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return lk_emu_cas_loop(a, [v](unsigned o) { return o > v ? o : v; }); }
inline int atomicMin(int* a, int v) { return lk_emu_cas_loop(a, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return lk_emu_cas_loop(a, [v](unsigned o) { return o < v ? o : v; }); }
template <typename T>
inline T lk_emu_cas(T* addr, T compare, T value) {
  __atomic_compare_exchange_n(addr, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // holds the old value either way
}
inline int atomicCAS(int* a, int c, int v) { return lk_emu_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return lk_emu_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) { return lk_emu_cas(a, c, v); }

// ---------------------------------------------------------------- math intrinsics
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// ---------------------------------------------------------------- half types (bits as in memory)
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return lk::half_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{lk::float_to_half(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return lk::bfloat16_to_float(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{lk::float_to_bfloat16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }

// ---------------------------------------------------------------- runtime API subset
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotPermitted = 800,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlock = 8, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUevent_st;
typedef CUevent_st* cudaEvent_t;
typedef void (*cudaHostFn_t)(void* user_data);
constexpr unsigned cudaStreamDefault = 0;
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0;
constexpr unsigned cudaEventBlockingSync = 1;
constexpr unsigned cudaEventDisableTiming = 2;
#define cudaStreamLegacy (reinterpret_cast<cudaStream_t>(0x1))
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(0x2))

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major, minor;
  int multiProcessorCount;
};

const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
template <typename T>
inline cudaError_t cudaMalloc(T** ptr, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(ptr), bytes); }
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
template <typename T>
inline cudaError_t cudaMallocHost(T** ptr, size_t bytes) { return cudaMallocHost(reinterpret_cast<void**>(ptr), bytes); }
cudaError_t cudaFreeHost(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
namespace lk_emu {
cudaError_t set_function_attribute(const void* kernel, cudaFuncAttribute attr, int value);
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  return lk_emu::set_function_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---------------------------------------------------------------- launches
namespace lk_emu {

// Where a launch was written (LK_LAUNCH's kernel expression, file and line), for messages.
struct LaunchSite {
  const char* expr;
  const char* file;
  int line;
};

// Validates a launch of `kernel` as CUDA does at launch time (returning the error, nothing queued)
// and queues `body` -- run as every thread of every block of the grid -- on `stream`.
cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   const LaunchSite& site, std::function<void()> body);
void set_last_error(cudaError_t e);
// The running block's dynamic shared memory (nullptr when the launch asked for none).
void* dynamic_shared();
// For emulator-side primitives that read or write shared memory on behalf of the running thread
// (ldmatrix, cp.async, ...): race detection sees the access as the thread's own. A no-op unless
// the emulator is built with LK_EMU_RACECHECK.
void note_shared_access(const void* addr, size_t bytes, bool write);

template <typename... Params>
struct Launcher {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  LaunchSite site;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Arguments are copied once at launch, converted to the kernel's parameter types (as on a GPU,
    // later changes to the host's variables do not reach a queued launch), and each emulated
    // thread receives its own by-value copies.
    auto copies = std::make_shared<const std::tuple<typename std::decay<Params>::type...>>(std::forward<Args>(args)...);
    auto* fn = kernel;
    const cudaError_t e = launch(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream, site,
                                 [fn, copies] { std::apply(fn, *copies); });
    if (e != cudaSuccess) set_last_error(e);
  }
};

template <typename... Params>
Launcher<Params...> launcher(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                             LaunchSite site) {
  return Launcher<Params...>{kernel, grid, block, shared_bytes, stream, site};
}

}  // namespace lk_emu

#define LK_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::lk_emu::launcher(kernel, dim3(grid), dim3(block), shared_bytes, stream, ::lk_emu::LaunchSite{#kernel, __FILE__, __LINE__})

// Tensor-core / cp.async primitives behind cuda/common/mma.cuh, and the emulator's counters.
#include "emu_tensor_core.h"
