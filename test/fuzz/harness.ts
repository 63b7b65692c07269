// Fuzz harness (issue #8): one case = build inputs, log the case, make one call, judge it against
// SPEC §6 (error class, message naming the argument, no synchronous throw from an async API), then
// check that nothing else changed: inputs (typed arrays and tensor contents), a memory bank's state,
// a folder's listing, and no native storage created by the case left allocated.
//
// Cases are generated from a per-case seed (seed, group, case index), so any case can be replayed
// alone: LIFELONG_FUZZ_SEED=s LIFELONG_FUZZ_GROUP=g LIFELONG_FUZZ_DEVICE=d LIFELONG_FUZZ_CASE=i.
import * as fs from 'fs';
import { native, NativeStorage } from '../../lib/native';
import { MemoryBank, Tensor, tensor, zeros } from '../../lib/index';
import type { DType, Device } from '../../lib/index';
import { Rng } from '../helpers';

export type Cls = 'TypeError' | 'RangeError';

/** What a case must do. Exactly one of ok / reject semantics applies. */
export interface Expect {
  /** A valid call: must succeed (and pass `check`). */
  ok?: boolean;
  /** Either outcome is fine (forged inputs that are still in bounds); errors must still be TypeError / RangeError. */
  any?: boolean;
  /** Allowed error classes (default: TypeError or RangeError). */
  classes?: Cls[];
  /** The message must name one of these (argument names or option paths). */
  names?: string[];
  /** A disposed tensor / bank: an Error whose message says so. */
  disposed?: 'tensor' | 'memory bank';
  /** CUDA requested where it is unavailable: a plain Error naming the device is fine too. */
  cudaUnavailable?: boolean;
  /** I/O or file-format failure: any Error is fine (it must reject, though). */
  io?: boolean;
  /** Do not check that the message names the argument (forged tensors). */
  noName?: boolean;
}

export const T = (...names: string[]): Expect => ({ classes: ['TypeError'], names });
export const R = (...names: string[]): Expect => ({ classes: ['RangeError'], names });
export const TR = (...names: string[]): Expect => ({ classes: ['TypeError', 'RangeError'], names });
export const OK: Expect = { ok: true };
export const DISPOSED: Expect = { disposed: 'tensor' };
export const BANK_DISPOSED: Expect = { disposed: 'memory bank' };

/** One mutation applied to an otherwise valid call. */
export interface Mut { family: string; detail?: string; expect: Expect }

export interface CaseSpec {
  fn: string;
  family: string;
  detail?: string;
  expect: Expect;
  /** The API may throw synchronously (tensor(), new MemoryBank, lengths(), reference.*). */
  sync?: boolean;
  call: () => unknown;
  /** Runs synchronously right after `call` returned: a caller reusing its arrays / disposing inputs. */
  post?: () => void;
  /** For a successful call: '' / undefined when right, else what is wrong. */
  check?: (value: any) => Promise<string | undefined> | string | undefined;
  /** A bank whose state must be bit-identical after a rejected call. */
  bank?: MemoryBank;
  /** A plain-JS state (reference bank) that must be unchanged after a rejected call. */
  plainState?: () => string;
  /** A folder whose listing must be unchanged after a rejected call. */
  folder?: string;
  /** Skip the inputs-unchanged check (the case mutates them on purpose in `post`). */
  noInputCheck?: boolean;
}

// ------------------------------------------------------------------------------------------------
// Native storages created during a case: every one must be disposed when the case ends.

export class StorageTracker {
  private current: Set<NativeStorage> | undefined;
  install(): void {
    const addon = native() as unknown as { Storage: new (...a: unknown[]) => NativeStorage };
    const Orig = addon.Storage;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    addon.Storage = new Proxy(Orig, {
      construct(target, args) {
        const s = Reflect.construct(target, args) as NativeStorage;
        self.current?.add(s);
        return s;
      },
    });
    // Storage.copyTo creates storages natively (its method is read-only): track Tensor.to's results.
    // (Not an async wrapper: a synchronous throw from to() must stay visible to the oracle.)
    const to = Tensor.prototype.to;
    Tensor.prototype.to = function (this: Tensor, device: Device) {
      const track = self.current;
      const p = to.call(this, device);
      return !isThenable(p) ? p : p.then((t) => {
        if (t instanceof Tensor && !t.disposed) track?.add(t.storage());
        return t;
      });
    };
  }
  begin(): void { this.current = new Set(); }
  /** Storages created since begin() and still allocated; the tracker forgets them. */
  /** Whether storages made by tensor() / zeros() are seen (the leak check is void otherwise). */
  selfTest(): boolean {
    this.begin();
    zeros([3]).dispose();
    const x = zeros([2]);
    const seen = this.current?.size === 2 && this.end().length === 1;
    x.dispose();
    return seen;
  }
  end(): NativeStorage[] {
    const live = [...(this.current ?? [])].filter((s) => !s.disposed);
    this.current = undefined;
    return live;
  }
}

