// Heads-major CPU maskedAttention: every head of a (sequence, row chunk) per key block, whole K / V
// rows (all heads) read once per block, for few-query cross attention (at most 8 queries per
// sequence) over long histories; keys split over the pool when there are few users.
#pragma once
#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// Whether heads_major_attention() takes this call (masked_attention() asks first).
bool heads_major_fits(const AttentionParams& p);
// SPEC §3 softmax attention with the same results (within SPEC §7) and IEEE semantics as
// masked_attention(); requires heads_major_fits(p).
void heads_major_attention(const AttentionParams& p);

}  // namespace lk::cpu
