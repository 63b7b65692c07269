// Tile shapes of the masked-attention kernel, per head-size capacity kCap (D and Dv <= kCap).
// Sized so that the float32 tiles fit the 48 KB of static shared memory every target has and each
// thread keeps 16-32 output accumulators in registers.
#pragma once

namespace lk::cuda {

template <int kCap>
struct AttentionTraits {
  static_assert(kCap == 32 || kCap == 64 || kCap == 128 || kCap == 256, "unsupported head capacity");
  static constexpr int kThreads = 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kBlockM = kCap <= 64 ? 64 : (kCap == 128 ? 32 : 16);  // query rows per block
  static constexpr int kBlockN = kCap == 256 ? 16 : 32;                       // keys per tile (<= 32: one warp lane each)
  static constexpr int kStride = kCap + 1;  // shared row stride; +1 keeps column reads conflict-free
  static constexpr int kScoresPerThread = kBlockM * kBlockN / kThreads;
  static constexpr int kAccPerThread = kBlockM * kCap / kThreads;  // output elements owned per thread
  static_assert(kBlockM * kBlockN % kThreads == 0 && kBlockM * kCap % kThreads == 0, "uneven split");
};

// Smallest capacity holding both head sizes.
inline int head_capacity(int head_dim, int value_dim) {
  const int d = head_dim > value_dim ? head_dim : value_dim;
  return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

}  // namespace lk::cuda
