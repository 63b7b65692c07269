// Arguments of one maskedAttention call, as every backend sees them (plain C++, no CUDA types).
#pragma once
#include <stdint.h>
#include "mask_rules.h"

namespace lk {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt32 = 3 };

enum Normalize : int { kSoftmax = 0, kSilu = 1 };

// A packed jagged layout (SPEC §2). segments / roles may be null (all zero).
struct LayoutView {
  const int32_t* offsets;   // [batch + 1]
  const int32_t* segments;  // [tokens] or null
  const uint8_t* roles;     // [tokens] or null
};

struct AttentionParams {
  const void* q;   // [tq, heads, head_dim]
  const void* k;   // [tk, kv_heads, head_dim]
  const void* v;   // [tk, kv_heads, value_dim]
  void* out;       // [tq, heads, value_dim], dtype of q
  float* lse;      // [tq, heads] or null
  DType dtype;
  int batch;
  int64_t tq, tk;
  int heads, kv_heads, head_dim, value_dim;
  LayoutView q_layout, kv_layout;
  MaskRule rule;
  float scale;
  Normalize normalize;
  float silu_inv_divisor;  // 1 / siluDivisor
  int max_q_len, max_k_len;  // longest sequence of each layout (grid sizing)
};

}  // namespace lk
