#include "gather_rows_cpu.h"

#include <algorithm>
#include <cstring>

#include "element_io.h"
#include "../thread_pool.h"

namespace lk::cpu {

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
        store_element(p.dst, p.dtype, dst0 + c, blend_element(alpha, load_element(src_base, p.dtype, src0 + c), load_element(p.dst, p.dtype, dst0 + c)));
    }
  });
}

}  // namespace lk::cpu
