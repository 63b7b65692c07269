// The narrow interface between the N-API binding and the CUDA code (real or emulated). Plain C++:
// the binding never includes CUDA headers. Every function returns an empty string on success and
// a human-readable error otherwise.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/attention_params.h"
#include "common/backward_params.h"
#include "common/gather_params.h"
#include "common/mask_plan_host.h"
#include "common/sparse_params.h"
#include "common/stream_merge.h"

namespace lk::cuda {

struct DeviceInfo {
  std::string name;
  std::string compute_capability;  // "9.0"
  size_t total_memory = 0;
};

// Probes the runtime once; on failure `reason` says why in words (no driver, no device, ...).
bool available(std::string* reason, std::vector<DeviceInfo>* devices);
bool emulated();

// The emulated build only (cuda/emu/emu_tensor_core.cc): what the emulator has executed since load
// (SPEC §8) — launches, warp-wide mma and ldmatrix instructions, per-thread 16-byte cp.async copies.
struct EmulatorCounters {
  unsigned long long launches = 0, mma = 0, ldmatrix = 0, cp_async = 0;
};
bool emulator_counters(EmulatorCounters* out);

// ---------------------------------------------------------------- host path (cuda/runtime.cu)
// One stream per device carries every copy and launch, in issue order. Device memory comes from a
// caching allocator; small host arrays and tensor data go up (and come down) through pinned staging;
// an op's completion is an event on the stream that the device's completion thread waits for, so
// the thread that issues ops never waits for the device between them.

// Device memory from the caching allocator: a cached block of the same size class when there is
// one, else cudaMalloc; when that fails, the cache is emptied (after the work in flight has
// completed) and cudaMalloc is tried once more. release() puts the block back in the cache at once
// (safe: every later use is issued on the same stream, after every earlier one); the cache is
// trimmed to its bound (LIFELONG_CUDA_CACHE_BYTES, default a quarter of the device's memory)
// whenever the device is idle.
std::string alloc(size_t bytes, void** ptr);
void release(void* ptr);

// An op's completion: error "" or the message that rejects it.
using Done = std::function<void(const std::string& error)>;

// Issues an op on the device's stream without waiting for it, from any thread: `issue` enqueues the
// op's copies and launches (the ops below and the *_async copies, called inside it, only enqueue)
// and returns the launch error or "". `done(error)` then runs on the device's completion thread
// once the stream has executed everything `issue` enqueued: with the launch error if there was one,
// else the execution error (named `what`), else "". Errors are the op's own: completions are waited
// for in issue order, so a failing kernel rejects its op, never the next one. Staging the op took
// lives until then. Returns the launch error (also passed to `done`).
std::string submit(const char* what, const std::function<std::string()>& issue, Done done);

// Stream-ordered copies, to be called inside `issue`. upload_async reads `host` at the call (it is
// staged in pinned memory); download_async writes `host` on the completion thread, before `done`.
std::string upload_async(void* dst, const void* host, size_t bytes);
std::string download_async(void* host, const void* src, size_t bytes);
std::string copy_on_device_async(void* dst, const void* src, size_t bytes);
std::string zero_async(void* ptr, size_t bytes);

// For callers outside submit() (tools/gpu-check): the same copies, then a wait for the stream.
// (Ops called outside submit() are synchronous too: see cuda/runtime.h, finish().)
std::string copy_to_device(void* dst, const void* src, size_t bytes);
std::string copy_to_host(void* dst, const void* src, size_t bytes);
std::string copy_on_device(void* dst, const void* src, size_t bytes);
std::string zero(void* ptr, size_t bytes);
std::string synchronize();

// Test support. What the host path has done since load, for the current device.
struct HostPathStats {
  unsigned long long submitted = 0, completed = 0, in_flight = 0;
  unsigned long long issuer_waits = 0;      // waits for the device on a thread that issues work
  unsigned long long completion_waits = 0;  // event waits on the completion thread
  unsigned long long device_mallocs = 0, device_frees = 0, cache_hits = 0, trims = 0, alloc_retries = 0;
  unsigned long long cached_bytes = 0, reserved_bytes = 0, cache_limit = 0;
  unsigned long long pinned_mallocs = 0, pinned_hits = 0, pinned_cached_bytes = 0;
};
HostPathStats host_path_stats();
// While held, the completion thread waits for no event (on the emulator nothing then executes), so
// a test can see what the issuing side does alone. Never hold while allocating past the device's memory.
void hold_completions(bool hold);
// Sets the cache's bound (bytes kept cached when idle), as LIFELONG_CUDA_CACHE_BYTES does at start.
void set_cache_limit(size_t bytes);
// A test op: mode 0 launches a kernel that executes __trap() (fails when it runs), mode 1 a launch
// the device refuses (fails when issued).
std::string fault_op(int mode);

// q/k/v/out/lse are device pointers; the layout arrays in p are HOST pointers. With a plan (a
// MaskPlan of the same layouts and rule) its device geometry is used (built on first use and kept);
// without, one is built on the device for the call from its uploaded layouts (attention/mask_plan.cu):
// neither waits for the device.
std::string masked_attention(const AttentionParams& p, PlanState* plan = nullptr);
// Builds the geometry of `plan` that a call shaped like `like` (dtype, head sizes) will walk.
std::string prepare_mask_plan(PlanState& plan, const AttentionParams& like);

// Test support: the lists of `plan`'s geometry for tiles of block_m x block_n, built afresh on the
// device (on_device) or by the host walk, written into *out when the op completes. The device's
// lists keep their unused tails (entries with seq < 0); stats.work_items etc. say how many are real.
struct PlanListsCopy {
  std::vector<PlanWork> work;
  std::vector<KeyRun> runs;
  std::vector<PlanCombine> combine;
  PlanStats stats;
};
std::string mask_plan_lists(const PlanState& plan, int block_m, int block_n, bool on_device,
                            const std::shared_ptr<PlanListsCopy>& out);

// Row gather / blend behind MemoryBank; the plan arrays in p are HOST pointers (uploaded here).
std::string gather_rows(const GatherParams& p);

// Indexer-selected sparse attention (SPEC §5). Tensor pointers are device pointers; offsets and
// (for sparse_attention) indices are HOST pointers, uploaded here.
std::string indexer_scores(const IndexerParams& p);
std::string top_k(const TopKParams& p);  // p.lengths is a HOST pointer
std::string sparse_attention(const SparseParams& p);
std::string indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp);

// Backward ops (SPEC §9): tensors are device pointers; layouts, offsets and indices HOST pointers.
std::string masked_attention_backward(const AttentionBackwardParams& p);
std::string sparse_attention_backward(const SparseBackwardParams& p);
std::string indexer_scores_backward(const IndexerBackwardParams& p);
// One stream of multiStreamAttention (SPEC §12): dense cross attention, or indexer-selected sparse
// attention. Host pointers as in the single ops.
struct StreamCall {
  bool indexed = false;
  AttentionParams dense;
  IndexerParams indexer;
  TopKParams top_k;
  SparseParams sparse;
};
// Every stream, then the merge into merge.out (merge's pointers are device pointers), queued
// without a host wait between them; one synchronization at the end.
std::string multi_stream_attention(const StreamCall* calls, int n, const MergeParams& merge);

// Head sizes the CUDA kernels are instantiated for (every size of SPEC §3).
bool head_dim_supported(int dim);
// Limits of the sparse kernels: largest top-k, and the indexer query (heads x dim, heads) one
// block holds in shared memory.
int topk_capacity();
int indexer_max_elements();
int indexer_max_heads();
bool indexer_fits(int heads, int dim);

}  // namespace lk::cuda
