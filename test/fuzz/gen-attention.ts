// Group 'attention': maskedAttention and encodeRule.
import { encodeRule, maskedAttention, presets, reference, Tensor } from '../../lib/index';
import type { DType, MaskRule } from '../../lib/index';
import { compare, randomRule, Rng } from '../helpers';
import { CaseSpec, describe, Expect, Mut, OK, R, Scope, T, TR } from './harness';
import { batchMismatch, collectArrays, FLOAT_DTYPES, mutateLayout, mutateName, mutateScale, mutateTensor } from './common';
import { asView, badName, Lay, notAnObject, notAString, PROTO_NAMES, randLayout } from './values';

const PRESETS = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const ROLES = ['item', 'memory', 'target'];
const SEGS = ['none', 'self', 'same', 'earlier', 'same-or-earlier', 'any'];

function divisors(n: number): number[] { return Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0); }

/** The same segment order with values at the ends of int32 (a kernel subtracting segments would overflow). */
function extremeSegments(seg: Int32Array): Int32Array {
  let lo = Infinity, hi = -Infinity;
  for (const x of seg) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  return seg.map((x) => (x === lo ? -(2 ** 31) : x === hi ? 2 ** 31 - 1 : x * 1000));
}

function layoutOption(rng: Rng, l: Lay): Record<string, unknown> {
  const o: Record<string, unknown> = { offsets: rng.bool(0.15) ? asView(rng, l.offsets) : l.offsets };
  if (rng.bool(0.6)) o.segments = rng.bool(0.1) ? asView(rng, l.segments) : rng.bool(0.1) ? extremeSegments(l.segments) : l.segments;
  if (rng.bool(0.6)) o.roles = rng.bool(0.1) ? Buffer.from(l.roles) : l.roles;
  return o;
}

function copyLayout(o: unknown): unknown {
  if (o === null || typeof o !== 'object') return o;
  const r: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) r[k] = Buffer.isBuffer(v) ? Uint8Array.from(v) : ArrayBuffer.isView(v) ? (v as Int32Array).slice() : v;
  return r;
}

/** A rule object with one bad spot (for maskedAttention's options.rule and encodeRule's rule). */
export function badRule(rng: Rng, path: string, optional = false): { rule: unknown; family: string; detail: string; expect: Expect } {
  const r = rng.next();
  if (r < 0.3) {
    const b = badName(rng, PRESETS);
    return { rule: b.v, family: `${path}: preset ${b.family}`, detail: describe(b.v), expect: TR(path) };
  }
  if (r < 0.4) {
    // null / undefined mean "default" for an optional rule, so they are only bad where the rule is required
    const v = rng.pick<() => unknown>([() => 5, () => true, () => (optional ? 7 : null), () => [], () => () => 'causal', () => 1n, () => Symbol('rule'), () => ['causal']])();
    return { rule: v, family: `${path}: not a preset name or rule object`, detail: describe(v), expect: T(path) };
  }
  const rule = randomRule(rng) as Record<string, Record<string, unknown>>;
  const rq = rng.pick(ROLES), rk = rng.pick(ROLES);
  const where = rng.int(0, 5);
  if (where === 0) {
    const key = rng.bool(0.7) ? rng.pick(PROTO_NAMES) : rng.pick(['user', 'items', 'Item', '']);
    Object.defineProperty(rule, key, { value: { item: { seg: 'any', causal: true } }, enumerable: true, configurable: true, writable: true });
    return { rule, family: `${path}: own key that is not a query role${PROTO_NAMES.includes(key) ? ' (prototype name)' : ''}`, detail: describe(key), expect: TR(path) };
  }
  const row = (rule[rq] ??= {}) as Record<string, unknown>;
  if (where === 1) {
    const key = rng.bool(0.7) ? rng.pick(PROTO_NAMES) : rng.pick(['user', 'items', 'Memory']);
    Object.defineProperty(row, key, { value: { seg: 'any', causal: true }, enumerable: true, configurable: true, writable: true });
    return { rule, family: `${path}.<role>: own key that is not a key role${PROTO_NAMES.includes(key) ? ' (prototype name)' : ''}`, detail: `${path}.${rq}[${describe(key)}]`, expect: TR(path) };
  }
  if (where === 2) {
    const v = rng.pick<unknown>([null, 5, 'same', true]);
    rule[rq] = v as never;
    return { rule, family: `${path}.<role>: row not an object`, detail: `${path}.${rq} = ${describe(v)}`, expect: T(path) };
  }
  if (where === 3) {
    const v = rng.pick<unknown>([null, 5, 'any', true]);
    row[rk] = v;
    return { rule, family: `${path}.<role>.<role>: entry not an object`, detail: `${path}.${rq}.${rk} = ${describe(v)}`, expect: T(path) };
  }
  if (where === 4) {
    const b = rng.bool(0.8) ? badName(rng, SEGS) : { v: notAString(rng), family: 'not a string' };
    row[rk] = { seg: b.v, causal: rng.bool() };
    return { rule, family: `${path}.<role>.<role>.seg: ${b.family}`, detail: `${path}.${rq}.${rk}.seg = ${describe(b.v)}`, expect: TR(path) };
  }
  const v = rng.pick<unknown>([1, 0, 'true', null, 'false', {}]);
  row[rk] = { seg: rng.pick(SEGS), causal: v };
  return { rule, family: `${path}.<role>.<role>.causal: not a boolean`, detail: `${path}.${rq}.${rk}.causal = ${describe(v)}`, expect: T(path) };
}

