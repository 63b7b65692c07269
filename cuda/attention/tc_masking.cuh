// The mask rule per fragment element of the tensor-core attention kernel. A thread's S accumulators
// for one key tile are s[nt][i], nt < kBlockN / 8, i < 4: row g + 8 (i >> 1) of its warp's 16 rows,
// column 8 nt + 2 t + (i & 1) of the tile (g = lane / 4, t = lane % 4; the m16n8 C layout). Their
// allow bits are one word per thread and tile: bit 4 nt + i.
#pragma once
#include <stdint.h>

#include "../common/compat.cuh"
#include "../common/mask_rules.h"

namespace lk::cuda {

// What the rule needs about one of the thread's two accumulator rows.
struct TcRow {
  int role;
  int seg;
  int pos;  // aligned position (bottom-right: i + Lk - Lq)
};

// Bits of the allow word that belong to accumulator row r: i = 0, 1 (r = 0) or i = 2, 3 (r = 1).
__device__ __forceinline__ uint32_t tc_row_bits(int r) { return r ? 0xccccccccu : 0x33333333u; }

// Allow bits of one key tile (columns col0 .. col0 + cols - 1 of the sequence). Columns past `cols`
// (padding of the last tile) are never allowed; with `partial` every pair is checked against the
// rule, reading the tile's key roles / segments staged in shared memory; otherwise (a full tile)
// every real column is allowed.
template <int kSTiles>
__device__ __forceinline__ uint32_t tile_allow_bits(const MaskRule& rule, const TcRow (&row)[2], bool partial, int col0, int cols,
                                                    const uint8_t* k_role, const int32_t* k_seg, int t) {
  uint32_t bits = 0;
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = 8 * nt + 2 * t + c;
      if (j >= cols) continue;
      if (!partial) {
        bits |= 5u << (4 * nt + c);  // both rows
        continue;
      }
      const int rk = k_role[j], sk = k_seg[j];
#pragma unroll
      for (int r = 0; r < 2; ++r)
        if (pair_allowed(rule, row[r].role, rk, row[r].seg, sk, row[r].pos, col0 + j)) bits |= 1u << (4 * nt + 2 * r + c);
    }
  }
  return bits;
}

// The transposed tile of the tensor-core backward's dk / dv pass: accumulator rows are keys (row[r]:
// the key's role, segment and position), columns the queries j of a query tile (aligned position
// q_pos0 + j; roles / segments staged in shared memory); columns past `cols` are never allowed.
template <int kSTiles>
__device__ __forceinline__ uint32_t tile_allow_bits_by_key(const MaskRule& rule, const TcRow (&key)[2], bool partial, int q_pos0, int cols,
                                                           const uint8_t* q_role, const int32_t* q_seg, int t) {
  uint32_t bits = 0;
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = 8 * nt + 2 * t + c;
      if (j >= cols) continue;
      if (!partial) {
        bits |= 5u << (4 * nt + c);
        continue;
      }
      const int rq = q_role[j], sq = q_seg[j];
#pragma unroll
      for (int r = 0; r < 2; ++r)
        if (pair_allowed(rule, rq, key[r].role, sq, key[r].seg, q_pos0 + j, key[r].pos)) bits |= 1u << (4 * nt + 2 * r + c);
    }
  }
  return bits;
}

}  // namespace lk::cuda
