// Mask rules (SPEC §3) in the compact form the kernels read: 9 segment relations then 9 causal
// flags, indexed [queryRole * 3 + keyRole]. The codes match cuda/common/mask_rules.h.
export type RoleName = 'item' | 'memory' | 'target';
export type SegRelation = 'none' | 'self' | 'same' | 'earlier' | 'same-or-earlier' | 'any';
export interface RuleEntry { seg: SegRelation; causal: boolean }
export type MaskRule = Partial<Record<RoleName, Partial<Record<RoleName, RuleEntry>>>>;
export type PresetName = 'causal' | 'full' | 'persrec' | 'rec2pm-reference' | 'rec2pm-update';

export const ROLE_NAMES: readonly RoleName[] = ['item', 'memory', 'target'];
const SEG_CODE: Record<SegRelation, number> = { none: 0, self: 1, same: 2, earlier: 3, 'same-or-earlier': 4, any: 5 };

// Tables written as in the SPEC: rows = query role, columns = key role; '.' = none; all causal.
type Row = [string, string, string];
function causalTable(item: Row, memory: Row, target: Row): MaskRule {
  const rule: MaskRule = {};
  const rows: Record<RoleName, Row> = { item, memory, target };
  for (const rq of ROLE_NAMES) {
    const row: Partial<Record<RoleName, RuleEntry>> = {};
    ROLE_NAMES.forEach((rk, i) => {
      if (rows[rq][i] !== '.') row[rk] = { seg: rows[rq][i] as SegRelation, causal: true };
    });
    rule[rq] = row;
  }
  return rule;
}

function everyEntry(seg: SegRelation, causal: boolean): MaskRule {
  const entry = (): Partial<Record<RoleName, RuleEntry>> => ({ item: { seg, causal }, memory: { seg, causal }, target: { seg, causal } });
  return { item: entry(), memory: entry(), target: entry() };
}

export const presets: Readonly<Record<PresetName, MaskRule>> = Object.freeze({
  causal: everyEntry('any', true),
  full: everyEntry('any', false),
  persrec: causalTable(['same', 'earlier', '.'], ['same', 'same-or-earlier', '.'], ['same', 'earlier', 'self']),
  'rec2pm-reference': causalTable(['any', '.', '.'], ['any', 'same', '.'], ['any', '.', 'self']),
  'rec2pm-update': causalTable(['same', 'same', '.'], ['same', 'same', '.'], ['same', 'same', 'self']),
});

/**
 * Validates a preset name or rule object and encodes it for the kernels. Names are matched as own
 * names only (SPEC §6): 'toString' or '__proto__' is an unknown preset / relation / role.
 */
export function encodeRule(rule: unknown, name = 'rule'): Uint8Array {
  let table: MaskRule;
  if (typeof rule === 'string') {
    if (!Object.hasOwn(presets, rule))
      throw new RangeError(`${name}: unknown preset '${rule}', expected one of ${Object.keys(presets).join(', ')}`);
    table = presets[rule as PresetName];
  } else if (rule !== null && typeof rule === 'object' && !Array.isArray(rule)) {
    table = rule as MaskRule;
  } else {
    throw new TypeError(`${name}: expected a preset name or a rule object`);
  }
  const code = new Uint8Array(18);
  for (const key of Object.keys(table))
    if (!ROLE_NAMES.includes(key as RoleName)) throw new RangeError(`${name}: unknown query role '${key}' (item, memory, target)`);
  ROLE_NAMES.forEach((rq, i) => {
    const row = Object.hasOwn(table, rq) ? table[rq] : undefined;
    if (row === undefined) return;
    if (row === null || typeof row !== 'object') throw new TypeError(`${name}.${rq}: expected an object of entries`);
    for (const key of Object.keys(row))
      if (!ROLE_NAMES.includes(key as RoleName)) throw new RangeError(`${name}.${rq}: unknown key role '${key}' (item, memory, target)`);
    ROLE_NAMES.forEach((rk, j) => {
      const entry = Object.hasOwn(row, rk) ? row[rk] : undefined;
      if (entry === undefined) return;
      if (entry === null || typeof entry !== 'object') throw new TypeError(`${name}.${rq}.${rk}: expected { seg, causal }`);
      if (typeof entry.seg !== 'string' || !Object.hasOwn(SEG_CODE, entry.seg))
        throw new RangeError(`${name}.${rq}.${rk}.seg: expected one of ${Object.keys(SEG_CODE).join(', ')}, got ${String(entry.seg)}`);
      if (typeof entry.causal !== 'boolean') throw new TypeError(`${name}.${rq}.${rk}.causal: expected a boolean`);
      code[i * 3 + j] = SEG_CODE[entry.seg];
      code[9 + i * 3 + j] = entry.causal ? 1 : 0;
    });
  });
  return code;
}
