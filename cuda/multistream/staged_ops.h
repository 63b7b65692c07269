// Ops split for multi-stream attention (SPEC §12): issuing an op queues its uploads and kernels on
// the device's stream (cuda/runtime.h) and returns without waiting; the public op is issue + finish.
// The multi-stream op issues every stream and the merge back to back and finishes once: no host
// round trip between the streams.
#pragma once
#include <string>

#include "../common/attention_params.h"
#include "../common/mask_plan_host.h"
#include "../common/sparse_params.h"

namespace lk::cuda {

// Without a plan, the call's own plan is built on the device from its uploaded layouts (attention/mask_plan.cu).
std::string issue_masked_attention(const AttentionParams& host, PlanState* plan = nullptr);
std::string issue_indexed_cross_attention(const IndexerParams& ihost, const TopKParams& thost, const SparseParams& shost);

}  // namespace lk::cuda
