// Group 'bank': MemoryBank constructor, update, updateFrom, read, assemble, lengths, reset, save, load
// (SPEC §4): every rejected call leaves the bank bit-identical; valid calls match the reference bank.
import * as fs from 'fs';
import * as path from 'path';
import { MemoryBank, Tensor, tensor } from '../../lib/index';
import type { Device } from '../../lib/index';
import { ReferenceMemoryBank } from '../../lib/reference/memory-bank';
import { compare, Rng } from '../helpers';
import { BANK_DISPOSED, CaseSpec, describe, Expect, Mut, OK, R, Scope, T, TR } from './harness';
import { collectArrays, mutateOffsets, mutateTensor, mutateTokenArray } from './common';
import { badInteger, badName, notAnObject, notAString, notInt32Array, otherBatch, randLayout } from './values';

type BankDType = 'float32' | 'float16' | 'bfloat16';
interface Ctx {
  bank: MemoryBank; ref: ReferenceMemoryBank; users: number; slots: number; width: number; dtype: BankDType;
  mode: 'overwrite' | 'append'; overflow?: 'error' | 'evict-oldest';
}

function pickUsers(rng: Rng, users: number, n: number): Int32Array {
  const all = Array.from({ length: users }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) { const j = rng.int(0, i); [all[i], all[j]] = [all[j], all[i]]; }
  return Int32Array.from(all.slice(0, n));
}

/** How many tokens user u may still take in one valid call. */
function capacity(c: Ctx, u: number): number {
  return c.mode === 'append' && c.overflow === 'error' ? c.slots - c.ref.lengths()[u] : c.slots;
}

/** Rows of `n` x width in the bank's dtype on its device, and their exact values. */
async function rows(rng: Rng, s: Scope, c: Ctx, n: number, watch = true, device: Device = s.device): Promise<{ t: Tensor; exact: Float32Array }> {
  const vals = rng.floats(n * c.width, 4);
  const t = watch ? s.t(vals, [n, c.width], { dtype: c.dtype, device }) : tensor(vals, [n, c.width], { dtype: c.dtype, device });
  if (!watch) s.tensors.push(t);
  return { t, exact: await t.float32() };
}

async function makeBank(rng: Rng, s: Scope, prefill = true): Promise<Ctx> {
  const users = rng.int(1, 5), slots = rng.int(1, 4), width = rng.int(1, 6);
  const dtype = rng.pick<BankDType>(['float32', 'float32', 'float16', 'bfloat16']);
  const mode = rng.pick(['overwrite', 'append'] as const);
  const overflow = mode === 'append' ? rng.pick(['error', 'evict-oldest'] as const) : undefined;
  const bank = s.bank({ users, slots, width, dtype, device: s.device, mode, ...(overflow ? { overflow } : {}) });
  const ref = new ReferenceMemoryBank({ users, slots, width, mode, overflow });
  const c: Ctx = { bank, ref, users, slots, width, dtype, mode, overflow };
  const steps = prefill ? rng.int(0, 2) : 0;
  for (let i = 0; i < steps; i++) {
    const ids = pickUsers(rng, users, rng.int(1, users));
    const counts = Int32Array.from(ids, (u) => rng.int(0, capacity(c, u)));
    const n = counts.reduce((a, b) => a + b, 0);
    const { t, exact } = await rows(rng, s, c, n, false);
    await bank.update(ids, t, counts);
    ref.update(ids, { data: exact, shape: [n, width] }, counts);
  }
  return c;
}

/** '' when the bank holds what the reference holds. */
async function sameAsRef(c: Ctx): Promise<string | undefined> {
  const ids = Int32Array.from({ length: c.users }, (_, i) => i);
  const got = await c.bank.read(ids);
  try {
    const want = c.ref.read(ids);
    if (Array.from(c.bank.lengths()).join() !== Array.from(c.ref.lengths()).join()) return `lengths ${Array.from(c.bank.lengths())}, reference ${Array.from(c.ref.lengths())}`;
    if (Array.from(got.offsets).join() !== Array.from(want.offsets).join()) return `offsets ${Array.from(got.offsets)}, reference ${Array.from(want.offsets)}`;
    return compare(await got.tokens.float32(), want.tokens.data, c.dtype, 'bank tokens') || undefined;
  } finally {
    got.tokens.dispose();
  }
}

function userIdsMutation(rng: Rng, c: Ctx, ids: Int32Array, set: (v: unknown) => void): Mut {
  const r = rng.next();
  if (r < 0.35) {
    const v = rng.bool(0.1) ? undefined : notInt32Array(rng, ids.length, ids);
    set(v);
    return { family: 'userIds: not an Int32Array', detail: describe(v), expect: T('userIds') };
  }
  const bad = Int32Array.from(ids.length ? ids : [0]);
  if (r < 0.7 || bad.length < 2) {
    bad[rng.int(0, bad.length - 1)] = rng.pick([-1, c.users, c.users + 1, 2 ** 31 - 1, -(2 ** 31)]);
    set(bad);
    return { family: 'userIds: id out of range', detail: describe(bad), expect: R('userIds') };
  }
  const i = rng.int(1, bad.length - 1);
  bad[i] = bad[rng.int(0, i - 1)];
  set(bad);
  return { family: 'userIds: duplicate id', detail: describe(bad), expect: R('userIds') };
}

