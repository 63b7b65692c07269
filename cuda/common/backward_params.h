// Arguments of the backward ops (SPEC §9) as every backend sees them, and the per-pair gradient
// arithmetic the CPU and CUDA kernels share (one place for the formulas).
#pragma once
#include <math.h>
#include <stdint.h>
#include "attention_params.h"
#include "sparse_params.h"
#include "host_device.h"

namespace lk {

// maskedAttentionBackward: fwd describes the forward call (fwd.out = its output, fwd.lse its lse;
// both read only, and only for softmax).
struct AttentionBackwardParams {
  AttentionParams fwd;
  const void* d_out;  // [tq, heads, value_dim], dtype of q
  void* dq;           // [tq, heads, head_dim]
  void* dk;           // [tk, kv_heads, head_dim]
  void* dv;           // [tk, kv_heads, value_dim]
};

// sparseAttentionBackward: fwd.indices are HOST pointers on the CPU path and uploaded by CUDA.
struct SparseBackwardParams {
  SparseParams fwd;
  const void* d_out;
  void* dq;
  void* dk;  // full-size [tk, kv_heads, head_dim], scatter-added
  void* dv;
};

// indexerScoresBackward: d_scores is float32 [nq, fwd.max_len]; entries past a row's keys ignored.
struct IndexerBackwardParams {
  IndexerParams fwd;  // fwd.scores unused
  const float* d_scores;
  void* dq;  // [nq, heads, dim]
  void* dk;  // [tk, dim]
  void* dw;  // [nq, heads]
};

// Softmax, FlashAttention-2 style: the forward's weight p = exp(s - lse) is recomputed from the
// stored lse (no [L, L] matrix is kept), and the row term delta = dO · O replaces Σ_j p_j dp_j.
// dp = dO · v_j; d score = p (dp - delta).
LK_HD float softmax_weight(float score, float lse) { return expf(score - lse); }
LK_HD float softmax_dscore(float p, float dp, float delta) { return p * (dp - delta); }

// HSTU silu: weight = silu(s) / divisor; d score = dp · silu'(s) / divisor with
// silu'(s) = σ(s) (1 + s (1 − σ(s))).
LK_HD void silu_weight_dscore(float score, float dp, float inv_divisor, float* weight, float* dscore) {
  const float sg = 1.0f / (1.0f + expf(-score));
  *weight = score * sg * inv_divisor;
  *dscore = dp * sg * (1.0f + score * (1.0f - sg)) * inv_divisor;
}

// One allowed pair, as both CUDA backward paths (scalar and tensor-core) recompute it: its weight
// and the gradient of its raw score q · k (scale · d score), from q · k, dp = dO · v and the
// query row's lse / delta (softmax) or the silu divisor.
LK_HD void pair_weight_dscore(float qk, float dp, bool softmax, float scale, float lse, float delta, float inv_divisor,
                              float* weight, float* d_qk) {
  const float s = qk * scale;
  float w, ds;
  if (softmax) {
    w = softmax_weight(s, lse);
    ds = softmax_dscore(w, dp, delta);
  } else {
    silu_weight_dscore(s, dp, inv_divisor, &w, &ds);
  }
  *weight = w;
  *d_qk = ds * scale;
}

}  // namespace lk
