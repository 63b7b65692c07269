// Native CPU maskedAttention (SPEC §3): multi-threaded, tiled, online softmax in float32.
#pragma once
#include "../../cuda/common/attention_params.h"
#include "../../cuda/common/mask_plan_host.h"

namespace lk::cpu {

// Host pointers throughout. Inputs of dtype float16/bfloat16 are widened to float32 as the kernel
// loads them (Q rows, K^T / V panels, a block's K / V rows; never whole tensors) and out, of q's
// dtype, is narrowed as it is written. With a plan (a MaskPlan of the same layouts and rule) its CPU geometry is
// walked (built on first use, kept); without, one is built for the call (mask_plan_cpu.h).
void masked_attention(const AttentionParams& p, PlanState* plan = nullptr);

// The kernels' exp (simd.h's exp8) over n floats on the active ISA path: test support.
void exp_lanes(const float* in, float* out, int64_t n);

// Test support: (key block, head group)s since load whose Q K^T and P V ran natively on bfloat16 pairs
// (vdpbf16ps, the AVX512-BF16 path).
int64_t bf16_native_block_count();

}  // namespace lk::cpu
