// Group 'tensor': tensor(), zeros(), Tensor.data / float32 / to / dispose, backends().
import { backends, reference, tensor, zeros, Tensor } from '../../lib/index';
import type { DType, Device } from '../../lib/index';
import { Rng } from '../helpers';
import { CaseSpec, describe, DISPOSED, Expect, OK, Scope, T, TR, R } from './harness';
import { badName, notAString } from './values';

const DTYPES: DType[] = ['float32', 'float16', 'bfloat16', 'int32'];

function randShape(rng: Rng): number[] {
  return Array.from({ length: rng.int(0, 3) }, () => rng.int(0, 4));
}
const prod = (s: number[]) => s.reduce((a, b) => a * b, 1);

function devices(s: Scope): Device[] { return s.other ? [s.device, s.other] : [s.device]; }

function sameFloat(a: number, b: number): boolean { return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)) || a === b; }

/** What `tensor(values, shape, { dtype })` must store, as float32 / int32 numbers. */
function expected(values: ArrayLike<number>, dtype: DType, raw: boolean): number[] {
  const v = Array.from(values);
  switch (dtype) {
    case 'int32': return v;
    case 'float32': return v.map((x) => Math.fround(x));
    case 'float16': return raw ? v.map((b) => reference.float16BitsToFloat32(b)) : v.map((x) => reference.float16BitsToFloat32(reference.float32ToFloat16Bits(Math.fround(x))));
    default: return raw ? v.map((b) => reference.bfloat16BitsToFloat32(b)) : v.map((x) => reference.bfloat16BitsToFloat32(reference.float32ToBfloat16Bits(Math.fround(x))));
  }
}

async function contents(t: Tensor): Promise<number[]> {
  const d = await t.data();
  if (t.dtype === 'float16') return Array.from(d, (b) => reference.float16BitsToFloat32(b));
  if (t.dtype === 'bfloat16') return Array.from(d, (b) => reference.bfloat16BitsToFloat32(b));
  return Array.from(d);
}

function checkMeta(t: unknown, dtype: DType, shape: number[], device: Device): string | undefined {
  if (!(t instanceof Tensor)) return `not a Tensor: ${describe(t)}`;
  if (t.dtype !== dtype || t.device !== device || t.shape.join() !== shape.join() || t.size !== prod(shape))
    return `got ${t.toString()} size ${t.size}, expected ${dtype} [${shape}] on ${device}`;
  return undefined;
}

/** After a valid tensor: dispose twice is fine, data() then rejects with 'tensor is disposed' (never a synchronous throw). */
async function disposeProtocol(t: Tensor): Promise<string | undefined> {
  try { t.dispose(); t.dispose(); t[Symbol.dispose](); } catch (e) { return `dispose twice threw ${String(e)}`; }
  let p: Promise<unknown>;
  try { p = t.data(); } catch (e) { return `data() after dispose threw synchronously: ${String(e)}`; }
  try { await p; return 'data() after dispose resolved'; } catch (e) {
    return e instanceof Error && e.message.includes('tensor is disposed') ? undefined : `data() after dispose: ${String(e)}`;
  }
}

function randValues(rng: Rng, n: number, dtype: DType): number[] {
  if (dtype === 'int32') return Array.from({ length: n }, () => rng.pick([0, 1, -1, 2 ** 31 - 1, -(2 ** 31), rng.int(-1000, 1000), -0]));
  return Array.from({ length: n }, () => (rng.bool(0.1) ? rng.pick([NaN, Infinity, -Infinity, -0, 65504, 1e-8, 3e38]) : (rng.next() * 2 - 1) * 100));
}

