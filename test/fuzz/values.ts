// Families of bad values, and small valid jagged layouts to mutate.
import { Rng } from '../helpers';
import type { Cls } from './harness';

/** Names every name-valued option must refuse (SPEC §6: own names only). */
export const PROTO_NAMES = ['toString', 'constructor', '__proto__', 'hasOwnProperty', 'valueOf', 'isPrototypeOf',
  'propertyIsEnumerable', 'toLocaleString', '__defineGetter__', '__lookupGetter__'];

/** A name that is not in `valid`: a prototype name most of the time, else a near miss. */
export function badName(rng: Rng, valid: readonly string[]): { v: string; family: string } {
  if (rng.bool(0.65)) return { v: rng.pick(PROTO_NAMES), family: 'prototype name' };
  const base = rng.pick(valid);
  const v = rng.pick(['', ' ', base.toUpperCase(), base + ' ', ' ' + base, base + 's', base.slice(1), 'undefined', 'null', '0', 'x']);
  return valid.includes(v) ? { v: 'xx', family: 'unknown name' } : { v, family: 'unknown name' };
}

/** A value that is not a string (for a name-valued option). */
export function notAString(rng: Rng): unknown {
  return rng.pick<() => unknown>([() => 5, () => true, () => ({}), () => [], () => 1n, () => Symbol('s'), () => () => 0, () => ['causal']])();
}

/** Not an object (for an options / layout argument that is required to be an object). */
export function notAnObject(rng: Rng): unknown {
  return rng.pick<() => unknown>([() => null, () => 5, () => 'x', () => true, () => 1n, () => Symbol('s')])();
}

/** Not a Tensor. */
export function notATensor(rng: Rng): unknown {
  return rng.pick<() => unknown>([
    () => null, () => undefined, () => 5, () => 'tensor', () => [1, 2, 3], () => ({}),
    () => ({ dtype: 'float32', shape: [1, 1, 8], device: 'cpu', size: 8 }),
    () => new Float32Array(8), () => Buffer.alloc(8), () => () => 0, () => Symbol('t'), () => 1n, () => true,
  ])();
}

/** Not an Int32Array (length n when it is an array of some kind). */
export function notInt32Array(rng: Rng, n: number, valid?: ArrayLike<number>): unknown {
  const fill = <A extends { [i: number]: number | bigint }>(a: A): A => { for (let i = 0; i < n; i++) a[i] = (valid ? valid[i] : 0) as never; return a; };
  return rng.pick<() => unknown>([
    () => null, () => 5, () => 'x', () => true, () => ({}), () => Symbol('a'),
    () => Array.from({ length: n }, (_, i) => (valid ? valid[i] : 0)),
    () => fill(new Uint32Array(n)), () => fill(new Float32Array(n)), () => fill(new Float64Array(n)),
    () => fill(new Int16Array(n)), () => fill(new Uint8Array(n)), () => fill(new Int8Array(n)),
    () => { const a = new BigInt64Array(n); for (let i = 0; i < n; i++) a[i] = BigInt(valid ? valid[i] : 0); return a; },
    () => Buffer.alloc(4 * n), () => ({ length: n }), () => new DataView(new ArrayBuffer(4 * n)), () => new ArrayBuffer(4 * n),
  ])();
}

/** Not a Uint8Array (Buffer is one, so it is not used here). */
export function notUint8Array(rng: Rng, n: number, valid?: ArrayLike<number>): unknown {
  const fill = <A extends { [i: number]: number }>(a: A): A => { for (let i = 0; i < n; i++) a[i] = valid ? valid[i] : 0; return a; };
  return rng.pick<() => unknown>([
    () => null, () => 5, () => 'x', () => ({}),
    () => Array.from({ length: n }, (_, i) => (valid ? valid[i] : 0)),
    () => fill(new Int8Array(n)), () => fill(new Uint8ClampedArray(n)), () => fill(new Int32Array(n)), () => fill(new Uint16Array(n)),
    () => new DataView(new ArrayBuffer(n)),
  ])();
}

