// Mutations shared by the op groups: tensor arguments, jagged layouts, numbers, names.
import { Tensor } from '../../lib/index';
import type { DType } from '../../lib/index';
import { Rng } from '../helpers';
import { describe, DISPOSED, Mut, R, Scope, T, TR } from './harness';
import { badInteger, badName, badOffsets, notAnObject, notAString, notATensor, notInt32Array, notUint8Array, otherBatch } from './values';

export const FLOAT_DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];

/** Every typed array / plain array inside `v` (to hash as inputs). */
export function collectArrays(v: unknown, out: unknown[] = [], depth = 0): unknown[] {
  if (ArrayBuffer.isView(v)) out.push(v);
  else if (Array.isArray(v)) { if (v.every((x) => typeof x === 'number')) out.push(v); }
  else if (v !== null && typeof v === 'object' && !(v instanceof Tensor) && depth < 4)
    for (const k of Object.keys(v)) collectArrays((v as Record<string, unknown>)[k], out, depth + 1);
  return out;
}

export interface SlotSpec {
  /** Argument name or option path the message must name. */
  name: string;
  shape: number[];
  dtype: DType;
  /** dtypes the slot accepts; a wrong one is picked outside them. */
  allowed: DType[];
  /** Other names a message may use for a device / dtype mismatch (the tensor it is compared with). */
  peers?: string[];
  /** Whether the slot must match a peer's dtype (a float dtype other than `dtype` is then wrong). */
  matchDtype?: boolean;
  /** Device the slot must be on (default the scope's). */
  device?: string;
}

/** Replaces a tensor argument by a bad one. */
export function mutateTensor(rng: Rng, s: Scope, spec: SlotSpec, set: (v: unknown) => void): Mut {
  const names = [spec.name, ...(spec.peers ?? [])];
  const kinds = ['not a Tensor', 'disposed', 'wrong dtype', 'wrong rank', 'forged'];
  // Another device is only wrong where the tensor must sit with peers or on a bank's device (topK's scores may be anywhere).
  if (s.other && ((spec.peers?.length ?? 0) > 0 || spec.device)) kinds.push('other device');
  if (spec.matchDtype) kinds.push('dtype differs');
  const kind = rng.pick(kinds);
  switch (kind) {
    case 'not a Tensor': {
      const v = notATensor(rng);
      set(v);
      return { family: `${spec.name}: not a Tensor`, detail: describe(v), expect: T(spec.name) };
    }
    case 'disposed':
      set(s.disposed(spec.shape, { dtype: spec.dtype }));
      return { family: `${spec.name}: disposed tensor`, expect: DISPOSED };
    case 'wrong dtype': {
      const bad = (['int32', 'float16', 'float32', 'bfloat16'] as DType[]).filter((d) => !spec.allowed.includes(d));
      const d = rng.pick(bad);
      set(s.z(spec.shape, { dtype: d }));
      return { family: `${spec.name}: dtype ${d}`, expect: T(spec.name) };
    }
    case 'dtype differs': {
      const d = rng.pick(FLOAT_DTYPES.filter((x) => x !== spec.dtype));
      set(s.z(spec.shape, { dtype: d }));
      return { family: `${spec.name}: dtype differs from its peers`, detail: `${d} vs ${spec.dtype}`, expect: T(...names) };
    }
    case 'wrong rank': {
      const sh = rng.bool() && spec.shape.length > 1 ? spec.shape.slice(1) : [...spec.shape, 1];
      if (rng.bool(0.2)) { set(s.z([], { dtype: spec.dtype })); return { family: `${spec.name}: wrong rank`, detail: 'rank 0', expect: R(spec.name) }; }
      set(s.z(sh, { dtype: spec.dtype }));
      return { family: `${spec.name}: wrong rank`, detail: `[${sh}]`, expect: R(spec.name) };
    }
    case 'other device':
      set(s.z(spec.shape, { dtype: spec.dtype, device: s.other }));
      return { family: `${spec.name}: on the other device`, detail: s.other, expect: TR(...names) };
    default: {
      // The exported Tensor class constructed over a real storage, claiming more than it holds.
      const claim = spec.shape.slice();
      const which = rng.int(0, Math.max(0, claim.length - 1));
      claim[which] = Math.max(1, claim[which]) * rng.pick([2, 4, 1000, 2 ** 20]);
      for (let i = 0; i < claim.length; i++) if (claim[i] === 0) claim[i] = 1;
      set(s.forged(spec.shape, claim, { dtype: spec.dtype }));
      return { family: `${spec.name}: forged Tensor claiming more elements than its storage`, detail: `[${spec.shape}] claimed as [${claim}]`, expect: { classes: ['TypeError', 'RangeError'], noName: true } };
    }
  }
}

/** Bad offsets for a layout field (type or values). */
export function mutateOffsets(rng: Rng, path: string, offsets: Int32Array, rows: number, set: (v: unknown) => void): Mut {
  if (rng.bool(0.4)) {
    const v = rng.bool(0.15) ? undefined : notInt32Array(rng, offsets.length, offsets);
    set(v);
    return { family: `${path}: not an Int32Array`, detail: describe(v), expect: T(path) };
  }
  const [o, fam] = badOffsets(rng, offsets, rows);
  set(o);
  return { family: `${path}: ${fam}`, detail: describe(o), expect: R(path) };
}

