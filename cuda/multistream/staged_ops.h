// Ops split in two for multi-stream attention (SPEC §12): staging (every upload and allocation,
// which may block the host) and launching (kernels queued on the device, no synchronization). The
// multi-stream op stages every stream first, then queues every stream's kernels and the merge back
// to back, and synchronizes once: no host round trip between the streams.
#pragma once
#include <functional>
#include <string>

#include "../common/attention_params.h"
#include "../common/device_scratch.cuh"
#include "../common/sparse_params.h"

namespace lk::cuda {

using Launches = std::function<void()>;

// `*launch` is left empty when the op has nothing to compute (no query, no tile).
std::string stage_masked_attention(const AttentionParams& host, DeviceScratch* scratch, Launches* launch);
std::string stage_indexed_cross_attention(const IndexerParams& ihost, const TopKParams& thost, const SparseParams& shost,
                                          DeviceScratch* scratch, Launches* launch);

}  // namespace lk::cuda
