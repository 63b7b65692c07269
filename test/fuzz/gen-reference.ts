// Group 'reference': the plain-TypeScript oracle (reference.*) must refuse bad input with a
// TypeError / RangeError naming the argument too (it may throw synchronously), and never mutate it.
import { reference } from '../../lib/index';
import { ReferenceMemoryBank } from '../../lib/reference/memory-bank';
import { randomRule, Rng } from '../helpers';
import { CaseSpec, describe, Mut, OK, R, Scope, T, TR } from './harness';
import { collectArrays, mutateLayout, mutateName, mutateOffsets, mutateScale } from './common';
import { badRule } from './gen-attention';
import { badInteger, badName, notAnObject, notAString, notInt32Array, randLayout } from './values';

type RefT = { data: ArrayLike<number>; shape: number[] };
const rt = (rng: Rng, shape: number[]): RefT => ({ data: rng.floats(shape.reduce((a, b) => a * b, 1)), shape });

/** A bad { data, shape } argument. */
function mutateRefTensor(rng: Rng, name: string, shape: number[], set: (v: unknown) => void): Mut {
  const r = rng.int(0, 5);
  if (r === 0) { const v = rng.pick<unknown>([null, undefined, 5, 'x', new Float32Array(4), [1, 2]]); set(v); return { family: `${name}: not { data, shape }`, detail: describe(v), expect: T(name) }; }
  if (r === 1) { const v = rng.pick<unknown>([5, 'abc', null, true]); set({ data: v, shape }); return { family: `${name}.data: not an array`, detail: describe(v), expect: T(name) }; }
  if (r === 2) { const sh = rng.bool() ? shape.slice(1) : [...shape, 1]; set(rt(rng, sh)); return { family: `${name}: wrong rank`, detail: `[${sh}]`, expect: R(name) }; }
  if (r === 3) { const n = shape.reduce((a, b) => a * b, 1); set({ data: new Float32Array(n + 1), shape }); return { family: `${name}: data length != product of shape`, expect: R(name) }; }
  if (r === 4) { const sh: unknown[] = shape.slice(); sh[rng.int(0, sh.length - 1)] = rng.pick<unknown>([-1, 1.5, NaN, Infinity, '2', null]); set({ data: new Float32Array(0), shape: sh }); return { family: `${name}: bad dimension`, detail: describe(sh), expect: TR(name) }; }
  const v = rng.pick<unknown>([5, 'x', null, { length: 2 }]);
  set({ data: new Float32Array(4), shape: v });
  return { family: `${name}.shape: not an array`, detail: describe(v), expect: T(name) };
}

function divisors(n: number): number[] { return Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0); }

function genMasked(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const B = rng.int(1, 3), cross = rng.bool(0.3);
  const ql = randLayout(rng, B, 4), kl = cross ? randLayout(rng, B, 5) : ql;
  const H = rng.pick([1, 2]), Hkv = rng.pick(divisors(H)), D = rng.pick([2, 4]), Dv = rng.pick([2, 3]);
  const args: Record<string, unknown> = { q: rt(rng, [ql.T, H, D]), k: rt(rng, [kl.T, Hkv, D]), v: rt(rng, [kl.T, Hkv, Dv]) };
  const options: Record<string, unknown> = { q: { offsets: ql.offsets.slice(), segments: ql.segments.slice(), roles: ql.roles.slice() } };
  if (cross) options.kv = { offsets: kl.offsets.slice(), roles: kl.roles.slice() };
  if (rng.bool(0.5)) options.rule = rng.bool() ? rng.pick(['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update']) : randomRule(rng);
  if (rng.bool(0.2)) { options.normalize = 'silu'; options.siluDivisor = 2; } else if (rng.bool(0.3)) options.returnLse = true;
  args.options = options;
  const call = () => reference.maskedAttention(args.q as never, args.k as never, args.v as never, args.options as never);
  let m: Mut;
  if (valid) m = { family: 'valid', expect: OK };
  else {
    const r = rng.int(0, 7);
    if (r === 0) { const slot = rng.pick(['q', 'k', 'v']); const sh = (args[slot] as RefT).shape; m = mutateRefTensor(rng, slot, sh, (v) => { args[slot] = v; }); }
    else if (r === 1) { const v = rng.bool(0.2) ? undefined : notAnObject(rng); args.options = v; m = { family: 'options: not an object', detail: describe(v), expect: T('options') }; }
    else if (r <= 3) m = cross && rng.bool() ? mutateLayout(rng, 'options.kv', kl, options.kv as Record<string, unknown>, (v) => { options.kv = v; }) : mutateLayout(rng, 'options.q', ql, options.q as Record<string, unknown>, (v) => { options.q = v; });
    else if (r === 4) { const b = badRule(rng, 'options.rule', true); options.rule = b.rule; m = b; }
    else if (r === 5) m = mutateScale(rng, 'options.scale', (v) => { options.scale = v; });
    else if (r === 6) { delete options.returnLse; options.normalize = 'silu'; const v = rng.pick<unknown>([0, -1, NaN, Infinity, '2', null]); options.siluDivisor = v; m = { family: 'options.siluDivisor: not a finite number > 0', detail: describe(v), expect: typeof v === 'number' ? TR('options.siluDivisor') : T('options.siluDivisor') }; }
    else m = mutateName(rng, 'options.normalize', ['softmax', 'silu'], (v) => { options.normalize = v; });
  }
  for (const a of collectArrays(args)) s.arr(a);
  return { fn: 'reference.maskedAttention', ...m, sync: true, call };
}

