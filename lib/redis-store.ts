// RedisMemoryStore (SPEC §10): per-user memories whose system of record is Redis or a Redis Cluster,
// reached through a node-redis (`redis` >= 5) client or cluster that the caller created and connected.
// The package never imports `redis`: it uses the client it is given, so it installs and loads
// without it.
//
// A user is one key holding one record (memory-record.ts). A mutating op runs in rounds: a read
// phase (one pipelined GET per user), the change computed by the package's gather kernel on
// `device`, then a write phase (one pipelined compare-and-set script per user, which writes only
// if the record's header, carrying its write generation, is still the one that was read). Users
// whose record changed in between are read and computed again in the next round; the others are
// done. Commands issued in one tick leave in one write per node (node-redis batches per tick), so
// each phase is one round trip per node.
import { native, NativeStorage } from './native';
import { DTYPE_CODE, Device, Tensor, emptyTensor } from './tensor';
import { checkLayout, Layout } from './layout';
import { checkBlendOption, checkCount, checkMemoryOptions, checkRows, RoleSelect, selectRows } from './memory-bank';
import {
  DecodedRecord, decodeRecord, ELEMENT_BYTES, encodeRecord, MemoryRecordError, nextGeneration, RECORD_HEADER_BYTES,
  RecordConfig, RecordDType, RecordMode, RecordOverflow, recordBytes,
} from './memory-record';
import { createHash } from 'crypto';
import { setMaxListeners } from 'events';

export type UserId = string | number;

export interface RedisMemoryStoreOptions {
  slots: number;
  width: number;
  dtype?: RecordDType;
  mode: RecordMode;
  overflow?: RecordOverflow;
  /** Prepended to the user id to make its key; no '{' (a hash tag would put every user in one slot). */
  keyPrefix?: string;
  device?: Device;
  /** Every call settles within this many milliseconds of being made, whatever the server does. */
  timeoutMs?: number;
}

/**
 * What the store needs of the client: node-redis v5's `RedisClientType` and `RedisClusterType`
 * both fit (`withCommandOptions` returning a client with `get`, `getRange`, `eval` and `evalSha`).
 */
export interface RedisClientLike {
  withCommandOptions(options: never): unknown;
}

interface Commands {
  get(key: string): Promise<Buffer | null>;
  getRange(key: string, start: number, end: number): Promise<Buffer>;
  eval(script: string, options: { keys: string[]; arguments: (string | Buffer)[] }): Promise<unknown>;
  evalSha(sha: string, options: { keys: string[]; arguments: (string | Buffer)[] }): Promise<unknown>;
}

/**
 * A call that failed after it may have written: which users' records now hold the call's update
 * (`written`), which certainly do not (`notWritten`), and which were sent without a reply
 * (`inDoubt`: the update applied atomically or not at all, and a read tells which). Each user of
 * the call is in exactly one list. `cause` is the underlying error.
 */
export class RedisMemoryStoreError extends Error {
  readonly op: string;
  readonly written: UserId[];
  readonly notWritten: UserId[];
  readonly inDoubt: UserId[];
  constructor(op: string, reason: string, lists: { written: UserId[]; notWritten: UserId[]; inDoubt: UserId[] }, cause?: unknown) {
    super(`RedisMemoryStore.${op}: ${reason}; ${lists.written.length} users written, ${lists.notWritten.length} not written, ` +
      `${lists.inDoubt.length} in doubt`, cause === undefined ? undefined : { cause });
    this.name = 'RedisMemoryStoreError';
    this.op = op;
    this.written = lists.written;
    this.notWritten = lists.notWritten;
    this.inDoubt = lists.inDoubt;
  }
}

// Compare-and-set of one record: writes ARGV[2] only if the key's first RECORD_HEADER_BYTES bytes
// are ARGV[1] (the header the new record was computed from; '' when there was no record).
const CAS_SCRIPT = `local current = redis.call('GETRANGE', KEYS[1], 0, ${RECORD_HEADER_BYTES - 1})
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1`;
const CAS_SHA = createHash('sha1').update(CAS_SCRIPT).digest('hex');