function asKind(rng: Rng, values: number[], dtype: DType): { data: ArrayLike<number>; raw: boolean; kind: string } {
  if (dtype === 'int32') {
    const k = rng.pick(['array', 'Int32Array', 'Float64Array']);
    return { data: k === 'array' ? values : k === 'Int32Array' ? Int32Array.from(values) : Float64Array.from(values), raw: false, kind: k };
  }
  if (dtype !== 'float32' && rng.bool(0.3)) {
    const bits = Uint16Array.from(values, () => rng.int(0, 0xffff));
    return { data: bits, raw: true, kind: 'Uint16Array (raw bits)' };
  }
  const k = rng.pick(['array', 'Float32Array', 'Float64Array']);
  return { data: k === 'array' ? values : k === 'Float32Array' ? Float32Array.from(values) : Float64Array.from(values), raw: false, kind: k };
}

// ------------------------------------------------------------------------------------------------

function genTensorCall(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const dtype = rng.pick(DTYPES);
  const shape = randShape(rng);
  const n = prod(shape);
  const device = rng.pick(devices(s));
  const values = randValues(rng, n, dtype);
  const { data, raw, kind } = asKind(rng, values, dtype);
  let args: { data: unknown; shape: unknown; options: unknown } = { data, shape, options: rng.bool(0.8) ? { dtype, device } : dtype === 'float32' && !(data instanceof Int32Array) ? (device === 'cpu' ? undefined : { device }) : { dtype, device } };
  if (valid) {
    s.arr(data);
    return {
      fn: 'tensor', family: 'valid', detail: `${kind} ${dtype} [${shape}] on ${device}`, expect: OK, sync: true,
      call: () => tensor(args.data as never, args.shape as never, args.options as never),
      check: async (t: Tensor) => {
        const m = checkMeta(t, dtype, shape, device);
        if (m) return m;
        const got = await contents(t), want = expected(values.length === n && !raw ? values : Array.from(data), dtype, raw);
        for (let i = 0; i < n; i++) if (!sameFloat(got[i], want[i])) return `element ${i}: stored ${got[i]}, expected ${want[i]} (from ${describe(Array.from(data)[i])})`;
        return disposeProtocol(t);
      },
    };
  }
  let m: { family: string; detail: string; expect: Expect };
  const pick = rng.int(0, 11);
  switch (pick) {
    case 0: {
      const v = rng.pick<() => unknown>([() => null, () => undefined, () => 5, () => 'abc', () => true, () => Symbol('d'), () => 1n, () => () => 0])();
      args.data = v; m = { family: 'data: not an array', detail: describe(v), expect: T('data') };
      break;
    }
    case 1: {
      const len = n;
      args = { data: { length: len }, shape, options: { dtype: rng.pick(DTYPES), device } };
      if (len === 0) { args.data = { length: 1 }; args.shape = [1]; }
      m = { family: 'data: array-like without numbers', detail: `{ length: ${(args.data as { length: number }).length} }`, expect: TR('data') };
      break;
    }
    case 2: {
      const bad = rng.pick<() => unknown>([() => 'a', () => ({}), () => null, () => undefined, () => '1', () => true, () => 1n, () => [1], () => Symbol('e'), () => new Date(0)])();
      const len = Math.max(1, n);
      const arr: unknown[] = randValues(rng, len, dtype);
      arr[rng.int(0, len - 1)] = bad;
      args = { data: arr, shape: n === 0 ? [len] : shape, options: { dtype, device } };
      m = { family: `data: non-number element (${dtype === 'int32' ? 'int32' : 'float'})`, detail: `${describe(bad)} in ${describe(arr)}`, expect: TR('data') };
      break;
    }
    case 3: {
      const bad = rng.pick([2 ** 31, 2 ** 32 + 5, 2 ** 40, -(2 ** 31) - 1, 2 ** 53, 1e300, -1e300]);
      const len = Math.max(1, n);
      const arr = randValues(rng, len, 'int32');
      arr[rng.int(0, len - 1)] = bad;
      const k = rng.pick(['array', 'Float64Array', 'Uint32Array']);
      const d = k === 'array' ? arr : k === 'Float64Array' ? Float64Array.from(arr) : Uint32Array.from(arr.map((x) => (x === bad ? 2 ** 32 - 1 : Math.abs(x))));
      args = { data: d, shape: n === 0 ? [len] : shape, options: { dtype: 'int32', device } };
      m = { family: 'data: int32 out of range', detail: `${k} with ${describe(k === 'Uint32Array' ? 2 ** 32 - 1 : bad)}`, expect: R('data') };
      break;
    }
    case 4: {
      const bad = rng.pick([1.5, -0.5, NaN, Infinity, -Infinity, 1e-9]);
      const len = Math.max(1, n);
      const arr = randValues(rng, len, 'int32');
      arr[rng.int(0, len - 1)] = bad;
      const k = rng.pick(['array', 'Float32Array', 'Float64Array']);
      args = { data: k === 'array' ? arr : k === 'Float32Array' ? Float32Array.from(arr) : Float64Array.from(arr), shape: n === 0 ? [len] : shape, options: { dtype: 'int32', device } };
      m = { family: 'data: int32 not an integer', detail: `${k} with ${describe(bad)}`, expect: TR('data') };
      break;
    }
    case 5: {
      const len = Math.max(1, n);
      args = { data: rng.bool() ? new BigInt64Array(len) : new BigUint64Array(len), shape: n === 0 ? [len] : shape, options: { dtype: rng.pick(DTYPES), device } };
      m = { family: 'data: BigInt typed array', detail: describe(args.data), expect: TR('data') };
      break;
    }
    case 6: {
      const v = rng.pick<() => unknown>([() => null, () => undefined, () => 5, () => '2', () => ({ length: 1, 0: n }), () => Symbol('s'), () => true])();
      args.shape = v; m = { family: 'shape: not an array', detail: describe(v), expect: T('shape') };
      break;
    }
    case 7: {
      const v = rng.pick<unknown>([-1, 1.5, NaN, Infinity, -Infinity, '2', null, undefined, 2 ** 53, 1n, {}, -(2 ** 31)]);
      const sh: unknown[] = shape.length ? shape.slice() : [1];
      sh[rng.int(0, sh.length - 1)] = v;
      args.shape = sh;
      m = { family: 'shape: bad dimension', detail: describe(sh), expect: TR('shape') };
      break;
    }
    case 8: {
      const sh = rng.pick([[n + 1], [n + 2, 1], [...shape, 2], [2 ** 24, 2 ** 24], [2 ** 31, 2 ** 31], [Number.MAX_SAFE_INTEGER]]);
      if (prod(sh) === n) sh.splice(0, sh.length, n + 1);
      args.shape = sh;
      m = { family: 'data length != product of shape', detail: `${n} elements for [${sh.map((x) => describe(x))}]`, expect: R('data', 'shape') };
      break;
    }
    case 9: {
      const v = rng.pick<unknown>([null, 5, 'x', true, Symbol('o'), 1n]);
      args.options = v; m = { family: 'options: not an object', detail: describe(v), expect: T('options') };
      break;
    }
    case 10: {
      const b = rng.bool(0.8) ? badName(rng, DTYPES) : { v: notAString(rng), family: 'not a string' };
      args.options = { dtype: b.v, device };
      m = { family: `options.dtype: ${b.family}`, detail: describe(b.v), expect: TR('dtype') };
      break;
    }
    default: {
      if (!s.cudaAvailable && rng.bool(0.3)) {
        args.options = { dtype, device: 'cuda' };
        m = { family: 'options.device: cuda unavailable', detail: "'cuda'", expect: { classes: ['TypeError', 'RangeError'], names: ['device'], cudaUnavailable: true } };
        break;
      }
      const b = rng.bool(0.8) ? badName(rng, ['cpu', 'cuda']) : { v: notAString(rng), family: 'not a string' };
      args.options = { dtype, device: b.v };
      m = { family: `options.device: ${b.family}`, detail: describe(b.v), expect: TR('device') };
    }
  }
  if (ArrayBuffer.isView(args.data) || Array.isArray(args.data)) s.arr(args.data);
  return { fn: 'tensor', ...m, sync: true, call: () => tensor(args.data as never, args.shape as never, args.options as never) };
}