interface SU { B: number; qOff: Int32Array; kOff: Int32Array; Nq: number; Tk: number; kLen: number[]; entry: number[] }
function sparseSetup(rng: Rng): SU {
  const B = rng.int(1, 3), ql = randLayout(rng, B, 3), kl = randLayout(rng, B, 6);
  const entry: number[] = [];
  for (let b = 0; b < B; b++) for (let i = ql.offsets[b]; i < ql.offsets[b + 1]; i++) entry.push(b);
  return { B, qOff: ql.offsets, kOff: kl.offsets, Nq: ql.T, Tk: kl.T, kLen: kl.lengths, entry };
}
function offsetsMut(rng: Rng, u: SU, o: Record<string, unknown>): Mut {
  return rng.bool() ? mutateOffsets(rng, 'options.qOffsets', u.qOff, u.Nq, (v) => { o.qOffsets = v; }) : mutateOffsets(rng, 'options.kOffsets', u.kOff, u.Tk, (v) => { o.kOffsets = v; });
}

function genSparseOps(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const u = sparseSetup(rng);
  const which = rng.pick(['indexerScores', 'topK', 'sparseAttention', 'indexedCrossAttention']);
  const options: Record<string, unknown> = { qOffsets: u.qOff.slice(), kOffsets: u.kOff.slice() };
  const args: Record<string, unknown> = {};
  let call: () => unknown;
  let m: Mut = { family: 'valid', expect: OK };
  if (which === 'indexerScores') {
    Object.assign(args, { qI: rt(rng, [u.Nq, 2, 3]), kI: rt(rng, [u.Tk, 3]), w: rt(rng, [u.Nq, 2]), options });
    call = () => reference.indexerScores(args.qI as never, args.kI as never, args.w as never, args.options as never);
    if (!valid) {
      const r = rng.int(0, 3);
      if (r === 0) { const slot = rng.pick(['qI', 'kI', 'w']); m = mutateRefTensor(rng, slot, (args[slot] as RefT).shape, (v) => { args[slot] = v; }); }
      else if (r === 1) { args.kI = rt(rng, [u.Tk, 4]); m = { family: 'kI: dim differs from qI', expect: R('kI', 'qI') }; }
      else if (r === 2) { const v = notAnObject(rng); args.options = v; m = { family: 'options: not an object', detail: describe(v), expect: T('options') }; }
      else m = offsetsMut(rng, u, options);
    }
  } else if (which === 'topK') {
    let N = rng.int(0, 4);
    const M = rng.int(0, 6);
    args.scores = rt(rng, [N, M]); args.k = rng.int(1, M + 2); args.options = rng.bool() ? { lengths: Int32Array.from({ length: N }, () => rng.int(0, M)) } : {};
    call = () => reference.topK(args.scores as never, args.k as never, args.options as never);
    if (!valid) {
      const r = rng.int(0, 4);
      if (r === 0) m = mutateRefTensor(rng, 'scores', [N, M], (v) => { args.scores = v; });
      else if (r === 1) { const b = badInteger(rng, { min: 1 }); args.k = b.v; m = { family: `k: ${b.family}`, detail: describe(b.v), expect: { classes: b.classes, names: ['k'] } }; }
      else if (r === 2) { N = 64; args.scores = rt(rng, [64, 2]); args.options = {}; args.k = rng.pick([2 ** 28, 2 ** 31]); m = { family: 'k: huge (outputs would not fit in memory)', detail: `[64, 2], k = ${describe(args.k)}`, expect: R('k') }; }
      else if (r === 3) { const v = notInt32Array(rng, N); args.options = { lengths: v }; m = { family: 'options.lengths: not an Int32Array', detail: describe(v), expect: T('options.lengths') }; }
      else { const l = Int32Array.from({ length: N + (N === 0 ? 1 : 0) }, () => M + 1); args.options = { lengths: l }; m = { family: 'options.lengths: bad length or entry', detail: describe(l), expect: R('options.lengths') }; }
    }
  } else {
    const H = rng.pick([1, 2]), D = 2, Dv = 3;
    Object.assign(args, { q: rt(rng, [u.Nq, H, D]), k: rt(rng, [u.Tk, 1, D]), v: rt(rng, [u.Tk, 1, Dv]) });
    if (which === 'sparseAttention') {
      const K = rng.int(1, 3);
      const idx = new Int32Array(u.Nq * K);
      for (let i = 0; i < u.Nq; i++) for (let j = 0; j < K; j++) { const L = u.kLen[u.entry[i]]; idx[i * K + j] = L === 0 || rng.bool(0.2) ? -1 : rng.int(0, L - 1); }
      args.indices = { data: idx, shape: [u.Nq, K] }; args.options = options;
      call = () => reference.sparseAttention(args.q as never, args.k as never, args.v as never, args.indices as never, args.options as never);
      if (!valid) {
        const r = rng.int(0, 4);
        if (r === 0) { const slot = rng.pick(['q', 'k', 'v']); m = mutateRefTensor(rng, slot, (args[slot] as RefT).shape, (v) => { args[slot] = v; }); }
        else if (r === 1) m = mutateRefTensor(rng, 'indices', [u.Nq, K], (v) => { args.indices = v; });
        else if (r === 2 && u.Nq > 0) { const bad = idx.slice(); const i = rng.int(0, u.Nq - 1); bad[i * K] = rng.pick([-2, u.kLen[u.entry[i]], 2 ** 31 - 1]); args.indices = { data: bad, shape: [u.Nq, K] }; m = { family: 'indices: entry < -1 or >= the key count', detail: describe(bad), expect: R('indices') }; }
        else if (r === 3) m = mutateScale(rng, 'options.scale', (v) => { options.scale = v; });
        else m = offsetsMut(rng, u, options);
      }
    } else {
      Object.assign(options, { indexer: { q: rt(rng, [u.Nq, 2, 3]), k: rt(rng, [u.Tk, 3]), w: rt(rng, [u.Nq, 2]) }, topK: rng.int(1, 4) });
      args.options = options;
      call = () => reference.indexedCrossAttention(args.q as never, args.k as never, args.v as never, args.options as never);
      if (!valid) {
        const ix = options.indexer as Record<string, unknown>;
        const r = rng.int(0, 4);
        if (r === 0) { const v = rng.bool(0.3) ? undefined : notAnObject(rng); options.indexer = v; m = { family: 'options.indexer: not an object', detail: describe(v), expect: T('options.indexer') }; }
        else if (r === 1) { const slot = rng.pick(['q', 'k', 'w']); m = mutateRefTensor(rng, `options.indexer.${slot}`, (ix[slot] as RefT).shape, (v) => { ix[slot] = v; }); }
        else if (r === 2) { const b = badInteger(rng, { min: 1 }); options.topK = b.v; m = { family: `options.topK: ${b.family}`, detail: describe(b.v), expect: { classes: b.classes, names: ['options.topK', 'topK'] } }; }
        else if (r === 3) m = mutateScale(rng, 'options.scale', (v) => { options.scale = v; });
        else m = offsetsMut(rng, u, options);
      }
    }
  }
  for (const a of collectArrays(args)) s.arr(a);
  return { fn: `reference.${which}`, ...m, sync: true, call: call! };
}