/** Bad segments / roles for a layout (per-token arrays). */
export function mutateTokenArray(rng: Rng, path: string, kind: 'segments' | 'roles', lay: { offsets: Int32Array; T: number; segments: Int32Array; roles: Uint8Array }, set: (v: unknown) => void): Mut {
  const full = `${path}.${kind}`;
  const r = rng.next();
  if (r < 0.35) {
    const v = kind === 'segments' ? notInt32Array(rng, lay.T, lay.segments) : notUint8Array(rng, lay.T, lay.roles);
    set(v);
    return { family: `${full}: wrong type`, detail: describe(v), expect: T(full) };
  }
  if (r < 0.6) {
    const n = rng.pick([lay.T + 1, lay.T + 7, Math.max(0, lay.T - 1) === lay.T ? lay.T + 2 : lay.T - 1, 0 === lay.T ? 3 : 0]);
    const v = kind === 'segments' ? new Int32Array(n) : new Uint8Array(n);
    set(v);
    return { family: `${full}: wrong length`, detail: `${n} for ${lay.T} tokens`, expect: R(full) };
  }
  if (kind === 'roles') {
    const v = Uint8Array.from(lay.roles.length ? lay.roles : [0]);
    if (lay.T === 0) { set(new Uint8Array([3])); return { family: `${full}: wrong length`, detail: '1 for 0 tokens', expect: R(full) }; }
    const bad = rng.pick([3, 4, 7, 128, 255]);
    v[rng.int(0, v.length - 1)] = bad;
    set(v);
    return { family: `${full}: role > 2`, detail: String(bad), expect: R(full) };
  }
  // a decrease inside one sequence
  const seqs: number[] = [];
  for (let b = 0; b + 1 < lay.offsets.length; b++) if (lay.offsets[b + 1] - lay.offsets[b] >= 2) seqs.push(b);
  if (seqs.length === 0) {
    const n = lay.T + 1;
    set(new Int32Array(n));
    return { family: `${full}: wrong length`, detail: `${n} for ${lay.T} tokens`, expect: R(full) };
  }
  const b = rng.pick(seqs);
  const v = Int32Array.from(lay.segments);
  const t = rng.int(lay.offsets[b] + 1, lay.offsets[b + 1] - 1);
  v[t] = v[t - 1] - rng.pick([1, 2, 2 ** 31]);
  set(v);
  return { family: `${full}: decreasing inside a sequence`, detail: describe(v), expect: R(full) };
}

/** A whole layout object / its fields gone bad. */
export function mutateLayout(rng: Rng, path: string, lay: { offsets: Int32Array; T: number; segments: Int32Array; roles: Uint8Array }, obj: Record<string, unknown>, setObj: (v: unknown) => void, opts: { segments?: boolean; roles?: boolean } = { segments: true, roles: true }): Mut {
  const r = rng.next();
  if (r < 0.12) {
    const v = notAnObject(rng);
    setObj(v);
    return { family: `${path}: not an object`, detail: describe(v), expect: T(path) };
  }
  if (r < 0.55 || (!opts.segments && !opts.roles)) return mutateOffsets(rng, `${path}.offsets`, lay.offsets, lay.T, (v) => { obj.offsets = v; });
  const kind = opts.segments && (!opts.roles || rng.bool()) ? 'segments' : 'roles';
  return mutateTokenArray(rng, path, kind, lay, (v) => { obj[kind] = v; });
}

export function batchMismatch(rng: Rng, path: string, offsets: Int32Array, rows: number, set: (v: unknown) => void, names: string[]): Mut {
  const o = otherBatch(rng, offsets, rows);
  set(o);
  return { family: `${path}: batch differs`, detail: `${o.length - 1} vs ${offsets.length - 1} sequences`, expect: R(...names) };
}

/** Bad value for a required integer argument such as `k` / `topK`. */
export function mutateInteger(rng: Rng, path: string, min: number, set: (v: unknown) => void): Mut {
  if (rng.bool(0.1)) { set(undefined); return { family: `${path}: missing`, detail: 'undefined', expect: T(path) }; }
  const b = badInteger(rng, { min, huge: true });
  set(b.v);
  return { family: `${path}: ${b.family}`, detail: describe(b.v), expect: { classes: b.classes, names: [path] } };
}

/** Bad value for an optional finite number such as `scale`. */
export function mutateScale(rng: Rng, path: string, set: (v: unknown) => void): Mut {
  if (rng.bool(0.5)) {
    const v = rng.pick([NaN, Infinity, -Infinity]);
    set(v);
    return { family: `${path}: not finite`, detail: describe(v), expect: TR(path) };
  }
  const v = rng.pick<() => unknown>([() => '1', () => null, () => ({}), () => [], () => true, () => 1n, () => Symbol('scale'), () => [0.5], () => new Number(0.5)])();
  set(v);
  return { family: `${path}: not a number`, detail: describe(v), expect: T(path) };
}

/** Bad value for a name-valued option (a string out of `valid`, or not a string). */
export function mutateName(rng: Rng, path: string, valid: readonly string[], set: (v: unknown) => void): Mut {
  if (rng.bool(0.75)) {
    const b = badName(rng, valid);
    set(b.v);
    return { family: `${path}: ${b.family}`, detail: describe(b.v), expect: TR(path) };
  }
  const v = notAString(rng);
  set(v);
  return { family: `${path}: not a string`, detail: describe(v), expect: TR(path) };
}

