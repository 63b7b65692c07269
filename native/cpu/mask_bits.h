// The mask rule over one row of a block of up to 64 keys as a bit set, a few lane-wise operations
// per 8 keys instead of a rule lookup per pair: shared by the CPU forward (attention_cpu.cc) and
// backward (attention_backward_cpu.cc). The keys' roles / segments / positions are gathered once per
// block into arrays padded to a multiple of 8 with role -1 (no flags: never allowed).
// Also the entry-by-entry classification of a partial tile that both gather from
// (classify_partial_entries).
#pragma once
#include <stdint.h>
#include <cstring>

#include "../../cuda/common/mask_rules.h"
#include "simd.h"

namespace lk::cpu {

// seg_admits (cuda/common/mask_rules.h) as flags over the cases a key's segment / position can be
// in relative to the query's.
constexpr int32_t kAdmitSame = 1, kAdmitEarlier = 2, kAdmitLater = 4, kAdmitSelf = 8;
inline int32_t seg_admit_flags(uint8_t rel) {
  switch (rel) {
    case kSegSelf: return kAdmitSelf;
    case kSegSame: return kAdmitSame;
    case kSegEarlier: return kAdmitEarlier;
    case kSegSameOrEarlier: return kAdmitSame | kAdmitEarlier;
    case kSegAny: return kAdmitSame | kAdmitEarlier | kAdmitLater;
    default: return 0;
  }
}

// Bit j set when the query (role rq, segment sq, aligned position pq) may see key j of the block,
// j < n8 (a multiple of 8, at most 64).
LK_INLINE uint64_t row_allowed_bits(const MaskRule& rule, int rq, int sq_value, int pq_value, const int32_t* key_role,
                                    const int32_t* key_seg, const int32_t* key_pos, int n8) {
  const v8i sq = splat_int(sq_value), pq = splat_int(pq_value);
  v8i flags_of[kNumRoles], causal_of[kNumRoles];
  for (int rk = 0; rk < kNumRoles; ++rk) {
    flags_of[rk] = splat_int(seg_admit_flags(rule.seg[rq][rk]));
    causal_of[rk] = splat_int(rule.causal[rq][rk] ? -1 : 0);
  }
  uint64_t bits = 0;
  for (int j = 0; j < n8; j += 8) {
    v8i role, seg, pos;
    std::memcpy(&role, key_role + j, sizeof role);
    std::memcpy(&seg, key_seg + j, sizeof seg);
    std::memcpy(&pos, key_pos + j, sizeof pos);
    const v8i flags = role == 0 ? flags_of[0] : (role == 1 ? flags_of[1] : (role == 2 ? flags_of[2] : v8i{}));
    const v8i causal = role == 0 ? causal_of[0] : (role == 1 ? causal_of[1] : causal_of[2]);
    const v8i admit = ((seg == sq) & ((flags & kAdmitSame) != 0)) | ((seg < sq) & ((flags & kAdmitEarlier) != 0)) |
                      ((seg > sq) & ((flags & kAdmitLater) != 0)) | ((pos == pq) & ((flags & kAdmitSelf) != 0));
    const v8i ok = admit & (~causal | (pos <= pq));
    bits |= (uint64_t)lane_mask8(ok) << j;
  }
  return bits;
}

// Which side of a partial (query tile x key tile) pair classify_partial_entries splits into single
// tokens: the keys (the forward and the dq pass gather keys) or the query rows (the dk / dv pass).
enum class SplitSide { kKeys, kRows };

// The class (kTileSkip / kTileFull / kTilePartial) of each of `count` consecutive tokens of one side
// of a partial pair against the other side's whole bounds, into cls[0, count): tokens nobody on the
// other side may see are dropped, those everybody sees run without a rule check, the rest are
// checked per pair. Roles are classified first: a role whose tokens are all masked (or all allowed)
// needs no per-token test, which keeps sparse rules such as PerSRec's cheap to walk. The split
// side's tokens are first_token + i (for segments / roles) at positions first_pos + i (aligned).
LK_INLINE void classify_partial_entries(const MaskRule& rule, const TileBounds& rows, const TileBounds& keys, SplitSide side,
                                        const int32_t* segments, const uint8_t* roles, int64_t first_token, int first_pos,
                                        int count, int8_t* cls) {
  const TileBounds& split = side == SplitSide::kKeys ? keys : rows;
  auto classify = [&](const TileBounds& part) {
    return side == SplitSide::kKeys ? classify_tile(rule, rows, part) : classify_tile(rule, part, keys);
  };
  int role_class[kNumRoles] = {kTileSkip, kTileSkip, kTileSkip};
  for (int r = 0; r < kNumRoles; ++r) {
    if (!(split.sum.role_mask & (1u << r))) continue;
    TileBounds role_only = split;
    role_only.sum.role_mask = 1u << r;
    role_class[r] = classify(role_only);
  }
  for (int i = 0; i < count; ++i) {
    const int64_t token = first_token + i;
    const int r = roles ? roles[token] : 0;
    int c = role_class[r];
    if (c == kTilePartial) {
      TileBounds one;
      one.sum.seg_min = one.sum.seg_max = segments ? segments[token] : 0;
      one.sum.role_mask = 1u << r;
      one.pos_lo = one.pos_hi = first_pos + i;
      c = classify(one);
    }
    cls[i] = (int8_t)c;
  }
}

}  // namespace lk::cpu