function genResolveRule(rng: Rng, valid: boolean): CaseSpec {
  if (valid) { const rule = rng.bool() ? rng.pick(['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update']) : randomRule(rng); return { fn: 'reference.resolveRule', family: 'valid', expect: OK, sync: true, call: () => reference.resolveRule(rule as never) }; }
  const b = badRule(rng, 'options.rule', true);
  return { fn: 'reference.resolveRule', family: b.family, detail: b.detail, expect: b.expect, sync: true, call: () => reference.resolveRule(b.rule as never) };
}

function genRefBank(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const users = rng.int(1, 4), slots = rng.int(1, 3), width = rng.int(1, 3);
  const mode = rng.pick(['overwrite', 'append'] as const), overflow = mode === 'append' ? rng.pick(['error', 'evict-oldest'] as const) : undefined;
  const bank = new ReferenceMemoryBank({ users, slots, width, mode, overflow });
  const cap = (u: number) => (mode === 'append' && overflow === 'error' ? slots - bank.lengths()[u] : slots);
  const ids = Int32Array.from(Array.from({ length: users }, (_, i) => i).filter(() => rng.bool()));
  const counts = Int32Array.from(ids, (u) => rng.int(0, cap(u)));
  const n = counts.reduce((a, b) => a + b, 0);
  bank.update(ids, rt(rng, [n, width]), counts);
  const state = () => JSON.stringify(bank.memories);
  const which = rng.pick(['update', 'update', 'updateFrom', 'read', 'assemble', 'lengths', 'reset']);
  const args: Record<string, unknown> = { ids: ids.slice() };
  let m: Mut = { family: 'valid', expect: OK };
  let call: () => unknown;
  const idsMut = (): Mut => {
    const bad = Int32Array.from(ids.length ? ids : [0]);
    if (rng.bool() || bad.length < 2 || which === 'lengths') { bad[0] = rng.pick([-1, users, 2 ** 31 - 1]); args.ids = bad; return { family: 'userIds: id out of range', detail: describe(bad), expect: R('userIds') }; }
    bad[1] = bad[0]; args.ids = bad; return { family: 'userIds: duplicate id', detail: describe(bad), expect: R('userIds') };
  };
  const curCounts = Int32Array.from(ids, (u) => rng.int(0, cap(u)));
  const total = curCounts.reduce((a, b) => a + b, 0);
  if (which === 'update') {
    args.tokens = rt(rng, [total, width]); args.counts = curCounts;
    call = () => bank.update(args.ids as never, args.tokens as never, args.counts as never);
    if (!valid) {
      const r = rng.int(0, 3);
      if (r === 0) m = idsMut();
      else if (r === 1) { args.tokens = rt(rng, [total, width + 1]); m = { family: 'tokens: width differs from the bank', expect: R('tokens') }; }
      else if (r === 2) { args.ids = Int32Array.of(0); args.counts = Int32Array.of(slots + 1); args.tokens = rt(rng, [slots + 1, width]); m = { family: 'counts: count > slots', expect: R('counts') }; }
      else if (mode === 'append' && overflow === 'error' && bank.lengths()[0] > 0) { const c = slots - bank.lengths()[0] + 1; args.ids = Int32Array.of(0); args.counts = Int32Array.of(c); args.tokens = rt(rng, [c, width]); m = { family: "counts: append overflow under overflow 'error'", expect: R('counts', 'overflow') }; }
      else m = idsMut();
    }
  } else if (which === 'updateFrom') {
    const lay = randLayout(rng, ids.length, Math.min(slots, ...Array.from(ids, cap)));
    args.hidden = rt(rng, [lay.T, width]); args.layout = { offsets: lay.offsets, roles: lay.roles }; args.select = rng.pick(['item', 'memory', 'target']);
    call = () => bank.updateFrom(args.ids as never, args.hidden as never, args.layout as never, args.select as never);
    if (!valid) {
      const r = rng.int(0, 2);
      if (r === 0) { const b = badName(rng, ['item', 'memory', 'target']); args.select = b.v; m = { family: `select: ${b.family}`, detail: describe(b.v), expect: TR('select') }; }
      else if (r === 1) { const b = rng.bool(0.8) ? badName(rng, ['item', 'memory', 'target']) : { v: notAString(rng), family: 'not a string' }; args.select = { role: b.v, last: 1 }; m = { family: `select.role: ${b.family}`, detail: describe(b.v), expect: TR('select', 'select.role') }; }
      else m = idsMut();
    }
  } else if (which === 'read') {
    call = () => bank.read(args.ids as never);
    if (!valid) m = idsMut();
  } else if (which === 'assemble') {
    const lay = randLayout(rng, ids.length, 2);
    args.items = rt(rng, [lay.T, width]); args.itemOffsets = lay.offsets; args.queries = rt(rng, [1, width]);
    call = () => bank.assemble(args.ids as never, args.items as never, args.itemOffsets as never, args.queries as never);
    if (!valid) {
      const r = rng.int(0, 2);
      if (r === 0) m = idsMut();
      else if (r === 1) { args.queries = rt(rng, [1, width + 1]); m = { family: 'queries: width differs from the bank', expect: R('queries') }; }
      else m = mutateOffsets(rng, 'itemOffsets', lay.offsets, lay.T, (v) => { args.itemOffsets = v; });
    }
  } else if (which === 'lengths') {
    call = () => bank.lengths(args.ids as never);
    if (!valid) m = idsMut();
  } else {
    call = () => bank.reset(args.ids as never);
    if (!valid) m = idsMut();
  }
  for (const a of collectArrays(args)) s.arr(a);
  return { fn: `reference.ReferenceMemoryBank.${which}`, ...m, sync: true, call: call!, plainState: state };
}

export async function genReferenceGroup(rng: Rng, s: Scope): Promise<CaseSpec> {
  const valid = rng.bool(0.25);
  const r = rng.next();
  if (r < 0.35) return genMasked(rng, s, valid);
  if (r < 0.75) return genSparseOps(rng, s, valid);
  if (r < 0.85) return genResolveRule(rng, valid);
  return genRefBank(rng, s, valid);
}