function genZeros(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const dtype = rng.pick(DTYPES), shape = randShape(rng), device = rng.pick(devices(s));
  const args: { shape: unknown; options: unknown } = { shape, options: { dtype, device } };
  if (valid) {
    return {
      fn: 'zeros', family: 'valid', detail: `${dtype} [${shape}] on ${device}`, expect: OK, sync: true,
      call: () => zeros(args.shape as never, args.options as never),
      check: async (t: Tensor) => checkMeta(t, dtype, shape, device) ?? ((await contents(t)).some((x) => !Object.is(x, 0)) ? 'not all zeros' : disposeProtocol(t)),
    };
  }
  let m: { family: string; detail: string; expect: Expect };
  switch (rng.int(0, 5)) {
    case 0: {
      const v = rng.pick<unknown>([null, undefined, 5, '2', { length: 1, 0: 2 }, Symbol('s'), new Int8Array([2])]);
      if (v instanceof Int8Array) { args.shape = v; m = { family: 'shape: not an array', detail: describe(v), expect: T('shape') }; break; }
      args.shape = v; m = { family: 'shape: not an array', detail: describe(v), expect: T('shape') };
      break;
    }
    case 1: {
      const v = rng.pick<unknown>([-1, 1.5, NaN, Infinity, '2', null, 2 ** 53, 1n, -(2 ** 40)]);
      const sh: unknown[] = shape.length ? shape.slice() : [1];
      sh[rng.int(0, sh.length - 1)] = v;
      args.shape = sh; m = { family: 'shape: bad dimension', detail: describe(sh), expect: TR('shape') };
      break;
    }
    case 2: {
      const sh = rng.pick([[2 ** 24, 2 ** 24], [2 ** 20, 2 ** 20, 16], [2 ** 30, 2 ** 30], [Number.MAX_SAFE_INTEGER], [2 ** 26, 2 ** 26, 2 ** 26], [2 ** 44]]);
      args.shape = sh; m = { family: 'shape: absurd size (>= 2**46 bytes)', detail: `[${sh.map((x) => describe(x)).join(', ')}] ${dtype}`, expect: R('shape') };
      break;
    }
    case 3: {
      const v = rng.pick<unknown>([null, 5, 'x', true, Symbol('o')]);
      args.options = v; m = { family: 'options: not an object', detail: describe(v), expect: T('options') };
      break;
    }
    case 4: {
      const b = rng.bool(0.8) ? badName(rng, DTYPES) : { v: notAString(rng), family: 'not a string' };
      args.options = { dtype: b.v, device }; m = { family: `options.dtype: ${b.family}`, detail: describe(b.v), expect: TR('dtype') };
      break;
    }
    default: {
      if (!s.cudaAvailable && rng.bool(0.3)) {
        args.options = { dtype, device: 'cuda' };
        m = { family: 'options.device: cuda unavailable', detail: "'cuda'", expect: { names: ['device'], cudaUnavailable: true } };
        break;
      }
      const b = rng.bool(0.8) ? badName(rng, ['cpu', 'cuda']) : { v: notAString(rng), family: 'not a string' };
      args.options = { dtype, device: b.v }; m = { family: `options.device: ${b.family}`, detail: describe(b.v), expect: TR('device') };
    }
  }
  return { fn: 'zeros', ...m, sync: true, call: () => zeros(args.shape as never, args.options as never) };
}