/** A bad integer count / size; `classes` says which error classes are right for it. */
export function badInteger(rng: Rng, opts: { min: number; huge?: boolean }): { v: unknown; classes: Cls[]; family: string } {
  const r = rng.next();
  if (r < 0.35) return { v: rng.pick<() => unknown>([() => '3', () => null, () => true, () => 1n, () => ({}), () => [], () => Symbol('n'), () => () => 1])(), classes: ['TypeError'], family: 'not a number' };
  if (r < 0.65) return { v: rng.pick([2.5, 0.5, NaN, Infinity, -Infinity, 1e-300]), classes: ['TypeError', 'RangeError'], family: 'not an integer' };
  if (r < 0.85 || !opts.huge) return { v: rng.pick([opts.min - 1, opts.min - 2, -1, -(2 ** 31), -(2 ** 53)].filter((x) => x < opts.min)), classes: ['RangeError'], family: 'below the minimum' };
  return { v: rng.pick([2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53, 2 ** 60]), classes: ['RangeError'], family: 'huge' };
}

export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (ArrayBuffer.isView(v)) return v.constructor.name;
  return typeof v;
}

// ------------------------------------------------------------------------------------------------
// Layouts.

export interface Lay { offsets: Int32Array; segments: Int32Array; roles: Uint8Array; lengths: number[]; T: number; B: number }

export function randLayout(rng: Rng, B: number, maxLen: number, minLen = 0): Lay {
  const lengths = Array.from({ length: B }, () => rng.int(minLen, maxLen));
  const offsets = new Int32Array(B + 1);
  lengths.forEach((l, i) => { offsets[i + 1] = offsets[i] + l; });
  const T = offsets[B];
  const segments = new Int32Array(T), roles = new Uint8Array(T);
  for (let b = 0; b < B; b++) {
    let seg = rng.int(0, 1);
    for (let t = offsets[b]; t < offsets[b + 1]; t++) {
      if (rng.bool(0.3)) seg += 1;
      segments[t] = seg;
      roles[t] = rng.pick([0, 0, 1, 2]);
    }
  }
  return { offsets, segments, roles, lengths, T, B };
}

/** The same values as a view into a larger buffer (byteOffset > 0, garbage around): still valid. */
export function asView<A extends Int32Array | Uint8Array>(rng: Rng, a: A): A {
  const Ctor = a.constructor as new (n: number) => A;
  const big = new Ctor(a.length + 5);
  for (let i = 0; i < big.length; i++) (big as unknown as number[])[i] = rng.int(0, 2 ** 30) | 0;
  const at = rng.int(1, 3);
  (big as unknown as { set(x: A, at: number): void }).set(a, at);
  return (big as unknown as { subarray(s: number, e: number): A }).subarray(at, at + a.length);
}

/** Offsets mutated into bad values (all RangeErrors): [offsets, family]. */
export function badOffsets(rng: Rng, offsets: Int32Array, rows: number): [Int32Array, string] {
  const o = Int32Array.from(offsets);
  const B = o.length - 1;
  const kind = rng.int(0, 6);
  switch (kind) {
    case 0: return [new Int32Array(0), 'empty'];
    case 1: o[0] = rng.pick([1, -1, 2 ** 31 - 1, -(2 ** 31)]); return [o, 'not starting at 0'];
    case 2: o[B] = rng.pick([rows + 1, rows - 1 >= 0 ? rows - 1 : rows + 2, 2 ** 31 - 1, -1, rows + 1000]); if (o[B] === rows) o[B] = rows + 1; return [o, 'last != rows'];
    case 3: {
      if (B < 2) { const p = new Int32Array([0, rows + 1, rows]); return [p, 'decreasing']; }
      const i = rng.int(1, B - 1);
      o[i] = rng.pick([-1, -(2 ** 31), rows + 1, 2 ** 31 - 1]);
      if (o[i] >= o[i - 1] && o[i] <= o[i + 1]) o[i] = rows + 1;
      return [o, 'decreasing'];
    }
    case 4: { const p = new Int32Array([0, 2 ** 31 - 1, rows]); return [p, 'decreasing']; }
    case 5: { const p = new Int32Array(B + 2); p.set(o); p[B + 1] = rows - 1; return [p, 'decreasing']; }
    default: { const p = new Int32Array([0]); if (rows === 0) return [new Int32Array([1]), 'not starting at 0']; return [p, 'last != rows']; }
  }
}

/** Offsets with the right ends but another batch size (B' != B), still a valid layout on its own. */
export function otherBatch(rng: Rng, offsets: Int32Array, rows: number): Int32Array {
  const B = offsets.length - 1;
  const nb = rng.pick([B + 1, B + 2, Math.max(1, B - 1) === B ? B + 1 : Math.max(1, B - 1)]);
  const o = new Int32Array(nb + 1);
  for (let i = 1; i < nb; i++) o[i] = Math.min(rows, Math.floor((rows * i) / nb));
  o[nb] = rows;
  return o;
}
