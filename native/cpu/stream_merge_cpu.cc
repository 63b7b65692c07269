#include "stream_merge_cpu.h"

#include <algorithm>

#include "../thread_pool.h"
#include "element_io.h"

namespace lk::cpu {

void merge_streams(const MergeParams& p) {
  constexpr int64_t kRowsPerTask = 512;
  const int64_t tasks = (p.rows + kRowsPerTask - 1) / kRowsPerTask;
  ThreadPool::shared().parallel_for(tasks, [&](int64_t task, int) {
    const int64_t end = std::min(p.rows, (task + 1) * kRowsPerTask);
    for (int64_t row = task * kRowsPerTask; row < end; ++row) {
      float weight[kMaxStreams] = {1.0f, 1.0f, 1.0f};
      if (p.fusion == kFusionUnion) {
        float lse[kMaxStreams];
        for (int s = 0; s < kMaxStreams; ++s) lse[s] = s < p.streams ? p.lses[s][row] : -INFINITY;
        merge_union_weights(lse, kMaxStreams, weight, &p.lse[row]);
      }
      for (int c = 0; c < p.value_dim; ++c) {
        const int64_t e = row * p.value_dim + c;
        float acc = 0.0f;
        for (int s = 0; s < p.streams; ++s)
          if (weight[s] != 0.0f) acc += weight[s] * load_element(p.outs[s], p.dtype, e);
        store_element(p.out, p.dtype, e, acc);
      }
    }
  });
}

}  // namespace lk::cpu
