// Native CPU row gather / blend behind MemoryBank (see cuda/common/gather_params.h).
#pragma once
#include "../../cuda/common/gather_params.h"

namespace lk::cpu {

void gather_rows(const GatherParams& p);

}  // namespace lk::cpu
