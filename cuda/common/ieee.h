// IEEE semantics of non-finite values shared by the CPU and CUDA kernels (SPEC §3: "NaN / Inf follow
// IEEE arithmetic over allowed pairs only"), written so that the reference's float64 loops and every
// backend's float32 kernels agree on which rows are NaN:
// - the running maximum of a softmax propagates NaN (the reference's loop keeps a NaN score), and an
//   allowed +Inf score makes the row NaN through exp(Inf - Inf), exactly as the reference;
// - a row whose allowed scores are all -Inf is NaN (the reference's exp(-Inf - -Inf)); an online
//   softmax meeting only -Inf scores so far gives them weight 0 for now (0 times a non-finite value
//   still NaN, as in the reference) and decides at the end: NaN if no larger score ever came;
// - a row with no allowed key at all is 0 (lse -Inf), never NaN;
// - relu keeps NaN, as the reference's Math.max(0, x) does;
// - a masked pair contributes by selection (never by multiplying its value by a zero weight), so a
//   masked key's NaN / Inf never reaches an output.
#pragma once
#include <stdint.h>
#include "host_device.h"

namespace lk {

// max(a, b) that is NaN when either is NaN (IEEE maxNaN; fmaxf would drop the NaN).
LK_HD float max_keep_nan(float a, float b) { return (a < b || b != b) ? b : a; }

// relu(x) = Math.max(0, x): NaN stays NaN (a `x > 0 ? x : 0` relu would map NaN to 0).
LK_HD float relu_keep_nan(float x) { return x < 0.0f ? 0.0f : x; }

// A quiet NaN (a bit pattern: nvcc and g++ both accept it in host and device code).
LK_HD float quiet_nan() {
  union { uint32_t u; float f; } cvt;
  cvt.u = 0x7fc00000u;
  return cvt.f;
}

// True for every finite float; false for +-Inf and NaN (x - x is NaN for both). No -ffast-math
// anywhere in the build, so the subtraction is not folded away.
LK_HD bool is_finite_f32(float x) { return x - x == 0.0f; }

}  // namespace lk
