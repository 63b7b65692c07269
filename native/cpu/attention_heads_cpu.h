// Heads-major CPU maskedAttention: every head of a (sequence, row chunk) per key block, for the
// shapes where the tiled per-head kernel (attention_cpu.cc) streams memory badly or leaves vector
// lanes idle: few-query cross attention over long histories, and small heads (D = 8 / 16 / 32).
#pragma once
#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// Whether heads_major_attention() takes this call (masked_attention() asks first).
bool heads_major_fits(const AttentionParams& p);
// SPEC §3 softmax attention with the same results (within SPEC §7) and IEEE semantics as
// masked_attention(); requires heads_major_fits(p).
void heads_major_attention(const AttentionParams& p);

}  // namespace lk::cpu