function genMethod(rng: Rng, s: Scope, valid: boolean): CaseSpec {
  const dtype = rng.pick(DTYPES), shape = randShape(rng), n = prod(shape);
  const values = randValues(rng, n, dtype);
  const t = s.t(values, shape, { dtype });
  const want = expected(values, dtype, false);
  const method = rng.pick(['data', 'float32', 'to', 'to', 'dispose', 'backends']);
  if (method === 'backends') {
    return {
      fn: 'backends', family: 'valid', expect: OK, sync: true, call: () => backends(),
      check: (b: ReturnType<typeof backends>) => {
        if (!(b.cpu.threads >= 1) || typeof b.cuda.available !== 'boolean' || !Array.isArray(b.cuda.devices)) return `malformed ${JSON.stringify(b)}`;
        if (!b.cuda.available && typeof b.cuda.reason !== 'string') return 'cuda unavailable without a reason';
        return undefined;
      },
    };
  }
  if (method === 'dispose') {
    return {
      fn: 'Tensor.dispose', family: 'valid: twice, then Symbol.dispose', expect: OK, sync: true, noInputCheck: true,
      call: () => { t.dispose(); t.dispose(); t[Symbol.dispose](); return t.disposed; },
      check: (d: boolean) => (d ? undefined : 'not disposed'),
    };
  }
  if (method === 'data' || (method === 'float32' && valid && dtype === 'int32')) {
    if (valid) return {
      fn: 'Tensor.data', family: 'valid', detail: `${dtype} [${shape}]`, expect: OK, call: () => t.data(),
      check: async (d: ArrayLike<number>) => {
        const Want = dtype === 'float32' ? Float32Array : dtype === 'int32' ? Int32Array : Uint16Array;
        if (!(d instanceof Want) || d.length !== n) return `got ${describe(d)}, expected a ${Want.name} of ${n}`;
        const got = await contents(t);
        return got.every((x, i) => sameFloat(x, want[i])) ? undefined : 'contents differ from the input';
      },
    };
    t.dispose();
    return { fn: 'Tensor.data', family: 'disposed tensor', expect: DISPOSED, call: () => t.data() };
  }
  if (method === 'float32') {
    if (valid) return {
      fn: 'Tensor.float32', family: 'valid', detail: `${dtype} [${shape}]`, expect: OK, call: () => t.float32(),
      check: (d: Float32Array) => (d instanceof Float32Array && d.length === n && Array.from(d).every((x, i) => sameFloat(x, want[i])) ? undefined : `got ${describe(d)}`),
    };
    if (dtype === 'int32') return { fn: 'Tensor.float32', family: 'int32 tensor', expect: TR('float32', 'dtype'), call: () => t.float32() };
    t.dispose();
    return { fn: 'Tensor.float32', family: 'disposed tensor', expect: DISPOSED, call: () => t.float32() };
  }
  // to(device)
  if (valid) {
    const target = rng.pick(devices(s));
    return {
      fn: 'Tensor.to', family: 'valid', detail: `${t.device} -> ${target}`, expect: OK, call: () => t.to(target),
      check: async (u: Tensor) => {
        if (u === t) return 'returned the same tensor';
        const m = checkMeta(u, dtype, shape, target);
        if (m) return m;
        const got = await contents(u);
        return got.every((x, i) => sameFloat(x, want[i])) ? undefined : 'copy differs from the source';
      },
    };
  }
  const r = rng.next();
  if (r < 0.15) { t.dispose(); return { fn: 'Tensor.to', family: 'disposed tensor', expect: DISPOSED, call: () => t.to(s.device) }; }
  if (r < 0.25 && !s.cudaAvailable) return { fn: 'Tensor.to', family: 'cuda unavailable', detail: "'cuda'", expect: { names: ['device'], cudaUnavailable: true }, call: () => t.to('cuda') };
  const b = rng.bool(0.7) ? badName(rng, ['cpu', 'cuda']) : { v: rng.pick<unknown>([undefined, null, 5, {}, true, Symbol('d'), ['cpu']]), family: 'not a string' };
  return { fn: 'Tensor.to', family: `device: ${b.family}`, detail: describe(b.v), expect: TR('device'), call: () => t.to(b.v as never) };
}

export async function genTensorGroup(rng: Rng, s: Scope): Promise<CaseSpec> {
  const valid = rng.bool(0.25);
  const r = rng.next();
  if (r < 0.5) return genTensorCall(rng, s, valid);
  if (r < 0.7) return genZeros(rng, s, valid);
  return genMethod(rng, s, valid);
}