function blendMutation(rng: Rng, c: Ctx, set: (v: unknown) => void): Mut {
  const r = rng.next();
  if (r < 0.25) { const v = notAnObject(rng); set(v); return { family: 'options: not an object', detail: describe(v), expect: T('options') }; }
  if (r < 0.45 && c.mode === 'append') { set({ blend: 0.5 }); return { family: 'options.blend on an append bank', expect: R('options.blend', 'blend') }; }
  if (r < 0.75) { const v = rng.pick([0, -0.5, 1.5, NaN, Infinity, -Infinity, -0]); set({ blend: v }); return { family: 'options.blend: outside (0, 1]', detail: describe(v), expect: typeof v === 'number' && Number.isFinite(v) ? R('options.blend', 'blend') : TR('options.blend', 'blend') }; }
  const v = rng.pick<unknown>(['0.5', null, {}, true, [0.5], 1n]);
  set({ blend: v });
  return { family: 'options.blend: not a number', detail: describe(v), expect: T('options.blend', 'blend') };
}

// ------------------------------------------------------------------------------------------------

async function genCtor(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const opts: Record<string, unknown> = { users: rng.int(1, 5), slots: rng.int(1, 4), width: rng.int(1, 6), dtype: rng.pick(['float32', 'float16', 'bfloat16']), device: s.device, mode: rng.pick(['overwrite', 'append']) };
  if (opts.mode === 'append' && rng.bool(0.7)) opts.overflow = rng.pick(['error', 'evict-oldest']);
  let arg: unknown = opts;
  const call = () => new MemoryBank(arg as never);
  if (valid) return {
    fn: 'new MemoryBank', family: 'valid', detail: describe(opts), expect: OK, sync: true, call,
    check: (b: MemoryBank) => (b.users === opts.users && b.slots === opts.slots && b.width === opts.width && b.dtype === opts.dtype && b.mode === opts.mode && b.lengths().every((x) => x === 0)
      ? undefined : `bank ${describe({ users: b.users, slots: b.slots, width: b.width, dtype: b.dtype, mode: b.mode })}`),
  };
  let m: Mut;
  const r = rng.int(0, 7);
  if (r === 0) { const v = rng.bool(0.2) ? undefined : notAnObject(rng); arg = v; m = { family: 'options: not an object', detail: describe(v), expect: T('options') }; }
  else if (r <= 2) {
    const f = rng.pick(['users', 'slots', 'width']);
    const b = rng.bool(0.1) ? { v: undefined, classes: ['TypeError'] as const, family: 'missing' } : badInteger(rng, { min: 1, huge: true });
    opts[f] = b.v;
    m = { family: `${f}: ${b.family}`, detail: describe(b.v), expect: { classes: [...b.classes], names: [f, `options.${f}`] } };
  } else if (r === 3) {
    const p = rng.pick([{ users: 2 ** 20, slots: 2 ** 12, width: 2 ** 20 }, { users: 2 ** 16, slots: 2 ** 14, width: 2 ** 20 }, { users: 1, slots: 2 ** 20, width: 2 ** 26 }, { users: 2 ** 24, slots: 2 ** 6, width: 2 ** 16 }]);
    Object.assign(opts, p);
    m = { family: 'users x slots x width: absurd size (>= 2**48 bytes)', detail: describe(p), expect: R('users', 'slots', 'width', 'options.users', 'options.slots', 'options.width') };
  } else if (r === 4) {
    const b = rng.bool(0.15) ? { v: 'int32', family: "'int32'" } : rng.bool(0.8) ? badName(rng, ['float32', 'float16', 'bfloat16']) : { v: notAString(rng), family: 'not a string' };
    opts.dtype = b.v;
    m = { family: `dtype: ${b.family}`, detail: describe(b.v), expect: TR('dtype', 'options.dtype') };
  } else if (r === 5) {
    if (!s.cudaAvailable && rng.bool(0.3)) { opts.device = 'cuda'; m = { family: 'device: cuda unavailable', expect: { names: ['device'], cudaUnavailable: true } }; }
    else { const b = rng.bool(0.8) ? badName(rng, ['cpu', 'cuda']) : { v: notAString(rng), family: 'not a string' }; opts.device = b.v; m = { family: `device: ${b.family}`, detail: describe(b.v), expect: TR('device', 'options.device') }; }
  } else if (r === 6) {
    const b = rng.bool(0.15) ? { v: undefined, family: 'missing' } : rng.bool(0.8) ? badName(rng, ['overwrite', 'append']) : { v: notAString(rng), family: 'not a string' };
    opts.mode = b.v;
    m = { family: `mode: ${b.family}`, detail: describe(b.v), expect: TR('mode', 'options.mode') };
  } else {
    opts.mode = 'append';
    const b = rng.bool(0.8) ? badName(rng, ['error', 'evict-oldest']) : { v: notAString(rng), family: 'not a string' };
    opts.overflow = b.v;
    m = { family: `overflow: ${b.family}`, detail: describe(b.v), expect: TR('overflow', 'options.overflow') };
  }
  return { fn: 'new MemoryBank', ...m, sync: true, call };
}

