// The mask rule per fragment element of the tensor-core attention kernel. A thread's S accumulators
// for one key tile are s[nt][i], nt < kBlockN / 8, i < 4: row g + 8 (i >> 1) of its warp's 16 rows,
// column 8 nt + 2 t + (i & 1) of the tile (g = lane / 4, t = lane % 4; the m16n8 C layout). Their
// allow bits are one word per thread and tile: bit 4 nt + i.
#pragma once
#include <stdint.h>

#include "../common/attention_params.h"
#include "../common/compat.cuh"
#include "../common/mask_rules.h"

namespace lk::cuda {

// What the rule needs about one of the thread's two accumulator rows.
struct TcRow {
  int role;
  int seg;
  int pos;  // aligned position (bottom-right: i + Lk - Lq)
};

// A thread's two accumulator rows (tile rows row_base + 8 r, r = 0, 1) as the rule sees them: role
// and segment of token first + row of `layout`, a padding row (row >= count) reading the last real
// token (its results are never stored), and aligned position pos0 + row.
__device__ __forceinline__ void tc_rows_of(const LayoutView& layout, int64_t first, int count, int row_base, int pos0, TcRow (&rows)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_base + 8 * r;
    const int64_t t = first + (row < count ? row : count - 1);
    rows[r].role = layout.roles ? layout.roles[t] : 0;
    rows[r].seg = layout.segments ? layout.segments[t] : 0;
    rows[r].pos = pos0 + row;
  }
}

// Bits of the allow word that belong to accumulator row r: i = 0, 1 (r = 0) or i = 2, 3 (r = 1).
__device__ __forceinline__ uint32_t tc_row_bits(int r) { return r ? 0xccccccccu : 0x33333333u; }

// Which side of the rule a thread's accumulator rows stand for: queries (the forward and the
// backward's dq pass; columns are keys) or keys (the backward's transposed dk / dv pass; columns are
// queries).
enum class TcRowsAre { kQueries, kKeys };

// Allow bits of one tile of accumulator rows `row` (role, segment, aligned position) against the
// tile's columns j < cols at positions col_pos0 + j, whose roles / segments are staged in shared
// memory (col_role, col_seg). Columns past `cols` (padding of the last tile) are never allowed; with
// `partial` every pair is checked against the rule, otherwise (a full tile) every real column is
// allowed. kRows says which of (query, key) the rows are, so both orientations share one walk.
template <int kSTiles, TcRowsAre kRows>
__device__ __forceinline__ uint32_t tile_allow_bits_oriented(const MaskRule& rule, const TcRow (&row)[2], bool partial, int col_pos0,
                                                             int cols, const uint8_t* col_role, const int32_t* col_seg, int t) {
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
      const int role = col_role[j], seg = col_seg[j], pos = col_pos0 + j;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const bool allowed = kRows == TcRowsAre::kQueries ? pair_allowed(rule, row[r].role, role, row[r].seg, seg, row[r].pos, pos)
                                                          : pair_allowed(rule, role, row[r].role, seg, row[r].seg, pos, row[r].pos);
        if (allowed) bits |= 1u << (4 * nt + 2 * r + c);
      }
    }
  }
  return bits;
}

// Allow bits of one key tile (columns col0 .. col0 + cols - 1 of the sequence) for query rows.
template <int kSTiles>
__device__ __forceinline__ uint32_t tile_allow_bits(const MaskRule& rule, const TcRow (&row)[2], bool partial, int col0, int cols,
                                                    const uint8_t* k_role, const int32_t* k_seg, int t) {
  return tile_allow_bits_oriented<kSTiles, TcRowsAre::kQueries>(rule, row, partial, col0, cols, k_role, k_seg, t);
}

// The transposed tile of the tensor-core backward's dk / dv pass: accumulator rows are keys (key[r]:
// the key's role, segment and position), columns the queries j of a query tile (aligned position
// q_pos0 + j).
template <int kSTiles>
__device__ __forceinline__ uint32_t tile_allow_bits_by_key(const MaskRule& rule, const TcRow (&key)[2], bool partial, int q_pos0, int cols,
                                                           const uint8_t* q_role, const int32_t* q_seg, int t) {
  return tile_allow_bits_oriented<kSTiles, TcRowsAre::kKeys>(rule, key, partial, q_pos0, cols, q_role, q_seg, t);
}

}  // namespace lk::cuda
