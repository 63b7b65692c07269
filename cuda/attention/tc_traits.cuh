// Tile shapes and shared-memory layout of the tensor-core attention kernel (tc_attention_kernel.cuh),
// per head capacity kCap = max(D, Dv) rounded up to 16, 32, 64, 128 or 256, and head pack kPack: the
// number of consecutive heads one block computes (small heads: tc_head_pack below).
//
// A block is 4 warps; warp w owns query rows 16 w .. 16 w + 15 of the block's kBlockM = 64 rows
// (one m16 row block of mma.m16n8k16), so S = Q K^T for a key tile is 16 x kBlockN per warp, held
// in registers. Shared memory, in 16-bit elements, rows of kCap elements, 16-byte chunks XOR-swizzled
// (swizzle_chunk below):
//
//   [ K stage 0 | K stage 1 | V stage 0 | V stage 1 ]            kCap <= 128 (Q fragments in registers)
//   [ K stage 0 | K stage 1 | V stage 0 | V stage 1 | Q ]        kCap == 256 (Q re-read from shared memory)
//
// K / V stages hold kPack slots of kBlockN x kCap each: slot s is kv head g0 + s, g0 the kv head of
// the block's first head (a packed block copies each distinct kv head of its heads once; GQA heads
// of one group share a slot). Q holds kPack tiles of kBlockM x kCap, one per packed head, as does
// the output staging. Double buffering: the next visited key tile is copied with cp.async into one
// stage while the current one is computed from the other. With Q in registers, the Q tiles
// (kPack x kBlockM x kCap, kBlockM <= kBlockN) are first copied into K stage 1, turned into
// fragments, and the stage is then free for the pipeline. The output tile is staged at the end
// through K stages 0-1 (Q in registers) or the Q region (kCap 256) for 16-byte global stores.
#pragma once

namespace lk::cuda {

template <int kCap, int kPack = 1>
struct TcAttentionTraits {
  static_assert(kCap == 16 || kCap == 32 || kCap == 64 || kCap == 128 || kCap == 256, "unsupported head capacity");
  static_assert(kPack == 1 || (kCap <= 32 && (kPack == 2 || kPack == 4)), "heads are packed only when small");
  static constexpr int kPackShift = kPack == 4 ? 2 : kPack == 2 ? 1 : 0;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;             // query rows per block: one m16 block per warp
  static constexpr int kBlockN = kCap == 256 ? 32 : 64;  // keys per tile
  static constexpr bool kQInRegs = kCap <= 128;          // kCap 256: Q fragments re-read per k-step
  static constexpr int kChunks = kCap / 8;               // 16-byte chunks per shared row
  static constexpr int kKSteps = kCap / 16;              // k-steps of Q K^T (capacity; D decides at run time)
  static constexpr int kSTiles = kBlockN / 8;            // n8 tiles of S per warp
  static constexpr int kOTiles = kCap / 8;               // n8 tiles of O per warp (Dv decides at run time)
  static constexpr int kSlotElems = kBlockN * kCap;      // one kv head's keys of a stage
  static constexpr int kTileElems = kPack * kSlotElems;  // one K or V stage
  static constexpr int kHeadQElems = kBlockM * kCap;     // one packed head's Q (and output) tile
  static constexpr int kQElems = kPack * kHeadQElems;
  static constexpr int kKOffset = 0;                     // stage s at kKOffset + s * kTileElems
  static constexpr int kVOffset = 2 * kTileElems;
  static constexpr int kQOffset = kQInRegs ? kTileElems : 4 * kTileElems;  // aliases K stage 1 when in registers
  static constexpr int kOutOffset = kQInRegs ? 0 : kQOffset;               // output staging, after the key loop
  static constexpr int kSmemBytes = 2 * (4 * kTileElems + (kQInRegs ? 0 : kQElems));
  static_assert(!kQInRegs || kBlockM <= kBlockN, "Q must fit the K stage it borrows");
  static_assert(kQInRegs ? kQElems <= 2 * kTileElems : true, "output staging must fit K stages 0-1");
  static_assert(kBlockN / 2 <= 32, "one 32-bit word of allow bits per thread and tile");
};

// Smallest tensor-core capacity holding both head sizes (D, Dv in {8, 16, 32, 64, 128, 256}).
inline int tc_head_capacity(int head_dim, int value_dim) {
  const int d = head_dim > value_dim ? head_dim : value_dim;
  return d <= 16 ? 16 : d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

// Heads per block of the tensor-core kernel: 4 (kCap 16) or 2 (kCap 32) consecutive heads when the
// head count allows, so a block's key tile, mask bits and pipeline serve several heads; larger heads
// fill an mma tile alone (1). Packs stay within the 48 KiB of shared memory needing no opt-in.
inline int tc_head_pack(int cap, int heads) {
  const int most = cap <= 16 ? 4 : cap <= 32 ? 2 : 1;
  for (int pack = most; pack > 1; pack /= 2)
    if (heads % pack == 0) return pack;
  return 1;
}

// XOR swizzle of 16-byte chunks. ldmatrix reads one 16-byte chunk from each of 8 consecutive rows;
// shared memory serves 8 chunks (128 bytes) per wavefront, so those 8 chunks must land in 8
// different chunk slots of a 128-byte line. Rows of >= 8 chunks: chunk c of row r goes to
// c ^ (r & 7) inside its group of 8. Shorter rows share a 128-byte line (4-chunk rows: 2 per line,
// 2-chunk rows: 4 per line), so the XOR takes the row bits above those: (r >> 1) & 3, (r >> 2) & 1.
// cp.async writes of consecutive chunks by a warp stay conflict-free too (a bijection per line).
template <int kChunks>
__device__ __forceinline__ int swizzle_chunk(int row, int chunk) {
  if constexpr (kChunks >= 8) return chunk ^ (row & 7);
  else if constexpr (kChunks == 4) return chunk ^ ((row >> 1) & 3);
  else return chunk ^ ((row >> 2) & 1);
}

// Element offset of chunk `chunk` of row `row` in a [rows][kChunks * 8] swizzled tile.
template <int kChunks>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * (kChunks * 8) + swizzle_chunk<kChunks>(row, chunk) * 8;
}

}  // namespace lk::cuda
