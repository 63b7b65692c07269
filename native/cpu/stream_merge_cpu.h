// The multi-stream merge on the CPU (SPEC §12), the arithmetic of cuda/common/stream_merge.h.
#pragma once
#include "../../cuda/common/stream_merge.h"

namespace lk::cpu {

// Host pointers throughout.
void merge_streams(const MergeParams& p);

}  // namespace lk::cpu
