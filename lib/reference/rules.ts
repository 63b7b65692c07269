// Mask rules of SPEC §3 written out plainly for the oracle (independent of lib/rules.ts and of the
// kernels' table): roles are 0 item, 1 memory, 2 target.
export type Role = 'item' | 'memory' | 'target';
export type SegRelation = 'none' | 'self' | 'same' | 'earlier' | 'same-or-earlier' | 'any';
export interface RuleEntry { seg: SegRelation; causal: boolean }
export type MaskRule = Partial<Record<Role, Partial<Record<Role, RuleEntry>>>>;
export type PresetName = 'causal' | 'full' | 'persrec' | 'rec2pm-reference' | 'rec2pm-update';

const ROLES: Role[] = ['item', 'memory', 'target'];

function all(seg: SegRelation, causal: boolean): MaskRule {
  return {
    item: { item: { seg, causal }, memory: { seg, causal }, target: { seg, causal } },
    memory: { item: { seg, causal }, memory: { seg, causal }, target: { seg, causal } },
    target: { item: { seg, causal }, memory: { seg, causal }, target: { seg, causal } },
  };
}

const c = (seg: SegRelation): RuleEntry => ({ seg, causal: true });

export const referencePresets: Record<PresetName, MaskRule> = {
  causal: all('any', true),
  full: all('any', false),
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

export function resolveRule(rule: MaskRule | PresetName | undefined): MaskRule {
  if (rule === undefined) return referencePresets.causal;
  if (typeof rule === 'string') {
    const r = referencePresets[rule];
    if (!r) throw new RangeError(`rule: unknown preset '${rule}'`);
    return r;
  }
  return rule;
}

/** posQ is the query's aligned position (i + Lk - Lq). */
export function refAllowed(rule: MaskRule, rq: number, rk: number, segQ: number, segK: number, posQ: number, posK: number): boolean {
  const entry = rule[ROLES[rq]]?.[ROLES[rk]];
  if (!entry) return false;
  let ok: boolean;
  switch (entry.seg) {
    case 'self': ok = posK === posQ; break;
    case 'same': ok = segK === segQ; break;
    case 'earlier': ok = segK < segQ; break;
    case 'same-or-earlier': ok = segK <= segQ; break;
    case 'any': ok = true; break;
    default: ok = false;
  }
  if (ok && entry.causal) ok = posK <= posQ;
  return ok;
}
