// Mask rules of SPEC §3 written out plainly for the oracle. Independent of lib/rules.ts and of the
// kernels' encoded tables on purpose: a typo there must not be copied here.
//
// Roles are numbered as in SPEC §2: 0 = item, 1 = memory, 2 = target.

export type Role = 'item' | 'memory' | 'target';
export type SegRelation = 'none' | 'self' | 'same' | 'earlier' | 'same-or-earlier' | 'any';
export interface RuleEntry { seg: SegRelation; causal: boolean }
/** `{ [queryRole]: { [keyRole]: { seg, causal } } }`; a missing entry means `'none'`. */
export type MaskRule = Partial<Record<Role, Partial<Record<Role, RuleEntry>>>>;
export type PresetName = 'causal' | 'full' | 'persrec' | 'rec2pm-reference' | 'rec2pm-update';

/** Role names indexed by their numeric code (SPEC §2). */
export const roleNames: readonly Role[] = ['item', 'memory', 'target'];
/** Numeric code of each role (SPEC §2). */
export const roleCodes: Readonly<Record<Role, number>> = { item: 0, memory: 1, target: 2 };
export const segRelations: readonly SegRelation[] = ['none', 'self', 'same', 'earlier', 'same-or-earlier', 'any'];

const entry = (seg: SegRelation, causal: boolean): RuleEntry => ({ seg, causal });
const c = (seg: SegRelation): RuleEntry => entry(seg, true);

// The SPEC table, entry by entry. `·` (none) entries are simply left out.
export const referencePresets: Record<PresetName, MaskRule> = {
  causal: {
    item: { item: entry('any', true), memory: entry('any', true), target: entry('any', true) },
    memory: { item: entry('any', true), memory: entry('any', true), target: entry('any', true) },
    target: { item: entry('any', true), memory: entry('any', true), target: entry('any', true) },
  },
  full: {
    item: { item: entry('any', false), memory: entry('any', false), target: entry('any', false) },
    memory: { item: entry('any', false), memory: entry('any', false), target: entry('any', false) },
    target: { item: entry('any', false), memory: entry('any', false), target: entry('any', false) },
  },
  persrec: {
    item: { item: c('same'), memory: c('earlier') },
    memory: { item: c('same'), memory: c('same-or-earlier') },
    target: { item: c('same'), memory: c('earlier'), target: c('self') },
  },
  'rec2pm-reference': {
    item: { item: c('any') },
    memory: { item: c('any'), memory: c('same') },
    target: { item: c('any'), target: c('self') },
  },
  'rec2pm-update': {
    item: { item: c('same'), memory: c('same') },
    memory: { item: c('same'), memory: c('same') },
    target: { item: c('same'), memory: c('same'), target: c('self') },
  },
};

/**
 * Turns a preset name or a rule object into a validated rule object.
 * Unknown presets, role names or segment relations are RangeErrors; wrong types are TypeErrors.
 * `undefined` is the default rule, `'causal'`.
 */
export function resolveRule(rule: MaskRule | PresetName | undefined, name = 'options.rule'): MaskRule {
  if (rule === undefined) return referencePresets.causal;
  if (typeof rule === 'string') {
    if (!Object.prototype.hasOwnProperty.call(referencePresets, rule))
      throw new RangeError(`${name}: unknown preset '${rule}', expected one of ${Object.keys(referencePresets).join(', ')}`);
    return referencePresets[rule as PresetName];
  }
  if (rule === null || typeof rule !== 'object' || Array.isArray(rule))
    throw new TypeError(`${name}: expected a preset name or a rule object`);
  for (const rq of Object.keys(rule)) {
    if (!roleNames.includes(rq as Role)) throw new RangeError(`${name}: unknown query role '${rq}' (item, memory, target)`);
    const row = rule[rq as Role];
    if (row === undefined) continue;
    if (row === null || typeof row !== 'object') throw new TypeError(`${name}.${rq}: expected an object of entries`);
    for (const rk of Object.keys(row)) {
      if (!roleNames.includes(rk as Role)) throw new RangeError(`${name}.${rq}: unknown key role '${rk}' (item, memory, target)`);
      const e = row[rk as Role];
      if (e === undefined) continue;
      if (e === null || typeof e !== 'object') throw new TypeError(`${name}.${rq}.${rk}: expected { seg, causal }`);
      if (!segRelations.includes(e.seg))
        throw new RangeError(`${name}.${rq}.${rk}.seg: expected one of ${segRelations.join(', ')}, got ${String(e.seg)}`);
      if (typeof e.causal !== 'boolean') throw new TypeError(`${name}.${rq}.${rk}.causal: expected a boolean, got ${String(e.causal)}`);
    }
  }
  return rule;
}

/**
 * Whether a key may be attended by a query of the same batch entry.
 * rq, rk: role codes (0 item, 1 memory, 2 target); segQ, segK: segment indices;
 * posQ: the query's *aligned* position (query i of Lq queries over Lk keys stands at i + Lk - Lq);
 * posK: the key's position inside its sequence.
 */
export function refAllowed(rule: MaskRule, rq: number, rk: number, segQ: number, segK: number, posQ: number, posK: number): boolean {
  const queryRole = roleNames[rq], keyRole = roleNames[rk];
  if (queryRole === undefined || keyRole === undefined) return false;
  const e = rule[queryRole]?.[keyRole];
  if (e === undefined) return false;
  let segmentOk: boolean;
  switch (e.seg) {
    case 'none': segmentOk = false; break;
    case 'self': segmentOk = posK === posQ; break;
    case 'same': segmentOk = segK === segQ; break;
    case 'earlier': segmentOk = segK < segQ; break;
    case 'same-or-earlier': segmentOk = segK <= segQ; break;
    case 'any': segmentOk = true; break;
    default: segmentOk = false;
  }
  if (!segmentOk) return false;
  if (e.causal && posK > posQ) return false;
  return true;
}
