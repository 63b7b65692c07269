// Host-side helpers shared by the CUDA launch code (cuda/**/*.cu): error strings that leave no stale
// error behind, and the launch limits every grid must respect.
#pragma once
#include <stdint.h>
#include <string>

#include "compat.cuh"

namespace lk::cuda {

// Grid limits of every CUDA device since sm_30: x up to 2^31 - 1 blocks, y and z up to 65,535.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;

// An empty string on success, else "what: message". A failed runtime call also sets the calling
// thread's last error (cudaGetLastError); it is cleared here, so that the next op, which checks
// cudaGetLastError after its launches, is never blamed for this one's failure. (Sticky errors, an
// illegal address inside a kernel, cannot be cleared: every later call reports them, as it must.)
inline std::string check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return std::string();
  cudaGetLastError();
  return std::string(what) + ": " + cudaGetErrorString(err);
}

// Called first by every op: an error left on this thread by anything before the op (a failed
// allocation on the same thread, a caller's own CUDA call) is not this op's; discard it.
inline void discard_stale_error() { cudaGetLastError(); }

// The blocks of a 1-D grid, or an error naming the op when `blocks` exceeds grid.x's 2^31 - 1.
inline std::string grid_x(int64_t blocks, const char* what, unsigned* out) {
  if (blocks < 0 || blocks > kMaxGridX)
    return std::string(what) + ": " + std::to_string(blocks) + " blocks exceed the CUDA grid limit of 2^31 - 1";
  *out = (unsigned)blocks;
  return std::string();
}

}  // namespace lk::cuda
