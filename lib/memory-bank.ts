// MemoryBank (SPEC §4): per-user Preference Memory (Rec2PM) or per-layer K/V memory (PerSRec) of
// `slots` tokens of `width` elements. Every op is planned here as one row gather / blend over the
// bank's native storage and runs as one kernel launch for the whole batch of users. Ops on one bank
// run in call order; every check happens before the kernel, so a rejected call changes nothing.
import { promises as fsp } from 'fs';
import * as path from 'path';
import { codes, native, NativeStorage } from './native';
import { ROLE, RoleName } from './rules';
import { DTYPE_CODE, DType, Device, Tensor, deviceCapacity, emptyTensor } from './tensor';
import { checkLayout, checkTensor, CheckedLayout, Layout } from './layout';
import { cudaDisabledReason } from './backends';
import { crc32 } from './crc32';

export type BankMode = 'overwrite' | 'append';
export type BankOverflow = 'error' | 'evict-oldest';

export interface MemoryBankOptions {
  users: number;
  slots: number;
  width: number;
  dtype?: Exclude<DType, 'int32'>;
  device?: Device;
  mode: BankMode;
  overflow?: BankOverflow;
}

export type RoleSelect = 'item' | 'memory' | 'target' | { role: 'item' | 'memory' | 'target'; last: number };

const BANK_DTYPES = ['float32', 'float16', 'bfloat16'] as const;

export function checkCount(v: unknown, name: string, min: number, max = 2 ** 31 - 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`${name}: expected an integer, got ${String(v)}`);
  if (v < min || v > max) throw new RangeError(`${name}: expected an integer in [${min}, ${max}], got ${v}`);
  return v;
}

/** The options a MemoryBank and a RedisMemoryStore share, checked (defaults filled in). */
export function checkMemoryOptions(options: { slots: unknown; width: unknown; dtype?: unknown; device?: unknown; mode: unknown; overflow?: unknown }):
  { slots: number; width: number; dtype: Exclude<DType, 'int32'>; device: Device; mode: BankMode; overflow: BankOverflow } {
  const slots = checkCount(options.slots, 'slots', 1);
  const width = checkCount(options.width, 'width', 1);
  const dtype = options.dtype ?? 'float32';
  if (typeof dtype !== 'string' || !(BANK_DTYPES as readonly string[]).includes(dtype)) throw new TypeError(`dtype: expected 'float32', 'float16' or 'bfloat16', got ${String(dtype)}`);
  const device = options.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`device: expected 'cpu' or 'cuda', got ${String(device)}`);
  if (device === 'cuda') {
    const reason = cudaDisabledReason();
    if (reason) throw new Error(`device: CUDA is not available: ${reason}`);
  }
  const mode = options.mode;
  if (mode !== 'overwrite' && mode !== 'append') throw new TypeError(`mode: expected 'overwrite' or 'append', got ${String(mode)}`);
  const overflow = options.overflow ?? 'error';
  if (overflow !== 'error' && overflow !== 'evict-oldest') throw new TypeError(`overflow: expected 'error' or 'evict-oldest', got ${String(overflow)}`);
  return { slots, width, dtype: dtype as Exclude<DType, 'int32'>, device, mode, overflow };
}

/** Rows of `owner`'s dtype, device and width (`ownerName`: 'bank', 'store'). */
export function checkRows(t: unknown, name: string, owner: { dtype: DType; device: Device; width: number }, ownerName: string): Tensor {
  const x = checkTensor(t, name, 2, ['float32', 'float16', 'bfloat16']);
  if (x.dtype !== owner.dtype) throw new TypeError(`${name}: dtype ${x.dtype} differs from the ${ownerName}'s ${owner.dtype}`);
  if (x.device !== owner.device) throw new TypeError(`${name}: on ${x.device} but the ${ownerName} is on ${owner.device}`);
  if (x.shape[1] !== owner.width) throw new RangeError(`${name}: width ${x.shape[1]} differs from the ${ownerName}'s ${owner.width}`);
  return x;
}

