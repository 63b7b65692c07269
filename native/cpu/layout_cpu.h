// Jagged-layout queries the CPU kernels share (SPEC §2 layouts).
#pragma once
#include <algorithm>

#include "../../cuda/common/attention_params.h"

namespace lk::cpu {

// The longest sequence of a layout of `batch` sequences (0 when all are empty).
inline int longest_sequence(const LayoutView& layout, int batch) {
  int n = 0;
  for (int b = 0; b < batch; ++b) n = std::max(n, layout.offsets[b + 1] - layout.offsets[b]);
  return n;
}

}  // namespace lk::cpu