// ------------------------------------------------------------------------------------------------
// Inputs of a case: created through the scope so they are hashed, and disposed when the case ends.

export class Scope {
  readonly tensors: Tensor[] = [];
  readonly watched: Tensor[] = [];
  readonly arrays: unknown[] = [];
  readonly banks: MemoryBank[] = [];
  constructor(readonly rng: Rng, readonly device: Device, readonly other: Device | undefined, readonly cudaAvailable: boolean, readonly tmp: string) {}

  /** A live input tensor (contents hashed before and after the call). */
  t(data: ArrayLike<number>, shape: number[], opts: { dtype?: DType; device?: Device } = {}): Tensor {
    const x = tensor(data, shape, { device: this.device, ...opts });
    this.tensors.push(x);
    this.watched.push(x);
    return x;
  }
  /** Random float values. */
  rand(shape: number[], opts: { dtype?: DType; device?: Device } = {}, amp = 1): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    return this.t(this.rng.floats(n, amp), shape, opts);
  }
  z(shape: number[], opts: { dtype?: DType; device?: Device } = {}): Tensor {
    const x = zeros(shape, { device: this.device, ...opts });
    this.tensors.push(x);
    this.watched.push(x);
    return x;
  }
  disposed(shape: number[], opts: { dtype?: DType; device?: Device } = {}): Tensor {
    const x = zeros(shape, { device: this.device, ...opts });
    x.dispose();
    return x;
  }
  /** A Tensor (the exported class, constructed directly) whose shape / dtype / device lie about its storage. */
  forged(realShape: number[], claimShape: number[], opts: { dtype?: DType; claimDtype?: DType; device?: Device; claimDevice?: Device } = {}): Tensor {
    const real = zeros(realShape, { device: opts.device ?? this.device, dtype: opts.dtype ?? 'float32' });
    const x = new Tensor(real.storage(), opts.claimDtype ?? real.dtype, claimShape, opts.claimDevice ?? real.device);
    this.tensors.push(real);
    return x;
  }
  /** A small input array: hashed before and after the call. */
  arr<A>(a: A): A { this.arrays.push(a); return a; }
  bank(options: ConstructorParameters<typeof MemoryBank>[0]): MemoryBank {
    const b = new MemoryBank(options);
    this.banks.push(b);
    return b;
  }
  disposeAll(): void {
    for (const x of this.tensors) x.dispose();
    for (const b of this.banks) b.dispose();
  }
}

// ------------------------------------------------------------------------------------------------
// Hashing (inputs never mutated) and describing values.

function fnv(bytes: Uint8Array, h = 0x811c9dc5): number {
  for (let i = 0; i < bytes.length; i++) { h ^= bytes[i]; h = Math.imul(h, 0x01000193); }
  return h >>> 0;
}

export function hashValue(v: unknown, depth = 0): string {
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}#${v.byteLength}:${fnv(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).toString(16)}`;
  if (Array.isArray(v)) return depth > 3 ? 'array' : `[${v.map((x) => hashValue(x, depth + 1)).join(',')}]`;
  if (typeof v === 'symbol' || typeof v === 'bigint' || typeof v === 'number') return `${typeof v}:${String(v)}`;
  if (v !== null && typeof v === 'object') {
    if (depth > 3 || v instanceof Tensor) return 'object';
    return `{${Object.keys(v).map((k) => `${k}=${hashValue((v as Record<string, unknown>)[k], depth + 1)}`).join(',')}}`;
  }
  return `${typeof v}:${String(v)}`;
}