/** The update options `{ blend? }`, checked at the call (`blendable`: the memory's mode is 'overwrite'). */
export function checkBlendOption(options: unknown, blendable: boolean, ownerName: string): number | undefined {
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { blend? }');
  const blend = (options as { blend?: unknown }).blend;
  if (blend === undefined) return undefined;
  if (typeof blend !== 'number') throw new TypeError('options.blend: expected a number');
  if (!(blend > 0 && blend <= 1)) throw new RangeError(`options.blend: expected a number in (0, 1], got ${blend}`);
  if (!blendable) throw new RangeError(`options.blend: only a mode 'overwrite' ${ownerName} blends`);
  return blend;
}

/**
 * updateFrom's row choice: per sequence of `lay`, the rows whose role is `select` (or only the
 * last n of them with `{ role, last: n }`), and how many that is.
 */
export function selectRows(lay: CheckedLayout, select: unknown): { rows: number[][]; counts: Int32Array } {
  let role: number, last = Infinity;
  const roleOf = (name: unknown) => (typeof name === 'string' && Object.hasOwn(ROLE, name) ? ROLE[name as RoleName] : -1);
  if (typeof select === 'string') {
    role = roleOf(select);
    if (role < 0) throw new TypeError(`select: unknown role '${select}', expected 'item', 'memory' or 'target'`);
  } else if (select !== null && typeof select === 'object') {
    const s = select as { role?: unknown; last?: unknown };
    role = roleOf(s.role);
    if (role < 0) throw new TypeError(`select.role: unknown role '${String(s.role)}', expected 'item', 'memory' or 'target'`);
    last = checkCount(s.last, 'select.last', 1);
  } else throw new TypeError(`select: expected 'item', 'memory', 'target' or { role, last }`);
  const rows: number[][] = [];
  const counts = new Int32Array(lay.batch);
  for (let b = 0; b < lay.batch; b++) {
    const picked: number[] = [];
    for (let t = lay.offsets[b]; t < lay.offsets[b + 1]; t++) if ((lay.roles ? lay.roles[t] : 0) === role) picked.push(t);
    rows.push(picked.length > last ? picked.slice(picked.length - last) : picked);
    counts[b] = rows[b].length;
  }
  return { rows, counts };
}

/** One gather call: row i writes dst[dstRow[i]] from sources[srcSel[i]][srcRow[i]]. */
class GatherPlan {
  srcSel: number[] = [];
  srcRow: number[] = [];
  dstRow: number[] = [];
  alpha: number[] = [];
  blended = false;
  add(sel: number, src: number, dst: number, alpha = 1) {
    this.srcSel.push(sel);
    this.srcRow.push(src);
    this.dstRow.push(dst);
    this.alpha.push(alpha);
    if (alpha !== 1) this.blended = true;
  }
  get rows() { return this.dstRow.length; }
}