async function genUpdate(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const ids = pickUsers(rng, c.users, rng.int(0, c.users));
  const counts = Int32Array.from(ids, (u) => rng.int(0, capacity(c, u)));
  const n = counts.reduce((a, b) => a + b, 0);
  const { t: tokens, exact } = await rows(rng, s, c, n);
  let options: unknown = c.mode === 'overwrite' && rng.bool(0.3) ? { blend: rng.pick([1, 0.5, 0.25, 1e-3]) } : rng.bool() ? undefined : {};
  const args: Record<string, unknown> = { ids, tokens, counts };
  const call = () => c.bank.update(args.ids as never, args.tokens as never, args.counts as never, options as never);
  if (valid) {
    const orig = { ids: ids.slice(), counts: counts.slice(), blend: (options as { blend?: number } | undefined)?.blend };
    const check = async () => { c.ref.update(orig.ids, { data: exact, shape: [n, c.width] }, orig.counts, { blend: orig.blend }); return sameAsRef(c); };
    const p = rng.next();
    if (p < 0.12 && ids.length > 0) return { fn: 'MemoryBank.update', family: 'valid: userIds / counts overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => { ids.fill(ids.length > 1 ? ids[0] : -1); counts.fill(c.slots + 3); } };
    if (p < 0.22) return { fn: 'MemoryBank.update', family: 'valid: tokens disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => tokens.dispose() };
    s.arr(ids); s.arr(counts);
    return { fn: 'MemoryBank.update', family: 'valid', detail: `${c.mode}${c.overflow ? '/' + c.overflow : ''} ${c.dtype} ${ids.length} users`, expect: OK, call, check };
  }
  let m: Mut;
  let post: (() => void) | undefined;
  const r = rng.int(0, 9);
  if (r === 0) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
  else if (r <= 2) m = userIdsMutation(rng, c, ids, (v) => { args.ids = v; });
  else if (r === 3) {
    if (rng.bool(0.3)) { args.tokens = s.z([n, c.width + 1], { dtype: c.dtype }); m = { family: 'tokens: width differs from the bank', expect: R('tokens') }; }
    else if (rng.bool(0.3)) { args.tokens = s.z([n + 1, c.width], { dtype: c.dtype }); m = { family: 'tokens: rows != sum of counts', expect: R('tokens', 'counts') }; }
    else m = mutateTensor(rng, s, { name: 'tokens', shape: [n, c.width], dtype: c.dtype, allowed: [c.dtype], device: c.bank.device }, (v) => { args.tokens = v; });
  } else if (r === 4) {
    const v = rng.bool(0.1) ? undefined : notInt32Array(rng, counts.length, counts);
    args.counts = v;
    m = { family: 'counts: not an Int32Array', detail: describe(v), expect: T('counts') };
  } else if (r === 5 && rng.bool(0.4)) {
    // counts whose int32-wrapped sum equals the token rows (2 * (2**31 - 1) + n + 2 = n mod 2**32)
    const n0 = rng.int(0, 2);
    const cs = Int32Array.of(2 ** 31 - 1, 2 ** 31 - 1, n0 + 2);
    const uids = pickUsers(rng, Math.max(3, c.users), 3).map((u) => u % c.users);
    if (new Set(uids).size < 3) { args.counts = Int32Array.of(2 ** 31 - 1); args.ids = Int32Array.of(0); args.tokens = s.z([n0, c.width], { dtype: c.dtype }); m = { family: 'counts: huge count', detail: describe(args.counts), expect: R('counts', 'tokens') }; }
    else { args.ids = uids; args.counts = cs; args.tokens = s.z([n0, c.width], { dtype: c.dtype }); m = { family: 'counts: huge counts whose int32 sum wraps to the token rows', detail: `${describe(cs)} for ${n0} rows`, expect: R('counts', 'tokens') }; }
  } else if (r === 5) {
    const bad = new Int32Array(counts.length + rng.pick([1, 2]));
    bad.set(counts);
    args.counts = bad;
    m = { family: 'counts: length != userIds length', detail: describe(bad), expect: R('counts') };
  } else if (r === 6) {
    // a count outside [0, slots]; tokens hold exactly the sum of counts, so only the count is wrong
    const cs = Int32Array.from(ids.length ? counts : [0]);
    const usedIds = ids.length ? ids : Int32Array.from([0]);
    const i = rng.int(0, cs.length - 1);
    if (cs.length >= 2 && rng.bool()) {
      const d = rng.int(1, 3), j = (i + 1) % cs.length;
      cs[i] = -d; cs[j] += d + counts[i];
    } else cs[i] = c.slots + rng.int(1, 3);
    const total = cs.reduce((a, b) => a + b, 0);
    args.ids = usedIds; args.counts = cs;
    args.tokens = s.z([total, c.width], { dtype: c.dtype });
    m = { family: cs[i] < 0 ? 'counts: negative count' : 'counts: count > slots', detail: describe(cs), expect: R('counts') };
  } else if (r === 7) {
    // append with overflow 'error': a user already holding tokens gets more than fit
    if (c.mode === 'append' && c.overflow === 'error') {
      const u = rng.int(0, c.users - 1), cnt = c.slots - c.ref.lengths()[u] + 1;
      if (cnt <= c.slots) {
        args.ids = Int32Array.of(u); args.counts = Int32Array.of(cnt); args.tokens = s.z([cnt, c.width], { dtype: c.dtype });
        m = { family: "counts: append overflow under overflow 'error'", detail: `user ${u} holds ${c.ref.lengths()[u]} of ${c.slots}, +${cnt}`, expect: R('counts', 'overflow') };
      } else m = blendMutation(rng, c, (v) => { options = v; });
    } else m = blendMutation(rng, c, (v) => { options = v; });
  } else if (r === 8) m = blendMutation(rng, c, (v) => { options = v; });
  else {
    // SPEC §11: arguments are captured at the call: a call bad when made stays rejected when the caller fixes its arrays afterwards.
    if (ids.length >= 2 && rng.bool()) {
      const bad = ids.slice(); const keep = bad[1]; bad[1] = bad[0];
      args.ids = bad; post = () => { bad[1] = keep; };
      m = { family: 'userIds: duplicate at the call, fixed right after', detail: describe(bad), expect: R('userIds') };
    } else {
      // tokens sized for the fixed counts: read when the call is made, the counts do not match them
      const cs = Int32Array.from(ids.length ? counts : [0]); const usedIds = ids.length ? ids : Int32Array.from([0]);
      const keep = cs[0];
      args.ids = usedIds; args.counts = cs; args.tokens = s.z([cs.reduce((a, b) => a + b, 0), c.width], { dtype: c.dtype });
      cs[0] = c.slots + 1;
      post = () => { cs[0] = keep; };
      m = { family: 'counts: > slots at the call, fixed right after', detail: describe(cs), expect: R('counts', 'tokens') };
    }
  }
  for (const a of [...collectArrays(args), ...collectArrays(options)]) s.arr(a);
  return { fn: 'MemoryBank.update', ...m, bank: c.bank, call, post, noInputCheck: post !== undefined };
}

async function genUpdateFrom(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const candidates = Array.from({ length: c.users }, (_, u) => u).filter((u) => capacity(c, u) > 0);
  const ids = pickUsers(rng, c.users, rng.int(0, c.users)).filter((u) => candidates.includes(u));
  const maxPerUser = Math.min(c.slots, ...Array.from(ids, (u) => capacity(c, u)));
  const lay = randLayout(rng, ids.length, maxPerUser);
  const { t: hidden, exact } = await rows(rng, s, c, lay.T);
  const role = rng.pick(['item', 'memory', 'target'] as const);
  let select: unknown = rng.bool(0.2) ? undefined : rng.bool(0.6) ? role : { role, last: rng.int(1, c.slots + 2) };
  const layout: Record<string, unknown> = { offsets: lay.offsets, roles: lay.roles };
  if (rng.bool(0.3)) layout.segments = lay.segments;
  let options: unknown = c.mode === 'overwrite' && rng.bool(0.2) ? { blend: 0.5 } : undefined;
  const args: Record<string, unknown> = { ids, hidden, layout };
  const call = () => c.bank.updateFrom(args.ids as never, args.hidden as never, args.layout as never, select as never, options as never);
  if (valid) {
    const orig = { ids: ids.slice(), offsets: lay.offsets.slice(), roles: lay.roles.slice(), select: select === undefined ? 'memory' : typeof select === 'string' ? select : { ...(select as object) }, blend: (options as { blend?: number } | undefined)?.blend };
    const check = async () => { c.ref.updateFrom(orig.ids, { data: exact, shape: [lay.T, c.width] }, { offsets: orig.offsets, roles: orig.roles }, orig.select as never, { blend: orig.blend }); return sameAsRef(c); };
    const p = rng.next();
    if (p < 0.12 && ids.length > 0) return { fn: 'MemoryBank.updateFrom', family: 'valid: userIds / layout overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => { ids.fill(-1); lay.roles.fill(9); lay.offsets.fill(2 ** 31 - 1); } };
    if (p < 0.22) return { fn: 'MemoryBank.updateFrom', family: 'valid: hidden disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => hidden.dispose() };
    for (const a of collectArrays(args)) s.arr(a);
    return { fn: 'MemoryBank.updateFrom', family: 'valid', detail: `${c.mode} select ${describe(select)}`, expect: OK, call, check };
  }
  let m: Mut;
  const r = rng.int(0, 9);
  if (r === 0) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
  else if (r === 1) m = userIdsMutation(rng, c, ids, (v) => { args.ids = v; });
  else if (r === 2) m = mutateTensor(rng, s, { name: 'hidden', shape: [lay.T, c.width], dtype: c.dtype, allowed: [c.dtype], device: c.bank.device }, (v) => { args.hidden = v; });
  else if (r === 3) {
    const k = rng.int(0, 3);
    if (k === 0) { const v = notAnObject(rng); args.layout = v; m = { family: 'layout: not an object', detail: describe(v), expect: T('layout') }; }
    else if (k === 1) m = mutateOffsets(rng, 'layout.offsets', lay.offsets, lay.T, (v) => { layout.offsets = v; });
    else if (k === 2) { const kind = rng.bool() ? 'roles' : 'segments'; m = mutateTokenArray(rng, 'layout', kind, lay, (v) => { layout[kind] = v; }); }
    else { const o = otherBatch(rng, lay.offsets, lay.T); layout.offsets = o; m = { family: 'layout: batch != number of users', detail: `${o.length - 1} sequences for ${ids.length} users`, expect: R('layout', 'layout.offsets', 'userIds') }; }
  } else if (r <= 5) {
    const k = rng.int(0, 3);
    if (k === 0) { const b = badName(rng, ['item', 'memory', 'target']); select = b.v; m = { family: `select: ${b.family}`, detail: describe(b.v), expect: TR('select') }; }
    else if (k === 1) { const v = rng.pick<unknown>([null, 5, true, 1n, ['memory'], () => 'memory']); select = v; m = { family: 'select: not a role name or { role, last }', detail: describe(v), expect: T('select') }; }
    else if (k === 2) { const b = rng.bool(0.8) ? badName(rng, ['item', 'memory', 'target']) : { v: notAString(rng), family: 'not a string' }; select = { role: b.v, last: 1 }; m = { family: `select.role: ${b.family}`, detail: describe(b.v), expect: TR('select', 'select.role') }; }
    else { const b = badInteger(rng, { min: 1, huge: false }); select = { role, last: b.v }; m = { family: `select.last: ${b.family}`, detail: describe(b.v), expect: { classes: b.classes, names: ['select.last', 'select'] } }; }
  } else if (r === 6) {
    // more selected rows for a user than slots (or than fit, under overflow 'error')
    if (ids.length === 0) { args.ids = Int32Array.of(0); }
    const u = (args.ids as Int32Array)[0];
    const over = (c.mode === 'append' && c.overflow === 'error' ? c.slots - c.ref.lengths()[u] : c.slots) + rng.int(1, 2);
    const uids = Int32Array.of(u);
    args.ids = uids;
    const memRows = Math.min(over, c.slots + 2);
    args.layout = { offsets: Int32Array.of(0, memRows), roles: new Uint8Array(memRows).fill(1) };
    args.hidden = s.z([memRows, c.width], { dtype: c.dtype });
    select = 'memory';
    const overflowCase = c.mode === 'append' && c.overflow === 'error' && memRows <= c.slots;
    if (memRows <= c.slots && !overflowCase) { select = { role: 'memory', last: 0 }; m = { family: 'select.last: below the minimum', detail: '0', expect: R('select.last', 'select') }; }
    else m = { family: overflowCase ? "select: append overflow under overflow 'error'" : 'select: more rows than slots', detail: `${memRows} memory rows, slots ${c.slots}`, expect: R('select', 'layout', 'counts', 'slots', 'overflow') };
  } else if (r === 7) m = blendMutation(rng, c, (v) => { options = v; });
  else {
    if (ids.length >= 2) {
      const bad = ids.slice(); const keep = bad[1]; bad[1] = bad[0];
      args.ids = bad;
      const spec = { fn: 'MemoryBank.updateFrom', family: 'userIds: duplicate at the call, fixed right after', detail: describe(bad), expect: R('userIds'), bank: c.bank, call, post: () => { bad[1] = keep; }, noInputCheck: true };
      return spec;
    }
    m = userIdsMutation(rng, c, ids, (v) => { args.ids = v; });
  }
  for (const a of [...collectArrays(args), ...collectArrays(options)]) s.arr(a);
  return { fn: 'MemoryBank.updateFrom', ...m, bank: c.bank, call };
}

async function genRead(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const ids = pickUsers(rng, c.users, rng.int(0, c.users));
  let arg: unknown = ids;
  const call = () => c.bank.read(arg as never);
  if (valid) {
    const want = c.ref.read(ids.slice());
    const check = async (r: { tokens: Tensor; offsets: Int32Array }) => {
      if (!(r?.tokens instanceof Tensor) || !(r.offsets instanceof Int32Array)) return `got ${describe(r)}`;
      if (Array.from(r.offsets).join() !== Array.from(want.offsets).join()) return `offsets ${Array.from(r.offsets)}, reference ${Array.from(want.offsets)}`;
      return compare(await r.tokens.float32(), want.tokens.data, c.dtype, 'tokens') || undefined;
    };
    if (rng.bool(0.15) && ids.length) return { fn: 'MemoryBank.read', family: 'valid: userIds overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => ids.fill(-1) };
    s.arr(ids);
    return { fn: 'MemoryBank.read', family: 'valid', expect: OK, call, check };
  }
  let m: Mut;
  if (rng.bool(0.15)) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
  else m = userIdsMutation(rng, c, ids, (v) => { arg = v; });
  for (const a of collectArrays([arg])) s.arr(a);
  return { fn: 'MemoryBank.read', ...m, bank: c.bank, call };
}

async function genAssemble(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const ids = pickUsers(rng, c.users, rng.int(0, c.users));
  const lay = randLayout(rng, ids.length, 4);
  const { t: items, exact: itemsExact } = await rows(rng, s, c, lay.T);
  const C = rng.int(0, 3);
  const { t: queries, exact: qExact } = await rows(rng, s, c, C);
  const args: Record<string, unknown> = { ids, items, itemOffsets: lay.offsets, queries };
  const call = () => c.bank.assemble(args.ids as never, args.items as never, args.itemOffsets as never, args.queries as never);
  if (valid) {
    const want = c.ref.assemble(ids.slice(), { data: itemsExact, shape: [lay.T, c.width] }, lay.offsets.slice(), { data: qExact, shape: [C, c.width] });
    const check = async (r: { hidden: Tensor; layout: { offsets: Int32Array; segments: Int32Array; roles: Uint8Array } }) => {
      if (!(r?.hidden instanceof Tensor) || !r.layout) return `got ${describe(r)}`;
      for (const f of ['offsets', 'segments', 'roles'] as const)
        if (Array.from(r.layout[f] ?? []).join() !== Array.from(want.layout[f]).join()) return `layout.${f} ${describe(r.layout[f])}, reference ${describe(want.layout[f])}`;
      return compare(await r.hidden.float32(), want.hidden.data, c.dtype, 'hidden') || undefined;
    };
    const p = rng.next();
    if (p < 0.12 && ids.length) return { fn: 'MemoryBank.assemble', family: 'valid: userIds / itemOffsets overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => { ids.fill(-1); lay.offsets.fill(2 ** 31 - 1); } };
    if (p < 0.22) return { fn: 'MemoryBank.assemble', family: 'valid: items / queries disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => { items.dispose(); queries.dispose(); } };
    s.arr(ids); s.arr(lay.offsets);
    return { fn: 'MemoryBank.assemble', family: 'valid', detail: `${ids.length} users, C=${C}`, expect: OK, call, check };
  }
  let m: Mut;
  const r = rng.int(0, 7);
  if (r === 0) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
  else if (r === 1) m = userIdsMutation(rng, c, ids, (v) => { args.ids = v; });
  else if (r === 2) m = rng.bool(0.3) ? (args.items = s.z([lay.T, c.width + 1], { dtype: c.dtype }), { family: 'items: width differs from the bank', expect: R('items') }) : mutateTensor(rng, s, { name: 'items', shape: [lay.T, c.width], dtype: c.dtype, allowed: [c.dtype], device: c.bank.device }, (v) => { args.items = v; });
  else if (r === 3) m = rng.bool(0.3) ? (args.queries = s.z([C, c.width + 1], { dtype: c.dtype }), { family: 'queries: width differs from the bank', expect: R('queries') }) : mutateTensor(rng, s, { name: 'queries', shape: [C, c.width], dtype: c.dtype, allowed: [c.dtype], device: c.bank.device }, (v) => { args.queries = v; });
  else if (r <= 5) m = mutateOffsets(rng, 'itemOffsets', lay.offsets, lay.T, (v) => { args.itemOffsets = v; });
  else if (r === 6) { const o = otherBatch(rng, lay.offsets, lay.T); args.itemOffsets = o; m = { family: 'itemOffsets: batch != number of users', detail: `${o.length - 1} sequences for ${ids.length} users`, expect: R('itemOffsets') }; }
  else {
    // captured at the call: bad itemOffsets fixed right after must still reject
    const bad = lay.offsets.slice(); const last = bad.length - 1; const keep = bad[last]; bad[last] = keep + 1;
    args.itemOffsets = bad;
    s.arr(ids);
    return { fn: 'MemoryBank.assemble', family: 'itemOffsets: bad at the call, fixed right after', detail: describe(bad), expect: R('itemOffsets'), bank: c.bank, call, post: () => { bad[last] = keep; }, noInputCheck: true };
  }
  for (const a of collectArrays(args)) s.arr(a);
  return { fn: 'MemoryBank.assemble', ...m, bank: c.bank, call };
}

async function genLengthsReset(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const ids = pickUsers(rng, c.users, rng.int(0, c.users));
  let arg: unknown = rng.bool(0.3) && valid ? undefined : ids;
  if (rng.bool(0.4)) {
    const call = () => c.bank.lengths(arg as never);
    if (valid) {
      const want = arg === undefined ? Array.from(c.ref.lengths()) : Array.from(c.ref.lengths(ids));
      s.arr(ids);
      return { fn: 'MemoryBank.lengths', family: 'valid', expect: OK, sync: true, call, check: (l: Int32Array) => (l instanceof Int32Array && Array.from(l).join() === want.join() ? undefined : `got ${describe(l)}, reference ${want}`) };
    }
    let m: Mut;
    if (rng.bool(0.15)) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
    else {
      const r = rng.next();
      if (r < 0.5) { const v = notInt32Array(rng, ids.length, ids); arg = v; m = { family: 'userIds: not an Int32Array', detail: describe(v), expect: T('userIds') }; }
      else { const bad = Int32Array.from(ids.length ? ids : [0]); bad[rng.int(0, bad.length - 1)] = rng.pick([-1, c.users, 2 ** 31 - 1]); arg = bad; m = { family: 'userIds: id out of range', detail: describe(bad), expect: R('userIds') }; }
    }
    for (const a of collectArrays([arg])) s.arr(a);
    return { fn: 'MemoryBank.lengths', ...m, sync: true, bank: c.bank, call };
  }
  arg = ids;
  const call = () => c.bank.reset(arg as never);
  if (valid) {
    const orig = ids.slice();
    const check = async () => { c.ref.reset(orig); return sameAsRef(c); };
    if (rng.bool(0.15) && ids.length) return { fn: 'MemoryBank.reset', family: 'valid: userIds overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => ids.fill(ids.length > 1 ? ids[0] : -1) };
    s.arr(ids);
    return { fn: 'MemoryBank.reset', family: 'valid', expect: OK, call, check };
  }
  let m: Mut;
  if (rng.bool(0.15)) { c.bank.dispose(); m = { family: 'disposed bank', expect: BANK_DISPOSED }; }
  else m = userIdsMutation(rng, c, ids, (v) => { arg = v; });
  for (const a of collectArrays([arg])) s.arr(a);
  return { fn: 'MemoryBank.reset', ...m, bank: c.bank, call };
}

// ------------------------------------------------------------------------------------------------
// Files.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) { let x = n; for (let k = 0; k < 8; k++) x = x & 1 ? 0xedb88320 ^ (x >>> 1) : x >>> 1; t[n] = x >>> 0; }
  return t;
})();
function crc32(b: Uint8Array): number { let x = 0xffffffff; for (let i = 0; i < b.length; i++) x = CRC_TABLE[(x ^ b[i]) & 0xff] ^ (x >>> 8); return (x ^ 0xffffffff) >>> 0; }
/** Rewrites the trailing CRC-32 so only the crafted field is wrong. */
function reseal(buf: Buffer): Buffer { buf.writeUInt32LE(crc32(buf.subarray(0, buf.length - 4)), buf.length - 4); return buf; }

let fileSerial = 0;
function caseDir(s: Scope): string {
  const d = path.join(s.tmp, `case-${process.pid}-${fileSerial++}`);
  fs.mkdirSync(d);
  return d;
}

async function genSave(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const dir = caseDir(s);
  const file = path.join(dir, 'bank.lkmb');
  if (valid) {
    const device = rng.pick(s.other ? [s.device, s.other] : [s.device]);
    return {
      fn: 'MemoryBank.save', family: 'valid (then load)', expect: OK, call: () => c.bank.save(file),
      check: async () => {
        const listing = fs.readdirSync(dir);
        if (listing.join() !== 'bank.lkmb') return `folder holds ${JSON.stringify(listing)} after save`;
        const loaded = await MemoryBank.load(file, { device });
        try {
          if (loaded.device !== device || loaded.users !== c.users || loaded.slots !== c.slots || loaded.width !== c.width || loaded.dtype !== c.dtype || loaded.mode !== c.mode || (c.overflow && loaded.overflow !== c.overflow))
            return `loaded ${describe({ device: loaded.device, users: loaded.users, slots: loaded.slots, width: loaded.width, dtype: loaded.dtype, mode: loaded.mode, overflow: loaded.overflow })}`;
          return await sameAsRef({ ...c, bank: loaded });
        } finally { loaded.dispose(); }
      },
    };
  }
  const r = rng.next();
  if (r < 0.15) { c.bank.dispose(); return { fn: 'MemoryBank.save', family: 'disposed bank', expect: BANK_DISPOSED, call: () => c.bank.save(file), folder: dir }; }
  if (r < 0.55) {
    const v = rng.pick<unknown>([null, undefined, 5, {}, true, Symbol('p'), ['x']]);
    return { fn: 'MemoryBank.save', family: 'path: not a string', detail: describe(v), expect: T('path', 'file'), bank: c.bank, call: () => c.bank.save(v as never), folder: dir };
  }
  if (r < 0.8) return { fn: 'MemoryBank.save', family: 'path in a missing folder', expect: { io: true }, bank: c.bank, call: () => c.bank.save(path.join(dir, 'missing', 'bank.lkmb')), folder: dir };
  fs.mkdirSync(path.join(dir, 'sub'));
  return { fn: 'MemoryBank.save', family: 'path is an existing folder', expect: { io: true }, bank: c.bank, call: () => c.bank.save(path.join(dir, 'sub')), folder: dir };
}

async function genLoad(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const c = await makeBank(rng, s);
  const dir = caseDir(s);
  const file = path.join(dir, 'bank.lkmb');
  await c.bank.save(file);
  const good = fs.readFileSync(file);
  const device = rng.pick(s.other ? [s.device, s.other] : [s.device]);
  if (valid) {
    return {
      fn: 'MemoryBank.load', family: 'valid', expect: OK, call: () => MemoryBank.load(file, { device }),
      check: async (b: MemoryBank) => {
        if (!(b instanceof MemoryBank) || b.device !== device || b.users !== c.users || b.slots !== c.slots || b.width !== c.width || b.dtype !== c.dtype || b.mode !== c.mode) return `loaded ${describe(b)}`;
        return sameAsRef({ ...c, bank: b });
      },
    };
  }
  const io: Expect = { io: true };
  const load = (p: unknown, o: unknown = { device }) => () => MemoryBank.load(p as never, o as never);
  const r = rng.int(0, 9);
  const users = good.readUInt32LE(12), slots = good.readUInt32LE(16);
  const write = (b: Buffer) => { fs.writeFileSync(file, b); return b; };
  switch (r) {
    case 0: { const v = rng.pick<unknown>([null, undefined, 5, {}, true, ['x']]); return { fn: 'MemoryBank.load', family: 'path: not a string', detail: describe(v), expect: T('path', 'file'), call: load(v) }; }
    case 1: return { fn: 'MemoryBank.load', family: rng.bool() ? 'missing file' : 'path is a folder', expect: io, call: load(rng.bool() ? path.join(dir, 'nope.lkmb') : dir) };
    case 2: { const n = rng.pick([0, 1, 8, 31, 36, 100]); const b = write(Buffer.from(Array.from({ length: n }, () => rng.int(0, 255)))); return { fn: 'MemoryBank.load', family: 'junk bytes', detail: `${b.length} bytes`, expect: io, call: load(file) }; }
    case 3: { const n = rng.int(0, good.length - 1); write(good.subarray(0, n)); return { fn: 'MemoryBank.load', family: 'truncated file', detail: `${n} of ${good.length} bytes`, expect: io, call: load(file) }; }
    case 4: { const b = Buffer.from(good); const at = rng.int(0, b.length - 1); b[at] ^= rng.int(1, 255); write(b); return { fn: 'MemoryBank.load', family: 'one byte flipped (checksum)', detail: `at ${at}`, expect: io, call: load(file) }; }
    case 5: {
      const b = Buffer.from(good); const field = rng.pick(['version', 'dtype', 'mode', 'overflow'] as const);
      const v = field === 'version' ? rng.pick([0, 2, 0xffffffff]) : field === 'dtype' ? rng.pick([3, 7, 255]) : rng.pick([2, 3, 7, 255]);
      if (field === 'version') b.writeUInt32LE(v, 8); else b.writeUInt8(v, field === 'dtype' ? 24 : field === 'mode' ? 25 : 26);
      write(reseal(b));
      return { fn: 'MemoryBank.load', family: `crafted header (valid checksum): ${field} = ${field === 'version' ? 'unsupported' : 'out of range'}`, detail: String(v), expect: io, call: load(file) };
    }
    case 6: {
      const b = Buffer.from(good); const u = rng.int(0, users - 1); const which = rng.bool() ? 'length' : 'ring start';
      const v = which === 'length' ? rng.pick([slots + 1, -1, 2 ** 31 - 1]) : rng.pick([slots, -1, slots + 7]);
      b.writeInt32LE(v, 32 + (which === 'length' ? 0 : 4 * users) + 4 * u);
      write(reseal(b));
      return { fn: 'MemoryBank.load', family: `crafted body (valid checksum): ${which} out of range`, detail: `user ${u}: ${v} (slots ${slots})`, expect: io, call: load(file) };
    }
    case 7: {
      const b = Buffer.from(good); const f = rng.pick([12, 16, 20]); b.writeUInt32LE(rng.pick([0, 2 ** 31, 0xffffffff]), f); write(reseal(b));
      return { fn: 'MemoryBank.load', family: 'crafted header (valid checksum): users / slots / width wrong', detail: `field at ${f}`, expect: io, call: load(file) };
    }
    case 8: { const v = rng.pick<unknown>([null, 5, 'x', true]); return { fn: 'MemoryBank.load', family: 'options: not an object', detail: describe(v), expect: T('options'), call: load(file, v) }; }
    default: {
      if (!s.cudaAvailable && rng.bool(0.3)) return { fn: 'MemoryBank.load', family: 'options.device: cuda unavailable', expect: { names: ['device'], cudaUnavailable: true }, call: load(file, { device: 'cuda' }) };
      const b = rng.bool(0.8) ? badName(rng, ['cpu', 'cuda']) : { v: notAString(rng), family: 'not a string' };
      return { fn: 'MemoryBank.load', family: `options.device: ${b.family}`, detail: describe(b.v), expect: TR('device', 'options.device'), call: load(file, { device: b.v }) };
    }
  }
}

export async function genBankGroup(rng: Rng, s: Scope): Promise<CaseSpec> {
  const valid = rng.bool(0.25);
  const r = rng.next();
  if (r < 0.12) return genCtor(rng, s, valid);
  if (r < 0.34) return genUpdate(rng, s, valid);
  if (r < 0.52) return genUpdateFrom(rng, s, valid);
  if (r < 0.6) return genRead(rng, s, valid);
  if (r < 0.72) return genAssemble(rng, s, valid);
  if (r < 0.84) return genLengthsReset(rng, s, valid);
  if (r < 0.9) return genSave(rng, s, valid);
  return genLoad(rng, s, valid);
}