// RESP's bulk-string type byte ('$'): node-redis's RESP_TYPES.BLOB_STRING, mapped to Buffer so
// records come back as bytes.
const RESP_BLOB_STRING = 36;
// Records checked or encoded between two yields to the event loop (CRC-32 runs in JavaScript).
const BYTES_PER_SLICE = 1 << 20;
const COMMANDS_PER_SIGNAL = 64;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

function constructorNames(e: unknown): string[] {
  const names: string[] = [];
  for (let p = e !== null && typeof e === 'object' ? Object.getPrototypeOf(e) : null; p && p !== Object.prototype; p = Object.getPrototypeOf(p))
    names.push(p.constructor?.name);
  return names;
}
// node-redis rejects a command it never wrote with AbortError once the call's signal is aborted.
const neverSent = (e: unknown) => constructorNames(e)[0] === 'AbortError';
// The server answered with an error: the command ran (if at all) without writing.
const serverRefused = (e: unknown) => constructorNames(e).includes('ErrorReply');
const messageOf = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** A command whose outcome is read once its phase is over. */
interface Tracked<T> {
  promise: Promise<unknown>;
  state: 'pending' | 'ok' | 'failed';
  value?: T;
  error?: unknown;
}

/**
 * One call's deadline and cancellation: every command of the call carries its abort signal, so
 * when the deadline passes (or the connection fails) the commands not yet written to a socket are
 * dropped by node-redis, and those written are, from then on, in doubt.
 */
class Call {
  timedOut = false;
  aborted = false;
  connectionError: unknown;
  readonly #client: RedisClientLike;
  // Node's AbortSignal adds a listener in time linear in those it has (node-redis adds one per
  // command not yet written), so each signal serves a group of commands, not a whole batch.
  readonly #controllers: AbortController[] = [];
  #group: Commands | undefined;
  #groupLeft = 0;
  readonly #deadline: Promise<void>;
  readonly #timer: NodeJS.Timeout;