async function genMasked(rng: Rng, s: Scope): Promise<CaseSpec> {
  const valid = rng.bool(0.25);
  const dtype: DType = rng.pick(['float32', 'float32', 'float16', 'bfloat16']);
  const B = rng.int(1, 3);
  const cross = rng.bool(0.3);
  const ql = randLayout(rng, B, 5);
  const kl = cross ? randLayout(rng, B, 6) : ql;
  const H = rng.pick([1, 2, 4]), Hkv = rng.pick(divisors(H)), D = rng.pick([8, 16]), Dv = rng.pick([8, 16]);
  const q = s.rand([ql.T, H, D], { dtype }), k = s.rand([kl.T, Hkv, D], { dtype }), v = s.rand([kl.T, Hkv, Dv], { dtype });
  const options: Record<string, unknown> = { q: layoutOption(rng, ql) };
  if (cross) options.kv = layoutOption(rng, kl);
  const rr = rng.next();
  if (rr < 0.4) options.rule = rng.pick(PRESETS);
  else if (rr < 0.7) options.rule = randomRule(rng);
  if (rng.bool(0.3)) options.scale = rng.pick([0.1, -0.5, 0, 1, 0.25]);
  if (rng.bool(0.25)) { options.normalize = 'silu'; if (rng.bool(0.5)) options.siluDivisor = rng.pick([1, 3.5, 100]); }
  else if (rng.bool(0.3)) options.returnLse = true;
  const args: { q: unknown; k: unknown; v: unknown; options: unknown } = { q, k, v, options };
  const call = () => maskedAttention(args.q as never, args.k as never, args.v as never, args.options as never);

  if (valid) {
    const exact = { q: await q.float32(), k: await k.float32(), v: await v.float32() };
    const refOptions = { ...options, q: copyLayout(options.q), kv: options.kv === undefined ? undefined : copyLayout(options.kv) };
    const check = async (r: { output: Tensor; lse?: Tensor }) => {
      if (!(r?.output instanceof Tensor)) return `result ${describe(r)}`;
      const o = r.output;
      if (o.dtype !== dtype || o.device !== s.device || o.shape.join() !== [ql.T, H, Dv].join()) return `output ${o.toString()}, expected ${dtype} [${ql.T}, ${H}, ${Dv}] on ${s.device}`;
      if (!!options.returnLse !== (r.lse !== undefined)) return `lse ${r.lse ? 'present' : 'missing'}`;
      const ref = reference.maskedAttention({ data: exact.q, shape: q.shape }, { data: exact.k, shape: k.shape }, { data: exact.v, shape: v.shape }, refOptions as never);
      const msg = compare(await o.float32(), ref.output.data, dtype, 'output');
      if (msg) return msg;
      if (r.lse) {
        if (r.lse.dtype !== 'float32' || r.lse.shape.join() !== [ql.T, H].join()) return `lse ${r.lse.toString()}`;
        return compare(await r.lse.float32(), ref.lse!.data, dtype, 'lse') || undefined;
      }
      return undefined;
    };
    const post = rng.next();
    if (post < 0.15) {
      // SPEC §11: small arrays are copied at the call; the caller may reuse them right away.
      return {
        fn: 'maskedAttention', family: 'valid: layout arrays overwritten right after the call', expect: OK, noInputCheck: true, call, check,
        post: () => { for (const a of collectArrays(options)) if (a instanceof Int32Array || a instanceof Uint8Array) a.fill(a instanceof Uint8Array ? 7 : 2 ** 31 - 1); },
      };
    }
    if (post < 0.3) {
      // SPEC §11: input tensors' storage is held until the op ends; the caller may dispose them right after the call.
      return { fn: 'maskedAttention', family: 'valid: inputs disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => { q.dispose(); k.dispose(); v.dispose(); } };
    }
    for (const a of collectArrays(options)) s.arr(a);
    return { fn: 'maskedAttention', family: 'valid', detail: `${dtype} B=${B} H=${H}/${Hkv} D=${D} Dv=${Dv}${cross ? ' cross' : ''}`, expect: OK, call, check };
  }

  let m: Mut;
  const qo = options.q as Record<string, unknown>;
  const pick = rng.int(0, 13);
  switch (pick) {
    case 0: case 1: {
      const slot = rng.pick(['q', 'k', 'v'] as const);
      const shape = slot === 'q' ? [ql.T, H, D] : slot === 'k' ? [kl.T, Hkv, D] : [kl.T, Hkv, Dv];
      m = mutateTensor(rng, s, { name: slot, shape, dtype, allowed: FLOAT_DTYPES, peers: ['q', 'k', 'v'].filter((x) => x !== slot), matchDtype: slot !== 'q' }, (x) => { args[slot] = x; });
      break;
    }
    case 2: {
      const kind = rng.int(0, 8);
      if (kind === 0) { args.k = s.z([kl.T, Hkv, D * 2], { dtype }); m = { family: 'k: head size differs from q', expect: R('k', 'q') }; }
      else if (kind === 1) { args.v = s.z([kl.T + 1, Hkv, Dv], { dtype }); m = { family: 'v: token count differs from k', expect: R('v', 'k') }; }
      else if (kind === 2) { args.v = s.z([kl.T, Hkv + 1, Dv], { dtype }); m = { family: 'v: heads differ from k', expect: R('v', 'k') }; }
      else if (kind === 3) { args.q = s.z([ql.T, 3, D], { dtype }); args.k = s.z([kl.T, 2, D], { dtype }); args.v = s.z([kl.T, 2, Dv], { dtype }); m = { family: 'kv heads do not divide q heads', detail: '3 / 2', expect: R('k', 'q') }; }
      else if (kind === 4) { args.q = s.z([ql.T, 0, D], { dtype }); args.k = s.z([kl.T, 0, D], { dtype }); args.v = s.z([kl.T, 0, Dv], { dtype }); m = { family: 'zero heads', expect: R('q', 'k', 'v') }; }
      else if (kind === 5) { args.q = s.z([ql.T, H, 0], { dtype }); args.k = s.z([kl.T, Hkv, 0], { dtype }); m = { family: 'head size 0', expect: R('q', 'k', 'v') }; }
      else if (kind === 6) { const big = rng.pick([257, 264, 512, 4096]); args.q = s.z([ql.T, H, big], { dtype }); args.k = s.z([kl.T, Hkv, big], { dtype }); m = { family: 'head size D > 256', detail: String(big), expect: R('q', 'k', 'q/v', 'D') }; }
      else if (kind === 7 && s.device === 'cuda') { const d = rng.pick([24, 12, 40, 100]); args.q = s.z([ql.T, H, d], { dtype }); args.k = s.z([kl.T, Hkv, d], { dtype }); m = { family: 'CUDA: unsupported head size', detail: String(d), expect: R('8, 16, 32, 64, 128, 256') }; }
      else if (!cross) { args.k = s.z([ql.T + 1, Hkv, D], { dtype }); args.v = s.z([ql.T + 1, Hkv, Dv], { dtype }); m = { family: 'self-attention with Tk != Tq', expect: R('k', 'options.kv') }; }
      else { const big = rng.pick([257, 300, 1024]); args.v = s.z([kl.T, Hkv, big], { dtype }); m = { family: 'value head size Dv > 256', detail: String(big), expect: R('v', 'q/v', 'Dv') }; }
      break;
    }
    case 3: {
      const x = rng.bool(0.2) ? undefined : notAnObject(rng);
      args.options = x;
      m = { family: 'options: not an object', detail: describe(x), expect: T('options') };
      break;
    }
    case 4: {
      if (cross && rng.bool()) { const x = notAnObject(rng); options.kv = x; m = { family: 'options.kv: not an object', detail: describe(x), expect: T('options.kv') }; }
      else { const x = rng.bool(0.2) ? undefined : notAnObject(rng); options.q = x; m = { family: 'options.q: not an object', detail: describe(x), expect: T('options.q') }; }
      break;
    }
    case 5: case 6: {
      if (cross && rng.bool()) m = mutateLayout(rng, 'options.kv', kl, options.kv as Record<string, unknown>, (x) => { options.kv = x; });
      else m = mutateLayout(rng, 'options.q', ql, qo, (x) => { options.q = x; });
      break;
    }
    case 7: {
      if (cross) m = batchMismatch(rng, 'options.kv.offsets', kl.offsets, kl.T, (x) => { (options.kv as Record<string, unknown>).offsets = x; }, ['options.kv', 'options.q', 'options.kv.offsets']);
      else { options.kv = { offsets: Int32Array.from([0, ...ql.offsets.slice(1)].concat([ql.T])) }; m = { family: 'options.kv: batch differs from options.q', detail: `${ql.B + 1} vs ${ql.B}`, expect: R('options.kv', 'options.q', 'options.kv.offsets') }; }
      break;
    }
    case 8: case 9: {
      const b = badRule(rng, 'options.rule', true);
      options.rule = b.rule;
      m = b;
      break;
    }
    case 10: m = mutateScale(rng, 'options.scale', (x) => { options.scale = x; }); break;
    case 11: m = mutateName(rng, 'options.normalize', ['softmax', 'silu'], (x) => { options.normalize = x; }); break;
    case 12: {
      options.normalize = 'silu';
      delete options.returnLse;
      const x = rng.pick<unknown>([0, -1, -0, NaN, Infinity, -Infinity, '2', {}, null, true, 1n]);
      options.siluDivisor = x;
      m = { family: 'options.siluDivisor: not a finite number > 0', detail: describe(x), expect: typeof x === 'number' ? TR('options.siluDivisor') : T('options.siluDivisor') };
      break;
    }
    default: {
      options.normalize = 'silu';
      options.returnLse = true;
      m = { family: 'options.returnLse with normalize silu', expect: R('options.returnLse') };
    }
  }
  for (const a of collectArrays(args.options)) s.arr(a);
  return { fn: 'maskedAttention', ...m, call };
}

// ------------------------------------------------------------------------------------------------

function encodeExpected(rule: MaskRule): number[] {
  const code = new Array(18).fill(0);
  ROLES.forEach((rq, i) => ROLES.forEach((rk, j) => {
    const e = (rule as Record<string, Record<string, { seg: string; causal: boolean }> | undefined>)[rq]?.[rk];
    if (!e) return;
    code[i * 3 + j] = SEGS.indexOf(e.seg);
    code[9 + i * 3 + j] = e.causal ? 1 : 0;
  }));
  return code;
}

function genEncodeRule(rng: Rng): CaseSpec {
  const named = rng.bool(0.3) ? 'myRule' : undefined;
  const path = named ?? 'rule';
  const call = (rule: unknown) => () => (named ? encodeRule(rule, named) : encodeRule(rule));
  if (rng.bool(0.25)) {
    const byName = rng.bool();
    const rule = byName ? rng.pick(PRESETS) : randomRule(rng);
    const want = encodeExpected(byName ? (presets as Record<string, MaskRule>)[rule as string] : (rule as MaskRule));
    return {
      fn: 'encodeRule', family: 'valid', detail: byName ? String(rule) : 'random rule object', expect: OK, sync: true, call: call(rule),
      check: (code: Uint8Array) => (code instanceof Uint8Array && code.length === 18 && Array.from(code).join() === want.join() ? undefined : `got ${describe(code)}, expected ${want}`),
    };
  }
  const b = badRule(rng, path);
  return { fn: 'encodeRule', family: b.family.replace(/^myRule/, 'rule'), detail: named ? `${b.detail} (name argument 'myRule')` : b.detail, expect: b.expect, sync: true, call: call(b.rule) };
}

export async function genAttentionGroup(rng: Rng, s: Scope): Promise<CaseSpec> {
  if (rng.bool(0.15)) return genEncodeRule(rng);
  return genMasked(rng, s);
}