export function describe(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (v === null) return 'null';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') {
    if (Object.is(v, -0)) return '-0';
    const e = Math.round(Math.log2(Math.abs(v)));
    if (Number.isInteger(v) && Math.abs(v) >= 2 ** 20 && 2 ** e === Math.abs(v)) return `${v < 0 ? '-' : ''}2**${e}`;
    if (Number.isInteger(v) && Math.abs(v) >= 2 ** 20 && 2 ** e - 1 === Math.abs(v)) return `${v < 0 ? '-' : ''}(2**${e} - 1)`;
    return String(v);
  }
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'boolean') return String(v);
  if (typeof v === 'symbol') return v.toString();
  if (typeof v === 'function') return 'a function';
  if (v instanceof Tensor) return v.disposed ? `disposed ${v.toString()}` : v.toString();
  if (Buffer.isBuffer(v)) return `Buffer(${v.length})`;
  if (ArrayBuffer.isView(v)) {
    const a = v as unknown as ArrayLike<number | bigint>;
    const items = Array.from({ length: Math.min(a.length ?? 0, 8) }, (_, i) => String(a[i]));
    return `${v.constructor.name}[${items.join(',')}${(a.length ?? 0) > 8 ? ',…' : ''}]`;
  }
  if (Array.isArray(v)) return `[${v.slice(0, 8).map(describe).join(', ')}${v.length > 8 ? ', …' : ''}]`;
  try {
    const keys = Object.keys(v as object);
    return `{${keys.slice(0, 6).map((k) => `${k}: ${describe((v as Record<string, unknown>)[k])}`).join(', ')}}`;
  } catch { return String(v); }
}

export function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message}`.slice(0, 400);
  return `non-Error thrown: ${describe(e)}`;
}

/** Whether `msg` names `name` as a whole token (an option path may be followed by '.', ':', '[', …). */
export function names(msg: string, name: string): boolean {
  let at = msg.indexOf(name);
  while (at >= 0) {
    const before = at === 0 ? '' : msg[at - 1];
    const after = msg[at + name.length] ?? '';
    if (!/[A-Za-z0-9_$]/.test(before) && !/[A-Za-z0-9_$]/.test(after)) return true;
    at = msg.indexOf(name, at + 1);
  }
  return false;
}

/** Judges a thrown / rejected value against a reject expectation; returns [kind, expected] or undefined when right. */
export function judgeError(e: unknown, ex: Expect): [string, string] | undefined {
  const msg = e instanceof Error ? e.message : '';
  if (ex.disposed) {
    const want = `${ex.disposed} is disposed`;
    if (e instanceof Error && msg.includes(want)) return undefined;
    return ['wrong-error', `Error('${want}')`];
  }
  if (ex.io) return e instanceof Error ? undefined : ['wrong-error', 'an Error'];
  const classes = ex.classes ?? ['TypeError', 'RangeError'];
  const cls = e instanceof RangeError ? 'RangeError' : e instanceof TypeError ? 'TypeError' : e instanceof Error ? 'Error' : 'non-Error';
  const nameList = ex.names ?? [];
  const namesIt = nameList.length === 0 || nameList.some((n) => names(msg, n));
  if (cls === 'Error' && ex.cudaUnavailable && /cuda/i.test(msg) && (names(msg, 'device') || namesIt)) return undefined;
  const want = `${classes.join(' or ')}${ex.noName || nameList.length === 0 ? '' : ` naming ${nameList.map((n) => `'${n}'`).join(' or ')}`}`;
  if (!(classes as string[]).includes(cls)) return ['wrong-class', want];
  if (!ex.noName && !namesIt) return ['unnamed', want];
  return undefined;
}

// ------------------------------------------------------------------------------------------------
// Bank snapshots (bit-identical state).

export async function bankSnapshot(bank: MemoryBank): Promise<string> {
  if (bank.disposed) return 'disposed';
  const ids = Int32Array.from({ length: bank.users }, (_, i) => i);
  const lengths = Array.from(bank.lengths()).join(',');
  const r = await bank.read(ids);
  try {
    const raw = await r.tokens.data();
    const bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('hex');
    return `lengths ${lengths} | offsets ${Array.from(r.offsets).join(',')} | ${bytes}`;
  } finally {
    r.tokens.dispose();
  }
}

/** Every Tensor reachable in a result (to dispose outputs of calls that resolved). */
export function tensorsIn(v: unknown, out: Tensor[] = [], depth = 0): Tensor[] {
  if (v instanceof Tensor) out.push(v);
  else if (v !== null && typeof v === 'object' && depth < 3 && !ArrayBuffer.isView(v))
    for (const k of Object.keys(v)) tensorsIn((v as Record<string, unknown>)[k], out, depth + 1);
  return out;
}

export function isThenable(v: unknown): v is Promise<unknown> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as { then?: unknown }).then === 'function';
}

export function writeLine(fd: number | undefined, line: string): void {
  if (fd !== undefined) fs.writeSync(fd, line + '\n');
}
