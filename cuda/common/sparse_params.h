// Arguments of the indexer-selected sparse attention ops (SPEC §5), as every backend sees them, and
// the selection order shared by the CPU and CUDA top-k: larger value first, then lower index;
// NaN and -Infinity are never selected.
#pragma once
#include <stdint.h>
#include "attention_params.h"
#include "host_device.h"

namespace lk {

struct IndexerParams {
  const void* q;        // [nq, heads, dim]
  const void* k;        // [tk, dim]
  const void* w;        // [nq, heads]
  float* scores;        // [nq, max_len] float32
  DType dtype;          // of q, k, w
  int batch;
  int64_t nq, tk;
  int heads, dim;
  const int32_t* q_offsets;  // [batch + 1]
  const int32_t* k_offsets;  // [batch + 1]
  int max_len;               // longest key sequence
};

struct TopKParams {
  const float* scores;     // [rows, cols]
  int32_t* indices;        // [rows, k]
  float* values;           // [rows, k]
  int64_t rows;
  int cols, k;
  const int32_t* lengths;  // [rows] or null: row r considers its first lengths[r] columns
};

struct SparseParams {
  const void* q;  // [nq, heads, head_dim]
  const void* k;  // [tk, kv_heads, head_dim]
  const void* v;  // [tk, kv_heads, value_dim]
  void* out;      // [nq, heads, value_dim], dtype of q
  float* lse;     // [nq, heads] or null
  const int32_t* indices;  // [nq, top_k], positions in the query's own key sequence, -1 = none
  DType dtype;
  int batch;
  int64_t nq, tk;
  int heads, kv_heads, head_dim, value_dim, top_k;
  const int32_t* q_offsets;
  const int32_t* k_offsets;
  float scale;
};

// Order-preserving map of a float onto uint32 (larger float -> larger key); 0 for values that are
// never selected (NaN, -Infinity), which every selectable value's key exceeds.
LK_HD uint32_t topk_key(float x) {
  union { float f; uint32_t i; } cvt;  // a bit cast that nvcc and g++ both accept
  cvt.f = x;
  uint32_t u = cvt.i;
  u = u == 0x80000000u ? 0u : u;  // -0 and +0 are equal floats: one key
  // Negative floats: flip all bits; positive: set the sign bit. Written without branches: the
  // sign of random scores is unpredictable.
  const uint32_t flip = (uint32_t)((int32_t)u >> 31) | 0x80000000u;
  const bool never = (u & 0x7fffffffu) > 0x7f800000u || u == 0xff800000u;  // NaN, -Infinity
  return never ? 0u : (u ^ flip);
}

// Selection order: a before b when a's key is larger, or equal with a lower index.
LK_HD bool topk_before(uint32_t key_a, int idx_a, uint32_t key_b, int idx_b) {
  return key_a > key_b || (key_a == key_b && idx_a < idx_b);
}

}  // namespace lk
