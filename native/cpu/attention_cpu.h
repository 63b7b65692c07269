// Native CPU maskedAttention (SPEC §3): multi-threaded, tiled, online softmax in float32.
#pragma once
#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// Host pointers throughout. Inputs of dtype float16/bfloat16 are converted to float32 first;
// out has q's dtype.
void masked_attention(const AttentionParams& p);

}  // namespace lk::cpu