export class MemoryBank {
  readonly users: number;
  readonly slots: number;
  readonly width: number;
  readonly dtype: Exclude<DType, 'int32'>;
  readonly device: Device;
  readonly mode: BankMode;
  readonly overflow: BankOverflow;
  #storage: NativeStorage | undefined;  // [users * slots, width]
  #lengths: Int32Array;                 // tokens held per user
  #heads: Int32Array;                   // slot of each user's oldest token (ring buffer start)
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: MemoryBankOptions) {
    if (options === null || typeof options !== 'object') throw new TypeError('options: expected { users, slots, width, mode, ... }');
    this.users = checkCount(options.users, 'users', 1);
    ({ slots: this.slots, width: this.width, dtype: this.dtype, device: this.device, mode: this.mode, overflow: this.overflow } = checkMemoryOptions(options));
    const dtype = this.dtype, device = this.device;
    const rows = this.users * this.slots;
    if (rows > 2 ** 31 - 1) throw new RangeError(`users * slots: at most 2^31 - 1 rows, got ${rows}`);
    const bytes = rows * this.width * codes().dtypeBytes[dtype];
    if (bytes > deviceCapacity(device))
      throw new RangeError(`width: users x slots x width of ${dtype} is ${bytes} bytes, more than the ${device} device holds (${deviceCapacity(device)})`);
    this.#storage = new (native().Storage)(device, bytes, true);
    this.#lengths = new Int32Array(this.users);
    this.#heads = new Int32Array(this.users);
  }

  get disposed(): boolean { return this.#storage === undefined; }

  /** Bytes of token storage per user (slots x width x element size). */
  get bytesPerUser(): number { return this.slots * this.width * codes().dtypeBytes[this.dtype]; }

  dispose(): void {
    this.#storage?.dispose();
    this.#storage = undefined;
  }

  [Symbol.dispose](): void { this.dispose(); }

  toString(): string {
    return `MemoryBank(${this.mode}${this.mode === 'append' ? `, overflow ${this.overflow}` : ''}, ${this.users} users × ${this.slots} slots × ${this.width} ${this.dtype}, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal console.log / util.inspect show what toString says. */
  [Symbol.for('nodejs.util.inspect.custom')](): string { return this.toString(); }

  #live(): NativeStorage {
    if (!this.#storage) throw new Error('memory bank is disposed');
    return this.#storage;
  }

  // Runs `op` after every earlier op on this bank; a failure does not block later ones.
  #enqueue<T>(op: () => Promise<T> | T): Promise<T> {
    const run = this.#queue.then(() => op());
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * An op in two steps (SPEC §11): `capture` runs at the call, checks what does not depend on the
   * bank's state and copies / holds its arguments; the job it returns runs in queue order. Any
   * error becomes a rejection (no method throws synchronously); held storages are released at the end.
   */
  #submit<T>(capture: () => { run: () => Promise<T>; held?: NativeStorage[] }): Promise<T> {
    let job: { run: () => Promise<T>; held?: NativeStorage[] };
    try {
      this.#live();
      job = capture();
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#enqueue(async () => {
      try {
        return await job.run();
      } finally {
        for (const h of job.held ?? []) h.dispose();
      }
    });
  }

  #userIds(userIds: unknown, name = 'userIds'): Int32Array {
    if (!(userIds instanceof Int32Array)) throw new TypeError(`${name}: expected an Int32Array`);
    const seen = new Set<number>();
    for (let i = 0; i < userIds.length; i++) {
      const u = userIds[i];
      if (u < 0 || u >= this.users) throw new RangeError(`${name}: user id ${u} at ${i} is out of range [0, ${this.users})`);
      if (seen.has(u)) throw new RangeError(`${name}: duplicate user id ${u} (at ${i}) in one call`);
      seen.add(u);
    }
    return userIds.slice();
  }

  #checkTokens(t: unknown, name: string): Tensor {
    return checkRows(t, name, this, 'bank');
  }

  // The update options, checked at the call.
  #blendOption(options: unknown): number | undefined {
    return checkBlendOption(options, this.mode === 'overwrite', 'bank');
  }

  #checkCounts(ids: Int32Array, counts: Int32Array, countName: string): void {
    for (let i = 0; i < ids.length; i++)
      if (counts[i] < 0 || counts[i] > this.slots)
        throw new RangeError(`${countName}: user ${ids[i]} gets ${counts[i]} tokens, expected 0 to ${this.slots} (slots)`);
  }

  /** Current token counts, for all users or the given ones (after every op that has completed). */
  lengths(userIds?: Int32Array): Int32Array {
    this.#live();
    if (userIds === undefined) return this.#lengths.slice();
    if (!(userIds instanceof Int32Array)) throw new TypeError('userIds: expected an Int32Array');
    return userIds.map((u, i) => {
      if (u < 0 || u >= this.users) throw new RangeError(`userIds: user id ${u} at ${i} is out of range [0, ${this.users})`);
      return this.#lengths[u];
    });
  }

  /**
   * Writes `counts[i]` tokens (rows of `tokens`, user after user) into user `userIds[i]`'s memory:
   * replacing it (overwrite, optionally blended) or after it (append).
   */
  update(userIds: Int32Array, tokens: Tensor, counts: Int32Array, options: { blend?: number } = {}): Promise<void> {
    return this.#submit(() => {
      const ids = this.#userIds(userIds);
      const src = this.#checkTokens(tokens, 'tokens');
      if (!(counts instanceof Int32Array)) throw new TypeError('counts: expected an Int32Array');
      if (counts.length !== ids.length) throw new RangeError(`counts: expected ${ids.length} entries (one per user), got ${counts.length}`);
      const n = counts.slice();
      this.#checkCounts(ids, n, 'counts');
      const blend = this.#blendOption(options);
      let total = 0;
      const rowStart = new Int32Array(ids.length);
      for (let i = 0; i < n.length; i++) {
        rowStart[i] = total;
        total += n[i];
      }
      if (total !== src.shape[0]) throw new RangeError(`tokens: expected ${total} rows (the sum of counts), got ${src.shape[0]}`);
      const held = src.hold();
      return { held: [held], run: () => this.#write(ids, n, (i, r) => rowStart[i] + r, held, blend, 'counts') };
    });
  }

  /**
   * The same update, taking each user's tokens straight out of a model's packed output: the rows of
   * sequence i whose role is `select`, or only the last n of them with `{ role, last: n }`.
   */
  updateFrom(userIds: Int32Array, hidden: Tensor, layout: Layout, select: RoleSelect = 'memory', options: { blend?: number } = {}): Promise<void> {
    return this.#submit(() => {
      const ids = this.#userIds(userIds);
      const src = this.#checkTokens(hidden, 'hidden');
      const lay = checkLayout(layout, src.shape[0], 'layout');
      if (lay.batch !== ids.length) throw new RangeError(`layout: ${lay.batch} sequences for ${ids.length} users`);
      const { rows, counts } = selectRows(lay, select);
      const blend = this.#blendOption(options);
      this.#checkCounts(ids, counts, 'select');
      const held = src.hold();
      return { held: [held], run: () => this.#write(ids, counts, (i, r) => rows[i][r], held, blend, 'select') };
    });
  }

  // Plans and runs one update on the bank's state when its turn comes; the checks that depend on
  // that state (append overflow) precede the kernel, and the state changes only once it succeeded.
  async #write(ids: Int32Array, counts: Int32Array, srcRowOf: (i: number, r: number) => number, src: NativeStorage,
    blend: number | undefined, countName: string): Promise<void> {
    const storage = this.#live();
    if (this.mode === 'append' && this.overflow === 'error')
      for (let i = 0; i < ids.length; i++)
        if (this.#lengths[ids[i]] + counts[i] > this.slots)
          throw new RangeError(`${countName}: user ${ids[i]} holds ${this.#lengths[ids[i]]} tokens and ${counts[i]} more overflow ${this.slots} slots (overflow: 'error')`);
    const plan = new GatherPlan();
    const lengths = this.#lengths.slice(), heads = this.#heads.slice();
    for (let i = 0; i < ids.length; i++) {
      const u = ids[i], c = counts[i], len = lengths[u], head = heads[u], base = u * this.slots;
      if (this.mode === 'overwrite') {
        const blended = blend !== undefined && len === c && c > 0;
        for (let r = 0; r < c; r++) {
          // A blend mixes token r into old token r where it lies; a plain overwrite restarts the ring.
          const slot = blended ? (head + r) % this.slots : r;
          plan.add(0, srcRowOf(i, r), base + slot, blended ? blend : 1);
        }
        lengths[u] = c;
        if (!blended) heads[u] = 0;
      } else {
        for (let r = 0; r < c; r++) plan.add(0, srcRowOf(i, r), base + ((head + len + r) % this.slots));
        const drop = Math.max(0, len + c - this.slots);  // evict-oldest: the oldest tokens fall out
        heads[u] = (head + drop) % this.slots;
        lengths[u] = len + c - drop;
      }
    }
    await this.#gather([src], storage, plan);
    this.#lengths = lengths;
    this.#heads = heads;
  }

  #gather(sources: NativeStorage[], dst: NativeStorage, plan: GatherPlan): Promise<void> {
    return native().gatherRows({
      device: this.device, dtype: DTYPE_CODE[this.dtype], width: this.width, sources, dst,
      srcSel: Uint8Array.from(plan.srcSel), srcRow: Int32Array.from(plan.srcRow), dstRow: Int32Array.from(plan.dstRow),
      alpha: plan.blended ? Float32Array.from(plan.alpha) : undefined,
    });
  }

  /** The users' memories, oldest token first, packed: `tokens: [Σ len, width]` with `offsets`. */
  read(userIds: Int32Array): Promise<{ tokens: Tensor; offsets: Int32Array }> {
    return this.#submit(() => {
      const ids = this.#userIds(userIds);
      return { run: () => this.#readNow(ids) };
    });
  }

  async #readNow(ids: Int32Array): Promise<{ tokens: Tensor; offsets: Int32Array }> {
    const storage = this.#live();
    const offsets = new Int32Array(ids.length + 1);
    const plan = new GatherPlan();
    ids.forEach((u, i) => {
      for (let r = 0; r < this.#lengths[u]; r++) plan.add(0, u * this.slots + ((this.#heads[u] + r) % this.slots), offsets[i] + r);
      offsets[i + 1] = offsets[i] + this.#lengths[u];
    });
    const tokens = emptyTensor(this.dtype, [offsets[ids.length], this.width], this.device);
    try {
      await this.#gather([storage], tokens.storage(), plan);
    } catch (e) {
      tokens.dispose();
      throw e;
    }
    return { tokens, offsets };
  }

  /**
   * One fused gather building, per user, `[its memory; its new items; the C query tokens]`, with
   * segments (one per user block) and roles (memory 1, items 0, queries 1) such that
   * `maskedAttention(..., { q: layout, rule: 'rec2pm-update' })` runs on it directly.
   */
  assemble(userIds: Int32Array, items: Tensor, itemOffsets: Int32Array, queries: Tensor): Promise<{ hidden: Tensor; layout: Required<Layout> }> {
    return this.#submit(() => {
      const ids = this.#userIds(userIds);
      const it = this.#checkTokens(items, 'items');
      const qs = this.#checkTokens(queries, 'queries');
      const itemLayout = checkLayout({ offsets: itemOffsets }, it.shape[0], 'itemOffsets');
      if (itemLayout.batch !== ids.length) throw new RangeError(`itemOffsets: ${itemLayout.batch} sequences for ${ids.length} users`);
      const offsets = itemLayout.offsets.slice(), C = qs.shape[0];
      const held = [it.hold(), qs.hold()];
      return { held, run: () => this.#assembleNow(ids, held[0], offsets, held[1], C) };
    });
  }

  async #assembleNow(ids: Int32Array, items: NativeStorage, itemOffsets: Int32Array, queries: NativeStorage, C: number): Promise<{ hidden: Tensor; layout: Required<Layout> }> {
    const storage = this.#live();
    const offsets = new Int32Array(ids.length + 1);
    const plan = new GatherPlan();
    const roles: number[] = [];
    ids.forEach((u, i) => {
      let row = offsets[i];
      for (let r = 0; r < this.#lengths[u]; r++, row++) { plan.add(0, u * this.slots + ((this.#heads[u] + r) % this.slots), row); roles.push(1); }
      for (let t = itemOffsets[i]; t < itemOffsets[i + 1]; t++, row++) { plan.add(1, t, row); roles.push(0); }
      for (let c = 0; c < C; c++, row++) { plan.add(2, c, row); roles.push(1); }
      offsets[i + 1] = row;
    });
    const T = offsets[ids.length];
    const hidden = emptyTensor(this.dtype, [T, this.width], this.device);
    try {
      await this.#gather([storage, items, queries], hidden.storage(), plan);
    } catch (e) {
      hidden.dispose();
      throw e;
    }
    return { hidden, layout: { offsets, segments: new Int32Array(T), roles: Uint8Array.from(roles) } };
  }

  /** Empties the given users' memories (in call order with the other ops). */
  reset(userIds: Int32Array): Promise<void> {
    return this.#submit(() => {
      const ids = this.#userIds(userIds);
      return {
        run: async () => {
          this.#live();
          for (const u of ids) { this.#lengths[u] = 0; this.#heads[u] = 0; }
        },
      };
    });
  }

  /**
   * Saves the bank (format in README, "MemoryBank file format"): written to a temporary file in the
   * same folder, flushed, then renamed over `file`, so a crash never destroys the previous file.
   */
  save(file: string): Promise<void> {
    if (typeof file !== 'string' || file === '') return Promise.reject(new TypeError('file: expected a path'));
    return this.#submit(() => ({
      run: () => this.#saveNow(file).catch((e: NodeJS.ErrnoException) => {
        // fs errors name the temporary file; the caller asked about `file`.
        const error: NodeJS.ErrnoException = new Error(`MemoryBank.save(${file}): ${e.message}`, { cause: e });
        if (e.code !== undefined) error.code = e.code;
        throw error;
      }),
    }));
  }

  async #saveNow(file: string): Promise<void> {
    const raw = new Uint8Array(await this.#live().read());
    const header = Buffer.alloc(HEADER_BYTES);
    MAGIC.copy(header, 0);
    header.writeUInt32LE(FORMAT_VERSION, 8);
    header.writeUInt32LE(this.users, 12);
    header.writeUInt32LE(this.slots, 16);
    header.writeUInt32LE(this.width, 20);
    header.writeUInt8(FILE_DTYPES.indexOf(this.dtype), 24);
    header.writeUInt8(this.mode === 'overwrite' ? 0 : 1, 25);
    header.writeUInt8(this.overflow === 'error' ? 0 : 1, 26);
    const parts = [header, Buffer.from(this.#lengths.buffer, this.#lengths.byteOffset, this.#lengths.byteLength),
      Buffer.from(this.#heads.buffer, this.#heads.byteOffset, this.#heads.byteLength), Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)];
    let crc = 0;
    for (const p of parts) crc = crc32(p, crc);
    const trailer = Buffer.alloc(4);
    trailer.writeUInt32LE(crc >>> 0, 0);
    await removeStaleTemps(file);
    const tmp = path.join(path.dirname(file), `${tempPrefix(file)}${process.pid}.${Date.now()}.tmp`);
    const fh = await fsp.open(tmp, 'w');
    try {
      for (const p of [...parts, trailer]) await fh.write(p);
      await fh.sync();
      await fh.close();
      await fsp.rename(tmp, file);
    } catch (e) {
      await fh.close().catch(() => undefined);  // already closed when the rename failed
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  /**
   * Loads a bank saved by `save`; a truncated, corrupt or other-version file is an Error. The
   * header is read and checked against the file's size first, so a junk file is refused before
   * anything else is read or allocated.
   */
  static async load(file: string, options: { device?: Device } = {}): Promise<MemoryBank> {
    if (typeof file !== 'string' || file === '') throw new TypeError('file: expected a path');
    if (options === null || typeof options !== 'object') throw new TypeError('options: expected { device? }');
    const fail = (why: string) => new Error(`MemoryBank.load(${file}): ${why}`);
    const fh = await fsp.open(file, 'r');
    let buf: Buffer;
    try {
      const size = (await fh.stat()).size;
      const header = Buffer.alloc(HEADER_BYTES);
      const { bytesRead } = await fh.read(header, 0, HEADER_BYTES, 0);
      if (bytesRead < HEADER_BYTES || !header.subarray(0, 8).equals(MAGIC)) throw fail('not a lifelong-kernels memory bank file');
      const version = header.readUInt32LE(8);
      if (version !== FORMAT_VERSION) throw fail(`format version ${version} is not supported (this build reads version ${FORMAT_VERSION})`);
      const users = header.readUInt32LE(12), slots = header.readUInt32LE(16), width = header.readUInt32LE(20);
      const dtypeCode = header.readUInt8(24), mode = header.readUInt8(25), overflow = header.readUInt8(26);
      if (dtypeCode >= FILE_DTYPES.length || mode > 1 || overflow > 1 || header.subarray(27, HEADER_BYTES).some((b) => b !== 0) ||
          users < 1 || slots < 1 || width < 1 || users * slots > 2 ** 31 - 1)
        throw fail('corrupt header');
      const dtype = FILE_DTYPES[dtypeCode];
      const expected = HEADER_BYTES + 8 * users + users * slots * width * codes().dtypeBytes[dtype] + 4;
      if (size !== expected) throw fail(`expected ${expected} bytes, found ${size} (truncated or corrupt)`);
      buf = Buffer.alloc(expected);
      header.copy(buf);
      const rest = await fh.read(buf, HEADER_BYTES, expected - HEADER_BYTES, HEADER_BYTES);
      if (rest.bytesRead !== expected - HEADER_BYTES) throw fail('file changed while it was read');
    } finally {
      await fh.close();
    }
    const expected = buf.length;
    const users = buf.readUInt32LE(12), slots = buf.readUInt32LE(16), width = buf.readUInt32LE(20);
    const dtype = FILE_DTYPES[buf.readUInt8(24)];
    const stored = buf.readUInt32LE(expected - 4);
    if ((crc32(buf.subarray(0, expected - 4), 0) >>> 0) !== stored) throw fail('checksum mismatch (corrupt file)');
    const lengths = new Int32Array(buf.buffer.slice(buf.byteOffset + HEADER_BYTES, buf.byteOffset + HEADER_BYTES + 4 * users));
    const heads = new Int32Array(buf.buffer.slice(buf.byteOffset + HEADER_BYTES + 4 * users, buf.byteOffset + HEADER_BYTES + 8 * users));
    for (let u = 0; u < users; u++)
      if (lengths[u] < 0 || lengths[u] > slots || heads[u] < 0 || heads[u] >= slots) throw fail('corrupt lengths');
    const bank = new MemoryBank({ users, slots, width, dtype, device: options.device ?? 'cpu',
      mode: buf.readUInt8(25) === 0 ? 'overwrite' : 'append', overflow: buf.readUInt8(26) === 0 ? 'error' : 'evict-oldest' });
    bank.#lengths = lengths;
    bank.#heads = heads;
    bank.#live().write(buf.subarray(HEADER_BYTES + 8 * users, expected - 4));
    return bank;
  }
}

// Temporary files of `save` are named `.<file>.<pid>.<time>.tmp` beside the file.
function tempPrefix(file: string): string {
  return `.${path.basename(file)}.`;
}

// Removes the temporary files that writers which have died (crashed mid-save) left beside `file`.
async function removeStaleTemps(file: string): Promise<void> {
  const dir = path.dirname(file), prefix = tempPrefix(file);
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return;  // the save itself reports an unusable folder
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const m = /^(\d+)\.\d+\.tmp$/.exec(name.slice(prefix.length));
    if (!m || !processIsGone(Number(m[1]))) continue;
    await fsp.rm(path.join(dir, name), { force: true });
  }
}

function processIsGone(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

const MAGIC = Buffer.from('LKMEMBNK', 'latin1');
// The file format's own dtype codes (README, "MemoryBank file format"): fixed by the format, not the kernels.
const FILE_DTYPES = ['float32', 'float16', 'bfloat16'] as const;
const FORMAT_VERSION = 1;
const HEADER_BYTES = 32;
