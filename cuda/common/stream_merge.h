// Arguments and arithmetic of the multi-stream merge (SPEC §12), shared by the CPU and CUDA paths:
// each stream's attention output (and, for 'union', its log-sum-exp) combined into one output.
#pragma once
#include <math.h>
#include <stdint.h>
#include "attention_params.h"
#include "host_device.h"

namespace lk {

constexpr int kMaxStreams = 3;  // recent, midTerm, lifecycle

enum StreamFusion : int { kFusionSum = 0, kFusionUnion = 1 };

struct MergeParams {
  DType dtype;                          // of every stream output and of out
  int streams;                          // 1 ... kMaxStreams
  int fusion;                           // StreamFusion
  int64_t rows;                         // queries x heads
  int value_dim;
  const void* outs[kMaxStreams];        // [rows, value_dim] each
  const float* lses[kMaxStreams];       // [rows] each ('union' only)
  void* out;                            // [rows, value_dim]
  float* lse;                           // [rows] ('union' only)
};

// The largest log-sum-exp of a row's streams; NaN when any is NaN (IEEE: the row is NaN).
LK_HD float merge_max_lse(const float* lse, int n) {
  float m = -INFINITY;
  for (int s = 0; s < n; ++s) m = (lse[s] > m || lse[s] != lse[s]) ? lse[s] : m;
  return m;
}

// Softmax over the union of the streams' keys, from each stream's normalized output and LSE:
// weight_s = exp(lse_s - max) / Σ exp(lse_t - max). A stream with no keys (lse -inf) weighs 0;
// a row with no key anywhere (max -inf) gets weights 0, output 0 and lse -inf.
LK_HD void merge_union_weights(const float* lse, int n, float* weight, float* row_lse) {
  const float m = merge_max_lse(lse, n);
  if (m == -INFINITY) {
    for (int s = 0; s < n; ++s) weight[s] = 0.0f;
    *row_lse = -INFINITY;
    return;
  }
  float total = 0.0f;
  for (int s = 0; s < n; ++s) {
    weight[s] = lse[s] == -INFINITY ? 0.0f : expf(lse[s] - m);
    total += weight[s];
  }
  for (int s = 0; s < n; ++s) weight[s] /= total;
  *row_lse = m + logf(total);
}

}  // namespace lk
