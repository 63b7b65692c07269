// Heads-in-lanes CPU maskedAttention for several small heads (D, Dv <= 16) over short sequences:
// one 8-lane vector holds the scores of 8 (key, head) pairs of one query row (8 heads of a key, or
// 8 / H keys of every head), so the softmax's max, sum and exp never reduce across lanes and one
// exp8 covers 8 (pair, head)s whatever D is. Taken where it measured faster than the tiled kernel's
// head groups (heads_lanes_fits, attention_lanes_cpu.cc).
#pragma once
#include <stdint.h>

#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// Whether heads_lanes_attention() takes this call (masked_attention() asks after heads_major_fits).
bool heads_lanes_fits(const AttentionParams& p);
// SPEC §3 softmax attention with the same results (within SPEC §7) and IEEE semantics as
// masked_attention(); requires heads_lanes_fits(p).
void heads_lanes_attention(const AttentionParams& p);
// Test support: how many calls heads_lanes_attention() has run.
int64_t heads_lanes_calls();

}  // namespace lk::cpu
