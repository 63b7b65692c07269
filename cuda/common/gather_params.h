// Arguments of the row-gather kernel behind every MemoryBank op: row i of the call copies (or blends
// into) dst[dst_row[i]] from sources[src_sel[i]][src_row[i]]. A MemoryBank update, updateFrom, read
// or assemble is one such call, planned on the host, so each is a single kernel launch.
#pragma once
#include <stdint.h>
#include "attention_params.h"

namespace lk {

constexpr int kMaxGatherSources = 3;

struct GatherParams {
  DType dtype;
  int64_t width;                               // elements per row
  const void* sources[kMaxGatherSources];      // row-major [source_rows[s], width]
  int64_t source_rows[kMaxGatherSources];
  void* dst;                                   // [dst_rows, width]
  int64_t dst_rows;
  int64_t rows;                                // rows copied by this call
  const uint8_t* src_sel;                      // [rows]
  const int32_t* src_row;                      // [rows]
  const int32_t* dst_row;                      // [rows]
  const float* alpha;                          // [rows] or null: dst = alpha * src + (1 - alpha) * dst
};

// One element of the blend, shared by the CPU and CUDA kernels: alpha = 1 is an exact copy.
LK_HD float blend_element(float alpha, float incoming, float current) {
  return alpha == 1.0f ? incoming : alpha * incoming + (1.0f - alpha) * current;
}

}  // namespace lk
