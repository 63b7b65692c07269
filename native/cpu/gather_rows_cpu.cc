#include "gather_rows_cpu.h"

#include <algorithm>
#include <cstring>

#include "../../cuda/common/half_convert.h"
#include "../thread_pool.h"

namespace lk::cpu {
namespace {

float load(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case kBFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

void store(void* base, DType dtype, int64_t i, float x) {
  switch (dtype) {
    case kFloat16: static_cast<uint16_t*>(base)[i] = float_to_half(x); break;
    case kBFloat16: static_cast<uint16_t*>(base)[i] = float_to_bfloat16(x); break;
    default: static_cast<float*>(base)[i] = x; break;
  }
}

}  // namespace

void gather_rows(const GatherParams& p) {
  const size_t es = p.dtype == kFloat32 ? 4 : 2;
  const size_t row_bytes = (size_t)p.width * es;
  constexpr int64_t kRowsPerTask = 256;  // enough copying per task to amortize the hand-off
  const int64_t tasks = (p.rows + kRowsPerTask - 1) / kRowsPerTask;
  ThreadPool::shared().parallel_for(tasks, [&](int64_t task, int) {
    const int64_t end = std::min(p.rows, (task + 1) * kRowsPerTask);
    for (int64_t i = task * kRowsPerTask; i < end; ++i) {
      const void* src_base = p.sources[p.src_sel[i]];
      const int64_t src0 = (int64_t)p.src_row[i] * p.width, dst0 = (int64_t)p.dst_row[i] * p.width;
      const float alpha = p.alpha ? p.alpha[i] : 1.0f;
      if (alpha == 1.0f) {
        std::memcpy(static_cast<char*>(p.dst) + dst0 * es, static_cast<const char*>(src_base) + src0 * es, row_bytes);
        continue;
      }
      for (int64_t c = 0; c < p.width; ++c)
        store(p.dst, p.dtype, dst0 + c, blend_element(alpha, load(src_base, p.dtype, src0 + c), load(p.dst, p.dtype, dst0 + c)));
    }
  });
}

}  // namespace lk::cpu
