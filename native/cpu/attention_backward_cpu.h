// Native CPU backward ops (SPEC §9): multi-threaded, tiled, float32 arithmetic; float16 / bfloat16
// tensors are widened first and the gradients narrowed at the end. Host pointers throughout.
#pragma once
#include "../../cuda/common/backward_params.h"

namespace lk::cpu {

void masked_attention_backward(const AttentionBackwardParams& p);
void sparse_attention_backward(const SparseBackwardParams& p);
void indexer_scores_backward(const IndexerBackwardParams& p);

}  // namespace lk::cpu
