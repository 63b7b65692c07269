// Native CPU indexer scores, top-k selection and sparse attention (SPEC §5).
#pragma once
#include "../../cuda/common/sparse_params.h"

namespace lk::cpu {

void indexer_scores(const IndexerParams& p);
void top_k(const TopKParams& p);
void sparse_attention(const SparseParams& p);
// indexerScores -> topK -> sparseAttention, one query row at a time: the score row lives only in a
// per-thread buffer. ip.scores and tp.scores are ignored; tp.indices / tp.values receive the choice.
// Both attention ops run float32 inputs as dense `full` attention when every query takes each of its
// user's keys exactly once (top-k >= the row length and nothing NaN / -inf; or the caller's indices
// a permutation).
void indexed_cross_attention(const IndexerParams& ip, const TopKParams& tp, const SparseParams& sp);

// How many calls took that dense dispatch since the addon loaded (test support).
int64_t sparse_dense_dispatches();

}  // namespace lk::cpu
