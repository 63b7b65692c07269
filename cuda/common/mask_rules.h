// The mask-rule table of SPEC §3, shared by the CPU and CUDA kernels. The TypeScript layer encodes a
// rule (preset or custom) into MaskRule; the kernels only ever see this compact form.
#pragma once
#include <stdint.h>
#include "host_device.h"

namespace lk {

enum Role : uint8_t { kRoleItem = 0, kRoleMemory = 1, kRoleTarget = 2, kNumRoles = 3 };

// How a key's segment must relate to the query's for a rule entry to admit the pair.
enum SegRelation : uint8_t {
  kSegNone = 0,          // never
  kSegSelf = 1,          // key position == query's aligned position
  kSegSame = 2,          // same segment
  kSegEarlier = 3,       // key segment < query segment
  kSegSameOrEarlier = 4, // key segment <= query segment
  kSegAny = 5,           // any segment
  kNumSegRelations = 6,
};

// entry[rq][rk]: the relation for query role rq and key role rk; causal[rq][rk] adds posK <= posQ.
struct MaskRule {
  uint8_t seg[kNumRoles][kNumRoles];
  uint8_t causal[kNumRoles][kNumRoles];
};

LK_HD bool seg_admits(uint8_t rel, int seg_q, int seg_k, int pos_q, int pos_k) {
  switch (rel) {
    case kSegSelf: return pos_k == pos_q;
    case kSegSame: return seg_k == seg_q;
    case kSegEarlier: return seg_k < seg_q;
    case kSegSameOrEarlier: return seg_k <= seg_q;
    case kSegAny: return true;
    default: return false;
  }
}

// pos_q is the query's aligned position (bottom-right: i + Lk - Lq).
LK_HD bool pair_allowed(const MaskRule& rule, int role_q, int role_k, int seg_q, int seg_k, int pos_q,
                        int pos_k) {
  const uint8_t rel = rule.seg[role_q][role_k];
  if (!seg_admits(rel, seg_q, seg_k, pos_q, pos_k)) return false;
  return !rule.causal[role_q][role_k] || pos_k <= pos_q;
}

// What a rectangle of tokens looks like to the mask: enough to decide, without touching the
// tokens again, whether a query tile x key tile block is all masked, all allowed or mixed.
struct TileSummary {
  int seg_min;
  int seg_max;
  uint32_t role_mask;  // bit r set when some token of the tile has role r
};

// Summary of tokens [begin, end) of one sequence (segments/roles may be null: all 0).
LK_HD TileSummary summarize_tokens(const int32_t* segments, const uint8_t* roles, int64_t begin,
                                   int64_t end) {
  TileSummary s;
  s.seg_min = 0x7fffffff;
  s.seg_max = -0x7fffffff - 1;
  s.role_mask = 0;
  for (int64_t t = begin; t < end; ++t) {
    const int seg = segments ? segments[t] : 0;
    const int role = roles ? roles[t] : 0;
    s.seg_min = seg < s.seg_min ? seg : s.seg_min;
    s.seg_max = seg > s.seg_max ? seg : s.seg_max;
    s.role_mask |= 1u << role;
  }
  return s;
}

enum TileClass : int { kTileSkip = 0, kTilePartial = 1, kTileFull = 2 };

// Bounds of one tile: its summary plus the (aligned) position range it covers, inclusive.
struct TileBounds {
  TileSummary sum;
  int pos_lo;
  int pos_hi;
};

// For one rule entry over whole ranges: can some pair be admitted (any), are all admitted (all)?
LK_HD void entry_range(uint8_t rel, bool causal, const TileBounds& q, const TileBounds& k, bool* any,
                       bool* all) {
  bool seg_any = false, seg_all = false;
  switch (rel) {
    case kSegSelf:
      seg_any = k.pos_lo <= q.pos_hi && q.pos_lo <= k.pos_hi;
      seg_all = q.pos_lo == q.pos_hi && k.pos_lo == k.pos_hi && q.pos_lo == k.pos_lo;
      break;
    case kSegSame:
      seg_any = k.sum.seg_min <= q.sum.seg_max && q.sum.seg_min <= k.sum.seg_max;
      seg_all = q.sum.seg_min == q.sum.seg_max && k.sum.seg_min == k.sum.seg_max &&
                q.sum.seg_min == k.sum.seg_min;
      break;
    case kSegEarlier:
      seg_any = k.sum.seg_min < q.sum.seg_max;
      seg_all = k.sum.seg_max < q.sum.seg_min;
      break;
    case kSegSameOrEarlier:
      seg_any = k.sum.seg_min <= q.sum.seg_max;
      seg_all = k.sum.seg_max <= q.sum.seg_min;
      break;
    case kSegAny:
      seg_any = seg_all = true;
      break;
    default:
      break;
  }
  const bool causal_any = !causal || k.pos_lo <= q.pos_hi;
  const bool causal_all = !causal || k.pos_hi <= q.pos_lo;
  *any = seg_any && causal_any;
  *all = seg_all && causal_all;
}

// Skip when no present role pair can admit anything; full when every present role pair admits
// everything (so the kernel needs no per-element check); partial otherwise. Conservative: a role
// pair counts as present when each role occurs somewhere in its tile.
LK_HD int classify_tile(const MaskRule& rule, const TileBounds& q, const TileBounds& k) {
  bool some = false, every = true;
  for (int rq = 0; rq < kNumRoles; ++rq) {
    if (!(q.sum.role_mask & (1u << rq))) continue;
    for (int rk = 0; rk < kNumRoles; ++rk) {
      if (!(k.sum.role_mask & (1u << rk))) continue;
      bool any, all;
      entry_range(rule.seg[rq][rk], rule.causal[rq][rk] != 0, q, k, &any, &all);
      some = some || any;
      every = every && all;
    }
  }
  if (!some) return kTileSkip;
  return every ? kTileFull : kTilePartial;
}

// Exclusive upper bound on the key positions any query of the tile may see: when every entry that
// the tile's query roles use is causal (or none), keys past the tile's last aligned position are
// never visited, so the key loop stops there instead of classifying masked tiles one by one.
LK_HD int visible_key_end(const MaskRule& rule, const TileBounds& q, int key_len) {
  for (int rq = 0; rq < kNumRoles; ++rq) {
    if (!(q.sum.role_mask & (1u << rq))) continue;
    for (int rk = 0; rk < kNumRoles; ++rk) {
      if (rule.seg[rq][rk] != kSegNone && !rule.causal[rq][rk] && rule.seg[rq][rk] != kSegSelf)
        return key_len;
    }
  }
  const int end = q.pos_hi + 1;
  return end < 0 ? 0 : (end < key_len ? end : key_len);
}

}  // namespace lk
