// The narrow interface between the N-API binding and the CUDA code (real or emulated). Plain C++:
// the binding never includes CUDA headers. Every function returns an empty string on success and
// a human-readable error otherwise.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "common/attention_params.h"
#include "common/gather_params.h"
#include "common/mask_plan_host.h"
#include "common/sparse_params.h"

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

std::string alloc(size_t bytes, void** ptr);
void release(void* ptr);
std::string copy_to_device(void* dst, const void* src, size_t bytes);
std::string copy_to_host(void* dst, const void* src, size_t bytes);
std::string copy_on_device(void* dst, const void* src, size_t bytes);
std::string zero(void* ptr, size_t bytes);

// q/k/v/out/lse are device pointers; the layout arrays in p are HOST pointers. With a plan (a
// MaskPlan of the same layouts and rule) its device geometry is used (built on first use and kept);
// without, one is built for the call (attention/mask_plan.cu).
std::string masked_attention(const AttentionParams& p, PlanState* plan = nullptr);
// Builds the geometry of `plan` that a call shaped like `like` (dtype, head sizes) will walk.
std::string prepare_mask_plan(PlanState& plan, const AttentionParams& like);

// Row gather / blend behind MemoryBank; the plan arrays in p are HOST pointers (uploaded here).
std::string gather_rows(const GatherParams& p);

// Indexer-selected sparse attention (SPEC §5). Tensor pointers are device pointers; offsets and
// (for sparse_attention) indices are HOST pointers, uploaded here.
std::string indexer_scores(const IndexerParams& p);
std::string top_k(const TopKParams& p);  // p.lengths is a HOST pointer
std::string sparse_attention(const SparseParams& p);
std::string indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp);

// Head sizes the CUDA kernels are instantiated for (every size of SPEC §3).
bool head_dim_supported(int dim);
// Limits of the sparse kernels: largest top-k, and the indexer query (heads x dim, heads) one
// block holds in shared memory.
int topk_capacity();
int indexer_max_elements();
int indexer_max_heads();
bool indexer_fits(int heads, int dim);

}  // namespace lk::cuda
