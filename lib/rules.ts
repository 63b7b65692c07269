// Mask rules (SPEC §3) in the compact form the kernels read: roles² segment relations then roles²
// causal flags, indexed [queryRole * roles + keyRole], with the role and relation codes of
// cuda/common/mask_rules.h as the addon reports them (`codes()`).
import { addonRecord, codes } from './native';

export type RoleName = 'item' | 'memory' | 'target';
export type SegRelation = 'none' | 'self' | 'same' | 'earlier' | 'same-or-earlier' | 'any';
export interface RuleEntry { seg: SegRelation; causal: boolean }
export type MaskRule = Partial<Record<RoleName, Partial<Record<RoleName, RuleEntry>>>>;
export type PresetName = 'causal' | 'full' | 'persrec' | 'rec2pm-reference' | 'rec2pm-update';

/** The token roles a layout's `roles` array holds, by name. */
export const ROLE_NAMES: readonly RoleName[] = Object.freeze(['item', 'memory', 'target']);
/** The code of each role in a layout's `roles` Uint8Array (e.g. `roles[t] = ROLE.memory`), read from the addon. */
export const ROLE: Readonly<Record<RoleName, number>> = addonRecord(ROLE_NAMES, () => codes().role);
const SEG_RELATIONS: readonly SegRelation[] = ['none', 'self', 'same', 'earlier', 'same-or-earlier', 'any'];
const SEG_CODE: Readonly<Record<SegRelation, number>> = addonRecord(SEG_RELATIONS, () => codes().segRelation);

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
  const roles = codes().roleCount;
  const code = new Uint8Array(2 * roles * roles);
  for (const key of Object.keys(table))
    if (!ROLE_NAMES.includes(key as RoleName)) throw new RangeError(`${name}: unknown query role '${key}' (item, memory, target)`);
  ROLE_NAMES.forEach((rq) => {
    const i = ROLE[rq];
    const row = Object.hasOwn(table, rq) ? table[rq] : undefined;
    if (row === undefined) return;
    if (row === null || typeof row !== 'object') throw new TypeError(`${name}.${rq}: expected an object of entries`);
    for (const key of Object.keys(row))
      if (!ROLE_NAMES.includes(key as RoleName)) throw new RangeError(`${name}.${rq}: unknown key role '${key}' (item, memory, target)`);
    ROLE_NAMES.forEach((rk) => {
      const j = ROLE[rk];
      const entry = Object.hasOwn(row, rk) ? row[rk] : undefined;
      if (entry === undefined) return;
      if (entry === null || typeof entry !== 'object') throw new TypeError(`${name}.${rq}.${rk}: expected { seg, causal }`);
      if (typeof entry.seg !== 'string' || !Object.hasOwn(SEG_CODE, entry.seg))
        throw new RangeError(`${name}.${rq}.${rk}.seg: expected one of ${Object.keys(SEG_CODE).join(', ')}, got ${String(entry.seg)}`);
      if (typeof entry.causal !== 'boolean') throw new TypeError(`${name}.${rq}.${rk}.causal: expected a boolean`);
      code[i * roles + j] = SEG_CODE[entry.seg];
      code[roles * roles + i * roles + j] = entry.causal ? 1 : 0;
    });
  });
  return code;
}