  constructor(client: RedisClientLike, readonly timeoutMs: number) {
    this.#client = client;
    let expire!: () => void;
    this.#deadline = new Promise<void>((resolve) => { expire = resolve; });
    this.#timer = setTimeout(() => {
      this.timedOut = true;
      this.abort();
      expire();
    }, timeoutMs);
  }

  /** The client to send the next command through, carrying this call's cancellation. */
  get commands(): Commands {
    if (this.#groupLeft-- <= 0) {
      const controller = new AbortController();
      setMaxListeners(0, controller.signal);
      if (this.aborted) controller.abort();
      this.#controllers.push(controller);
      this.#group = this.#client.withCommandOptions({ typeMapping: { [RESP_BLOB_STRING]: Buffer }, abortSignal: controller.signal } as never) as Commands;
      this.#groupLeft = COMMANDS_PER_SIGNAL - 1;
    }
    return this.#group!;
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    for (const c of this.#controllers) c.abort();
  }

  finish(): void { clearTimeout(this.#timer); }

  track<T>(promise: Promise<T>): Tracked<T> {
    const t: Tracked<T> = { promise: promise, state: 'pending' };
    t.promise = promise.then((value) => { t.state = 'ok'; t.value = value; }, (error) => {
      t.state = 'failed';
      t.error = error;
      // A lost connection fails the call at once: what was not sent is dropped, not left queued.
      if (!neverSent(error) && !serverRefused(error)) {
        this.connectionError ??= error;
        this.abort();
      }
    });
    return t;
  }

  /** Until every command has settled, or the deadline (then one more turn, for the AbortErrors). */
  async settle(tracked: (Tracked<unknown> | undefined)[]): Promise<void> {
    await Promise.race([Promise.all(tracked.map((t) => t?.promise)), this.#deadline.then(yieldToLoop)]);
  }

  reason(): string {
    if (this.timedOut) return `no answer within timeoutMs = ${this.timeoutMs}`;
    return `the connection failed (${messageOf(this.connectionError)})`;
  }
}

interface Target { id: UserId; key: string }

/** Per round: the users' current records (undefined: none), in, for each, the new one or null (nothing to write). */
type Compute = (round: number[], records: (DecodedRecord | undefined)[]) => Promise<(Buffer | null)[]>;

export class RedisMemoryStore {
  readonly slots: number;
  readonly width: number;
  readonly dtype: RecordDType;
  readonly mode: RecordMode;
  readonly overflow: RecordOverflow;
  readonly keyPrefix: string;
  readonly device: Device;
  readonly timeoutMs: number;
  readonly #client: RedisClientLike;
  readonly #config: RecordConfig;
  // The last op on each key: ops of this store that share a user run in call order.
  readonly #tails = new Map<string, Promise<void>>();

  constructor(client: RedisClientLike, options: RedisMemoryStoreOptions) {
    if (client === null || typeof client !== 'object' || typeof (client as { withCommandOptions?: unknown }).withCommandOptions !== 'function')
      throw new TypeError('client: expected a node-redis (redis >= 5) client or cluster');
    const probe = client.withCommandOptions({} as never) as Partial<Commands>;
    for (const m of ['get', 'getRange', 'eval', 'evalSha'] as const)
      if (typeof probe?.[m] !== 'function') throw new TypeError(`client: expected a node-redis (redis >= 5) client or cluster (it has no ${m}())`);
    if (options === null || typeof options !== 'object') throw new TypeError('options: expected { slots, width, mode, ... }');
    ({ slots: this.slots, width: this.width, dtype: this.dtype, device: this.device, mode: this.mode, overflow: this.overflow } = checkMemoryOptions(options));
    const keyPrefix = options.keyPrefix ?? 'lk:mem:';
    if (typeof keyPrefix !== 'string') throw new TypeError('keyPrefix: expected a string');
    if (/[{}]/.test(keyPrefix)) throw new RangeError(`keyPrefix: '${keyPrefix}' holds '{' or '}'; a hash tag would put every user in one cluster slot`);
    this.keyPrefix = keyPrefix;
    const timeoutMs = options.timeoutMs ?? 10000;
    if (typeof timeoutMs !== 'number') throw new TypeError('timeoutMs: expected a number');
    if (!(timeoutMs > 0 && timeoutMs <= 2 ** 31 - 1)) throw new RangeError(`timeoutMs: expected a number in (0, 2^31 - 1], got ${timeoutMs}`);
    this.timeoutMs = timeoutMs;
    if (this.slots * this.width * ELEMENT_BYTES[this.dtype] > 2 ** 29)
      throw new RangeError(`width: slots x width of ${this.dtype} is more than a 512 MiB Redis value holds`);
    this.#client = client;
    this.#config = { slots: this.slots, width: this.width, dtype: this.dtype, mode: this.mode, overflow: this.overflow };
  }

  /** Bytes of a full user's record in Redis (header, slots x width elements, checksum). */
  get bytesPerUser(): number { return recordBytes(this.#config, this.slots); }

  /** Bytes of the record of a user holding `length` tokens. */
  recordBytes(length: number): number { return recordBytes(this.#config, checkCount(length, 'length', 0, this.slots)); }

  #targets(userIds: unknown): Target[] {
    if (!Array.isArray(userIds) && !(userIds instanceof Int32Array))
      throw new TypeError('userIds: expected an array of user ids (strings or non-negative integers) or an Int32Array');
    const seen = new Set<string>();
    const out: Target[] = [];
    for (let i = 0; i < userIds.length; i++) {
      const u: unknown = userIds[i];
      if (typeof u === 'number') {
        if (!Number.isSafeInteger(u)) throw new TypeError(`userIds: user id ${u} at ${i} is not an integer`);
        if (u < 0) throw new RangeError(`userIds: user id ${u} at ${i} is out of range [0, 2^53)`);
      } else if (typeof u === 'string') {
        if (u === '') throw new RangeError(`userIds: user id at ${i} is the empty string`);
        if (u.includes('{')) throw new RangeError(`userIds: user id '${u}' at ${i} holds '{' (a cluster hash tag)`);
      } else throw new TypeError(`userIds: user id at ${i} is ${u === null ? 'null' : typeof u}, expected a string or a number`);
      const key = this.keyPrefix + String(u);
      if (seen.has(key)) throw new RangeError(`userIds: duplicate user id ${String(u)} (at ${i}) in one call`);
      seen.add(key);
      out.push({ id: u, key });
    }
    return out;
  }

  /**
   * Runs an op: `capture` checks the arguments and holds what the op needs at the call (no method
   * throws synchronously); the op starts once every earlier op of this store on its users ended.
   * The deadline counts from the call.
   */
  #submit<T>(capture: () => { targets: Target[]; held?: NativeStorage[]; run: (call: Call) => Promise<T> }): Promise<T> {
    let job: ReturnType<typeof capture>;
    try {
      job = capture();
    } catch (e) {
      return Promise.reject(e);
    }
    const call = new Call(this.#client, this.timeoutMs);
    const keys = job.targets.map((t) => t.key);
    const earlier = new Set<Promise<void>>();
    for (const k of keys) { const p = this.#tails.get(k); if (p) earlier.add(p); }
    const result = Promise.all(earlier).then(() => job.run(call)).finally(() => {
      call.finish();
      for (const h of job.held ?? []) h.dispose();
    });
    const done = result.then(() => undefined, () => undefined);
    for (const k of keys) this.#tails.set(k, done);
    void done.then(() => { for (const k of keys) if (this.#tails.get(k) === done) this.#tails.delete(k); });
    return result;
  }

  /** One pipelined GET (whole records) or GETRANGE (headers) per user, checked against this store. */
  async #fetch(call: Call, op: string, targets: Target[], whole: boolean): Promise<(DecodedRecord | undefined)[]> {
    const replies = targets.map((t) => {
      const c = call.commands;
      return call.track(whole ? c.get(t.key) : c.getRange(t.key, 0, RECORD_HEADER_BYTES - 1));
    });
    await call.settle(replies);
    // Nothing was written (a mutating op's caller fills in its lists).
    if (call.aborted) throw new RedisMemoryStoreError(op, call.reason(), { written: [], notWritten: [], inDoubt: [] }, call.connectionError);
    const records: (DecodedRecord | undefined)[] = [];
    let sinceYield = 0;
    for (let i = 0; i < targets.length; i++) {
      const r = replies[i], what = `user ${String(targets[i].id)} (key '${targets[i].key}')`;
      if (r.state === 'failed') throw new MemoryRecordError(`${what}: the server refused the read: ${messageOf(r.error)}`);
      const bytes = r.value as Buffer | null;
      // A missing key reads as null (GET) or as no bytes (GETRANGE): a user without a memory yet.
      records.push(bytes === null || (!whole && bytes.length === 0) ? undefined : decodeRecord(bytes, this.#config, what, whole));
      if ((sinceYield += bytes?.length ?? 0) > BYTES_PER_SLICE) { sinceYield = 0; await yieldToLoop(); }
    }
    return records;
  }

  /**
   * The write path shared by update, updateFrom and reset: rounds of read, compute, compare-and-set
   * until every user's new record is in, or the call fails with the three lists.
   */
  async #commit(call: Call, op: string, targets: Target[], compute: Compute): Promise<void> {
    const status = new Array<'pending' | 'written' | 'inDoubt'>(targets.length).fill('pending');
    const fail = (reason: string, cause?: unknown): RedisMemoryStoreError => {
      const lists = { written: [] as UserId[], notWritten: [] as UserId[], inDoubt: [] as UserId[] };
      status.forEach((s, i) => (s === 'written' ? lists.written : s === 'inDoubt' ? lists.inDoubt : lists.notWritten).push(targets[i].id));
      return new RedisMemoryStoreError(op, reason, lists, cause);
    };
    let round = targets.map((_, i) => i);
    for (let attempt = 0; round.length > 0; attempt++) {
      let next: (Buffer | null)[], records: (DecodedRecord | undefined)[];
      try {
        records = await this.#fetch(call, op, round.map((i) => targets[i]), true);
        next = await compute(round, records);
      } catch (e) {
        // Before anything was written an invalid call is its own error; after, the lists matter.
        if (attempt === 0 && !(e instanceof RedisMemoryStoreError)) throw e;
        throw e instanceof RedisMemoryStoreError ? fail(call.reason(), e.cause) : fail(messageOf(e), e);
      }
      const writes = round.map((i, j) => {
        const record = next[j];
        if (record === null) return undefined;
        const args = { keys: [targets[i].key], arguments: [records[j]?.header ?? '', record] };
        const c = call.commands;  // the same group for the fallback
        // The script is cached by the server; a server that lost it (NOSCRIPT) is sent the source.
        return call.track(c.evalSha(CAS_SHA, args).catch((e) => (serverRefused(e) && messageOf(e).startsWith('NOSCRIPT') ? c.eval(CAS_SCRIPT, args) : Promise.reject(e))));
      });
      await call.settle(writes);
      const conflicts: number[] = [];
      let refusal: unknown;
      round.forEach((i, j) => {
        const w = writes[j];
        if (w === undefined || (w.state === 'ok' && Number(w.value) === 1)) status[i] = 'written';
        else if (w.state === 'ok') conflicts.push(i);
        else if (w.state === 'pending' || !(neverSent(w.error) || serverRefused(w.error))) status[i] = 'inDoubt';
        else if (serverRefused(w.error)) refusal ??= w.error;
      });
      if (call.aborted) throw fail(call.reason(), call.connectionError);
      if (refusal !== undefined) throw fail(`the server refused a write (${messageOf(refusal)})`, refusal);
      round = conflicts;
      // Writers that collided back off a little, differently, before they read again.
      if (round.length > 0) await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(20, 2 ** attempt)));
    }
  }

  /**
   * Writes `counts[i]` tokens (rows of `tokens`, user after user) into user `userIds[i]`'s memory:
   * replacing it (overwrite, optionally blended) or after it (append), as MemoryBank.update.
   */
  update(userIds: UserId[] | Int32Array, tokens: Tensor, counts: Int32Array, options: { blend?: number } = {}): Promise<void> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      const src = checkRows(tokens, 'tokens', this, 'store');
      if (!(counts instanceof Int32Array)) throw new TypeError('counts: expected an Int32Array');
      if (counts.length !== targets.length) throw new RangeError(`counts: expected ${targets.length} entries (one per user), got ${counts.length}`);
      const n = counts.slice();
      this.#checkCounts(targets, n, 'counts');
      const blend = checkBlendOption(options, this.mode === 'overwrite', 'store');
      const rowStart = new Int32Array(n.length);
      let total = 0;
      for (let i = 0; i < n.length; i++) { rowStart[i] = total; total += n[i]; }
      if (total !== src.shape[0]) throw new RangeError(`tokens: expected ${total} rows (the sum of counts), got ${src.shape[0]}`);
      const held = src.hold();
      return {
        targets, held: [held],
        run: (call) => this.#commit(call, 'update', targets, (round, records) =>
          this.#computeUpdate(targets, round, records, n, (i, r) => rowStart[i] + r, held, blend, 'counts')),
      };
    });
  }

  /** The same update taking each user's rows out of a model's packed output, as MemoryBank.updateFrom. */
  updateFrom(userIds: UserId[] | Int32Array, hidden: Tensor, layout: Layout, select: RoleSelect = 'memory', options: { blend?: number } = {}): Promise<void> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      const src = checkRows(hidden, 'hidden', this, 'store');
      const lay = checkLayout(layout, src.shape[0], 'layout');
      if (lay.batch !== targets.length) throw new RangeError(`layout: ${lay.batch} sequences for ${targets.length} users`);
      const { rows, counts } = selectRows(lay, select);
      const blend = checkBlendOption(options, this.mode === 'overwrite', 'store');
      this.#checkCounts(targets, counts, 'select');
      const held = src.hold();
      return {
        targets, held: [held],
        run: (call) => this.#commit(call, 'updateFrom', targets, (round, records) =>
          this.#computeUpdate(targets, round, records, counts, (i, r) => rows[i][r], held, blend, 'select')),
      };
    });
  }

  #checkCounts(targets: Target[], counts: Int32Array, countName: string): void {
    for (let i = 0; i < targets.length; i++)
      if (counts[i] < 0 || counts[i] > this.slots)
        throw new RangeError(`${countName}: user ${String(targets[i].id)} gets ${counts[i]} tokens, expected 0 to ${this.slots} (slots)`);
  }

  /**
   * The new records of one round: the old rows that stay are placed in the new records' device
   * buffer as it is uploaded (an append keeps the newest, an evict drops the oldest, a blend starts
   * from the old tokens), then one gather launch writes or blends the new rows into it.
   */
  async #computeUpdate(targets: Target[], round: number[], records: (DecodedRecord | undefined)[], counts: Int32Array,
    srcRowOf: (i: number, r: number) => number, src: NativeStorage, blend: number | undefined, countName: string): Promise<Buffer[]> {
    const rowBytes = this.width * ELEMENT_BYTES[this.dtype];
    if (this.mode === 'append' && this.overflow === 'error')
      round.forEach((i, j) => {
        const held = records[j]?.length ?? 0;
        if (held + counts[i] > this.slots)
          throw new RangeError(`${countName}: user ${String(targets[i].id)} holds ${held} tokens and ${counts[i]} more overflow ${this.slots} slots (overflow: 'error')`);
      });
    const start = new Int32Array(round.length + 1), kept = new Int32Array(round.length);
    round.forEach((i, j) => {
      const held = records[j]?.length ?? 0, c = counts[i];
      if (this.mode === 'overwrite') kept[j] = blend !== undefined && held === c && c > 0 ? c : 0;
      else kept[j] = held - Math.max(0, held + c - this.slots);
      start[j + 1] = start[j] + (this.mode === 'overwrite' ? c : kept[j] + c);
    });
    const rows = start[round.length];
    const srcRow: number[] = [], dstRow: number[] = [], alpha: number[] = [];
    let prefill: Buffer | undefined;
    round.forEach((i, j) => {
      const old = records[j];
      if (kept[j] > 0 && old) {
        prefill ??= Buffer.alloc(rows * rowBytes);
        prefill.set(old.payload.subarray((old.length - kept[j]) * rowBytes), start[j] * rowBytes);
      }
      const at = this.mode === 'overwrite' ? start[j] : start[j] + kept[j];
      const a = this.mode === 'overwrite' && kept[j] > 0 ? blend! : 1;
      for (let r = 0; r < counts[i]; r++) { srcRow.push(srcRowOf(i, r)); dstRow.push(at + r); alpha.push(a); }
    });
    const dst = new (native().Storage)(this.device, rows * rowBytes, false);
    let bytes: Buffer;
    try {
      if (prefill) dst.write(prefill);
      if (srcRow.length > 0)
        await native().gatherRows({
          device: this.device, dtype: DTYPE_CODE[this.dtype], width: this.width, sources: [src], dst,
          srcSel: new Uint8Array(srcRow.length), srcRow: Int32Array.from(srcRow), dstRow: Int32Array.from(dstRow),
          alpha: blend !== undefined ? Float32Array.from(alpha) : undefined,
        });
      bytes = Buffer.from(await dst.read());
    } finally {
      dst.dispose();
    }
    const out: Buffer[] = [];
    let sinceYield = 0;
    for (let j = 0; j < round.length; j++) {
      const length = start[j + 1] - start[j];
      out.push(encodeRecord(this.#config, nextGeneration(records[j]?.generation), length, bytes.subarray(start[j] * rowBytes, start[j + 1] * rowBytes)));
      if ((sinceYield += length * rowBytes) > BYTES_PER_SLICE) { sinceYield = 0; await yieldToLoop(); }
    }
    return out;
  }

  /** The users' memories, oldest token first, packed: `tokens: [Σ len, width]` on `device`, with `offsets`. */
  read(userIds: UserId[] | Int32Array): Promise<{ tokens: Tensor; offsets: Int32Array }> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      return {
        targets,
        run: async (call) => {
          const { tokens, offsets } = this.#upload(await this.#fetch(call, 'read', targets, true));
          return { tokens, offsets };
        },
      };
    });
  }

  // The records' tokens, back to back, in one tensor on `device`.
  #upload(records: (DecodedRecord | undefined)[]): { tokens: Tensor; offsets: Int32Array } {
    const offsets = new Int32Array(records.length + 1);
    records.forEach((r, i) => { offsets[i + 1] = offsets[i] + (r?.length ?? 0); });
    const rowBytes = this.width * ELEMENT_BYTES[this.dtype];
    const host = Buffer.concat(records.filter((r) => r !== undefined).map((r) => r!.payload), offsets[records.length] * rowBytes);
    const tokens = emptyTensor(this.dtype, [offsets[records.length], this.width], this.device);
    try {
      tokens.storage().write(host);
    } catch (e) {
      tokens.dispose();
      throw e;
    }
    return { tokens, offsets };
  }

  /**
   * One fused gather building, per user, `[its memory; its new items; the C query tokens]` with
   * segments and roles for `rule: 'rec2pm-update'`, as MemoryBank.assemble.
   */
  assemble(userIds: UserId[] | Int32Array, items: Tensor, itemOffsets: Int32Array, queries: Tensor): Promise<{ hidden: Tensor; layout: Required<Layout> }> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      const it = checkRows(items, 'items', this, 'store');
      const qs = checkRows(queries, 'queries', this, 'store');
      const itemLayout = checkLayout({ offsets: itemOffsets }, it.shape[0], 'itemOffsets');
      if (itemLayout.batch !== targets.length) throw new RangeError(`itemOffsets: ${itemLayout.batch} sequences for ${targets.length} users`);
      const itemAt = itemLayout.offsets.slice(), C = qs.shape[0];
      const held = [it.hold(), qs.hold()];
      return {
        targets, held,
        run: async (call) => {
          const records = await this.#fetch(call, 'assemble', targets, true);
          const memories = this.#upload(records);
          try {
            return await this.#assembleNow(memories.tokens.storage(), memories.offsets, held[0], itemAt, held[1], C);
          } finally {
            memories.tokens.dispose();
          }
        },
      };
    });
  }

  async #assembleNow(memories: NativeStorage, memoryAt: Int32Array, items: NativeStorage, itemAt: Int32Array, queries: NativeStorage, C: number):
    Promise<{ hidden: Tensor; layout: Required<Layout> }> {
    const users = memoryAt.length - 1;
    const offsets = new Int32Array(users + 1);
    const srcSel: number[] = [], srcRow: number[] = [], roles: number[] = [];
    const add = (sel: number, row: number, role: number) => { srcSel.push(sel); srcRow.push(row); roles.push(role); };
    for (let i = 0; i < users; i++) {
      for (let r = memoryAt[i]; r < memoryAt[i + 1]; r++) add(0, r, 1);
      for (let t = itemAt[i]; t < itemAt[i + 1]; t++) add(1, t, 0);
      for (let c = 0; c < C; c++) add(2, c, 1);
      offsets[i + 1] = roles.length;
    }
    const T = roles.length;
    const hidden = emptyTensor(this.dtype, [T, this.width], this.device);
    try {
      if (T > 0)
        await native().gatherRows({
          device: this.device, dtype: DTYPE_CODE[this.dtype], width: this.width, sources: [memories, items, queries], dst: hidden.storage(),
          srcSel: Uint8Array.from(srcSel), srcRow: Int32Array.from(srcRow), dstRow: Int32Array.from({ length: T }, (_, i) => i),
        });
    } catch (e) {
      hidden.dispose();
      throw e;
    }
    return { hidden, layout: { offsets, segments: new Int32Array(T), roles: Uint8Array.from(roles) } };
  }

  /** The users' token counts (one pipelined header read per user; a user without a record holds 0). */
  lengths(userIds: UserId[] | Int32Array): Promise<Int32Array> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      return { targets, run: async (call) => Int32Array.from(await this.#fetch(call, 'lengths', targets, false), (r) => r?.length ?? 0) };
    });
  }

  /**
   * Empties the users' memories: each record is replaced by an empty one of the next generation
   * (never deleted, so a writer still holding the old header cannot overwrite the reset unseen).
   */
  reset(userIds: UserId[] | Int32Array): Promise<void> {
    return this.#submit(() => {
      const targets = this.#targets(userIds);
      const empty = Buffer.alloc(0);
      return {
        targets,
        run: (call) => this.#commit(call, 'reset', targets, async (round, records) =>
          records.map((r) => (r === undefined ? null : encodeRecord(this.#config, nextGeneration(r.generation), 0, empty)))),
      };
    });
  }
}
