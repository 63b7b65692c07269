// RedisMemoryStore (SPEC §10) against real Redis: a redis-server and a 3-node Redis Cluster, both
// started here on free loopback ports. Random op streams replayed against the reference bank,
// invalid calls and other configurations' records refused before any write, two writer processes
// on the same users losing nothing, servers killed (SIGKILL) or hung (SIGSTOP) mid-batch, round
// trips per phase counted on the wire, and the package loading without `redis` installed.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn, spawnSync } from 'child_process';
import * as net from 'net';
import * as path from 'path';
import { createClient, createCluster, RESP_TYPES } from 'redis';
import { RedisMemoryStore, RedisMemoryStoreError, MemoryRecordError, tensor, DType } from '../lib/index';
import type { RedisClientLike, UserId } from '../lib/index';
import { ReferenceMemoryBank } from '../lib/reference/memory-bank';
import { RedisClusterServers, RedisServer, redisUnavailable } from '../bench/redis-servers';
import { compare, parityDevices, Rng } from './helpers';

// Without redis-server the suite skips, saying why, except where LK_REQUIRE_REDIS=1 or CI is set
// (.ci/run installs the server and sets LK_REQUIRE_REDIS): there it fails.
const unavailable = redisUnavailable();
const skipRedis = unavailable !== undefined && !process.env.LK_REQUIRE_REDIS && !process.env.CI;
if (skipRedis) console.warn(`RedisMemoryStore tests skipped: ${unavailable}`);
const redisTest = skipRedis ? test.skip : test;
const redisSerial = skipRedis ? test.serial.skip : test.serial;

type Client = ReturnType<typeof createClient> | ReturnType<typeof createCluster>;
type Mode = { mode: 'overwrite' | 'append'; overflow?: 'error' | 'evict-oldest' };
const MODES: Mode[] = [{ mode: 'overwrite' }, { mode: 'append', overflow: 'error' }, { mode: 'append', overflow: 'evict-oldest' }];
const modeName = (m: Mode) => m.mode + (m.overflow ? '/' + m.overflow : '');

let single: RedisServer | undefined;
let cluster: RedisClusterServers | undefined;
const clients: Client[] = [];

async function connect(kind: 'single' | 'cluster', endpoints?: { url?: string; rootNodes?: { url: string }[] }): Promise<Client> {
  const c = kind === 'cluster'
    ? createCluster({ rootNodes: endpoints?.rootNodes ?? cluster!.rootNodes })
    : createClient({ url: endpoints?.url ?? single!.url });
  c.on('error', () => undefined);  // a killed server: the client reconnects, the store reports
  await c.connect();
  clients.push(c);
  return c;
}

test.before(async () => {
  if (skipRedis) return;
  [single, cluster] = await Promise.all([RedisServer.start(), RedisClusterServers.start(3)]);
});

test.after.always(async () => {
  for (const c of clients) c.destroy();
  await Promise.all([single?.stop(), cluster?.stop()]);
});

let prefixes = 0;
const freshPrefix = (name: string) => `t${process.pid}:${name}:${prefixes++}:`;

// User index u of the reference bank is user id u (odd) or 'user-u' (even) in the store.
const idOf = (u: number): UserId => (u % 2 ? u : `user-${u}`);
const idsOf = (us: Int32Array) => Array.from(us, idOf);

function pickUsers(rng: Rng, users: number, n: number): Int32Array {
  const all = Array.from({ length: users }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) { const j = rng.int(0, i); [all[i], all[j]] = [all[j], all[i]]; }
  return Int32Array.from(all.slice(0, n));
}

async function expectSame(t: ExecutionContext, store: RedisMemoryStore, ref: ReferenceMemoryBank, users: number, dtype: DType, what: string) {
  const all = Int32Array.from({ length: users }, (_, i) => i);
  const got = await store.read(idsOf(all));
  const want = ref.read(all);
  t.deepEqual(Array.from(got.offsets), Array.from(want.offsets), `${what}: offsets`);
  t.deepEqual(Array.from(await store.lengths(idsOf(all))), Array.from(ref.lengths()), `${what}: lengths`);
  t.is(compare(await got.tokens.float32(), want.tokens.data, dtype, 'tokens'), '', what);
  got.tokens.dispose();
}

// Runs one op on the reference and on the store: both succeed, or both reject with the same class.
async function both(t: ExecutionContext, what: string, onRef: () => void, onStore: () => Promise<unknown>) {
  let refError: unknown;
  try { onRef(); } catch (e) { refError = e; }
  const storeError = await onStore().then(() => undefined, (e) => e);
  t.is(storeError?.constructor, (refError as Error | undefined)?.constructor, `${what}: ${String(storeError)} vs ${String(refError)}`);
}

// The store's kernels run on every backend present (CUDA on a GPU or the emulator), on one node;
// the cluster runs the CPU kernels.
for (const kind of ['single', 'cluster'] as const) {
  for (const device of kind === 'single' ? parityDevices() : ['cpu' as const]) for (const m of MODES) {
    for (const dtype of ['float32', 'bfloat16'] as const) {
      redisTest(`RedisMemoryStore ${kind} ${device} ${modeName(m)} ${dtype}: random op streams (update, blend, updateFrom, assemble, reset, rejected calls) equal the reference bank`, async (t) => {
        const rng = new Rng(1 + m.mode.length * 7 + (m.overflow?.length ?? 0) * 3 + dtype.length + (kind === 'cluster' ? 100 : 0));
        const users = 16, slots = rng.int(1, 5), width = rng.pick([1, 3, 8, 64]);
        const store = new RedisMemoryStore(await connect(kind), { slots, width, dtype, device, ...m, keyPrefix: freshPrefix('replay') });
        const ref = new ReferenceMemoryBank({ users, slots, width, ...m });
        const rows = async (n: number) => {
          const x = tensor(rng.floats(n * width), [n, width], { dtype, device });
          return { x, exact: { data: await x.float32(), shape: [n, width] } };
        };
        for (let step = 0; step < 14; step++) {
          const ids = pickUsers(rng, users, rng.int(0, users));
          const op = rng.pick(['update', 'update', 'updateFrom', 'reset', 'assemble']);
          if (op === 'update') {
            const counts = Int32Array.from(ids, () => rng.int(0, slots + (rng.bool(0.1) ? 1 : 0)));  // sometimes too many
            const total = counts.reduce((a, b) => a + b, 0);
            const { x, exact } = await rows(total);
            const blend = m.mode === 'overwrite' && rng.bool(0.4) ? rng.pick([0.25, 0.5, 1]) : undefined;
            await both(t, `step ${step} update`, () => ref.update(ids, exact, counts, { blend }), () => store.update(idsOf(ids), x, counts, { blend }));
            x.dispose();
          } else if (op === 'updateFrom') {
            const offsets = new Int32Array(ids.length + 1);
            ids.forEach((_, i) => { offsets[i + 1] = offsets[i] + rng.int(0, 7); });
            const T = offsets[ids.length];
            const roles = Uint8Array.from({ length: T }, () => rng.int(0, 2));
            const select = rng.bool() ? rng.pick(['item', 'memory', 'target'] as const) : { role: rng.pick(['item', 'memory', 'target'] as const), last: rng.int(1, 3) };
            const { x, exact } = await rows(T);
            await both(t, `step ${step} updateFrom`, () => ref.updateFrom(ids, exact, { offsets, roles }, select),
              () => store.updateFrom(idsOf(ids), x, { offsets, roles }, select));
            x.dispose();
          } else if (op === 'reset') {
            await both(t, `step ${step} reset`, () => ref.reset(ids), () => store.reset(idsOf(ids)));
          } else {
            const itemOffsets = new Int32Array(ids.length + 1);
            ids.forEach((_, i) => { itemOffsets[i + 1] = itemOffsets[i] + rng.pick([0, 1, 5]); });
            const items = await rows(itemOffsets[ids.length]), queries = await rows(2);
            const got = await store.assemble(idsOf(ids), items.x, itemOffsets, queries.x);
            const want = ref.assemble(ids, items.exact, itemOffsets, queries.exact);
            t.deepEqual(Array.from(got.layout.offsets), Array.from(want.layout.offsets), `step ${step} assemble offsets`);
            t.deepEqual(Array.from(got.layout.roles), Array.from(want.layout.roles), `step ${step} assemble roles`);
            t.is(compare(await got.hidden.float32(), want.hidden.data, dtype, 'hidden'), '', `step ${step} assemble`);
            for (const x of [items.x, queries.x, got.hidden]) x.dispose();
          }
          if (ids.length >= 2 && rng.bool(0.3)) {  // a duplicate user: rejected by both, nothing changes
            const dup = Int32Array.of(ids[0], ids[1], ids[0]);
            const { x, exact } = await rows(3);
            await both(t, `step ${step} duplicate`, () => ref.update(dup, exact, new Int32Array([1, 1, 1])), () => store.update(idsOf(dup), x, new Int32Array([1, 1, 1])));
          }
          await expectSame(t, store, ref, users, dtype, `step ${step} (${op})`);
        }
      });
    }
  }
}

// Every key under `prefix`, raw: what "nothing was written" is checked against.
async function rawRecords(kind: 'single' | 'cluster', prefix: string, ids: UserId[]): Promise<(string | null)[]> {
  const c = (await connect(kind)).withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  return Promise.all(ids.map((u) => c.get(prefix + String(u)).then((v) => (v as Buffer | null)?.toString('hex') ?? null, (e: Error) => e.message)));
}

for (const kind of ['single', 'cluster'] as const) {
  redisTest(`RedisMemoryStore ${kind}: invalid calls and other configurations' records reject before any write`, async (t) => {
    const client = await connect(kind);
    const prefix = freshPrefix('invalid');
    const width = 4, slots = 3;
    const store = new RedisMemoryStore(client, { slots, width, mode: 'append', overflow: 'error', keyPrefix: prefix });
    const rows = (n: number, dtype: DType = 'float32') => tensor(Array.from({ length: n * width }, (_, i) => i + 0.5), [n, width], { dtype });
    const ids: UserId[] = [0, 1, 'a', 'b', 'foreign', 'corrupt', 'junk', 'hash'];
    await store.update([0, 1], rows(3), new Int32Array([2, 1]));
    // Records another configuration wrote, a corrupted record, a value that is no record, a hash.
    await new RedisMemoryStore(client, { slots, width: 8, mode: 'append', keyPrefix: prefix }).update(['foreign'], tensor(new Float32Array(8), [1, 8]), new Int32Array([1]));
    await store.update(['corrupt'], rows(1), new Int32Array([1]));
    const raw = client as unknown as { setRange(k: string, o: number, v: string): Promise<unknown>; set(k: string, v: string): Promise<unknown>; hSet(k: string, f: string, v: string): Promise<unknown> };
    await raw.setRange(prefix + 'corrupt', 40, 'X');
    await raw.set(prefix + 'junk', 'not a record');
    await raw.hSet(prefix + 'hash', 'f', 'v');
    const before = await rawRecords(kind, prefix, ids);
    const bad: [string, () => Promise<unknown>, RegExp, new (...a: never[]) => Error][] = [
      ['negative user id', () => store.update([-1], rows(1), new Int32Array([1])), /^userIds: user id -1 at 0 is out of range/, RangeError],
      ['fractional user id', () => store.update([1.5], rows(1), new Int32Array([1])), /^userIds: user id 1.5 at 0 is not an integer/, TypeError],
      ['hash tag in a user id', () => store.update(['{x}'], rows(1), new Int32Array([1])), /^userIds: user id '\{x\}' at 0 holds '\{'/, RangeError],
      ['duplicate user id (number and string name one key)', () => store.update([1, '1'], rows(2), new Int32Array([1, 1])), /^userIds: duplicate user id 1 \(at 1\)/, RangeError],
      ['count larger than slots', () => store.update(['a'], rows(4), new Int32Array([4])), /^counts: user a gets 4 tokens, expected 0 to 3/, RangeError],
      ['overflow under error (after a valid user in the same call)', () => store.update(['a', 0], rows(3), new Int32Array([1, 2])), /^counts: user 0 holds 2 tokens and 2 more overflow 3 slots/, RangeError],
      ['width mismatch', () => store.update(['a'], tensor([1, 2, 3], [1, 3]), new Int32Array([1])), /^tokens: width 3 differs from the store's 4/, RangeError],
      ['dtype mismatch', () => store.update(['a'], rows(1, 'float16'), new Int32Array([1])), /^tokens: dtype float16 differs/, TypeError],
      ['rows not summing to counts', () => store.update(['a'], rows(2), new Int32Array([1])), /^tokens: expected 1 rows/, RangeError],
      ['userIds wrong type', () => store.update('a' as never, rows(1), new Int32Array([1])), /^userIds: expected an array/, TypeError],
      ['blend on an append store', () => store.update(['a'], rows(1), new Int32Array([1]), { blend: 0.5 }), /^options\.blend: only a mode 'overwrite' store blends/, RangeError],
      ['layout of another batch', () => store.updateFrom(['a'], rows(2), { offsets: new Int32Array([0, 1, 2]) }), /^layout: 2 sequences for 1 users/, RangeError],
      ['bad select', () => store.updateFrom(['a'], rows(2), { offsets: new Int32Array([0, 2]) }, 'query' as never), /^select:/, TypeError],
      ['another width\'s record (after a valid user)', () => store.update(['b', 'foreign'], rows(2), new Int32Array([1, 1])), /user foreign \(key '.*foreign'\): the record was written with width 8, this store has width 4/, MemoryRecordError],
      ['a corrupted record', () => store.update(['b', 'corrupt'], rows(2), new Int32Array([1, 1])), /user corrupt .*checksum mismatch/, MemoryRecordError],
      ['a value that is no record', () => store.update(['b', 'junk'], rows(2), new Int32Array([1, 1])), /user junk .*not a lifelong-kernels memory record/, MemoryRecordError],
      ['a key of another type', () => store.reset(['b', 'hash', 0]), /user hash .*the server refused the read: WRONGTYPE/, MemoryRecordError],
      ['reading another width\'s record', () => store.read(['foreign']), /width 8, this store has width 4/, MemoryRecordError],
      ['the lengths of another width\'s record', () => store.lengths(['foreign']), /width 8, this store has width 4/, MemoryRecordError],
    ];
    for (const [name, call, message, instanceOf] of bad) {
      await t.throwsAsync(call, { instanceOf, message }, name);
      t.deepEqual(await rawRecords(kind, prefix, ids), before, `${name}: nothing written`);
    }
    for (const [field, other] of [['dtype', { dtype: 'float16' }], ['mode', { mode: 'overwrite' }], ['overflow', { overflow: 'evict-oldest' }], ['slots', { slots: 4 }]] as const) {
      const otherStore = new RedisMemoryStore(client, { slots, width, mode: 'append', overflow: 'error', keyPrefix: prefix, ...other });
      await t.throwsAsync(() => otherStore.read([0]), { instanceOf: MemoryRecordError, message: new RegExp(`written with ${field} .*this store has ${field}`) }, field);
    }
    t.throws(() => new RedisMemoryStore(client, { slots: 1, width: 1, mode: 'overwrite', keyPrefix: 'lk:{all}:' }), { instanceOf: RangeError, message: /^keyPrefix: .*hash tag/ });
    t.throws(() => new RedisMemoryStore({} as RedisClientLike, { slots: 1, width: 1, mode: 'overwrite' }), { instanceOf: TypeError, message: /^client: expected a node-redis/ });
    t.throws(() => new RedisMemoryStore(client, { slots: 1, width: 1, mode: 'overwrite', timeoutMs: 0 }), { instanceOf: RangeError, message: /^timeoutMs/ });
    t.throws(() => new RedisMemoryStore(client, { slots: 1, width: 1, mode: 'ring' as never }), { instanceOf: TypeError, message: /^mode:/ });
    t.deepEqual(Array.from(await store.lengths([0, 1, 'never-written'])), [2, 1, 0]);
  });

  redisTest(`RedisMemoryStore ${kind}: two writer processes appending to the same users lose no update`, async (t) => {
    const users = 24, steps = 25, width = 2, prefix = freshPrefix('writers');
    const target = JSON.stringify(kind === 'cluster' ? { rootNodes: cluster!.rootNodes } : { url: single!.url });
    const writers = [1, 2].map((w) => spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'redis-writer.ts'), target, String(w), String(users), String(steps), String(width), prefix],
      { stdio: ['pipe', 'pipe', 'pipe'], env: process.env }));
    const outputs = writers.map((p) => new Promise<string>((resolve, reject) => {
      let out = '', err = '';
      p.stdout!.on('data', (d) => { out += d; });
      p.stderr!.on('data', (d) => { err += d; });
      // 'close', not 'exit': 'exit' can come before the last stdout chunk has been read.
      p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`writer exited with ${code}: ${err}`))));
    }));
    // Both connect, then start together, so their read-compute-write rounds interleave.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    for (const p of writers) p.stdin!.end('go\n');
    for (const out of await Promise.all(outputs)) t.regex(out, /"done":true/);
    const store = new RedisMemoryStore(await connect(kind), { slots: 2 * steps, width, mode: 'append', overflow: 'error', keyPrefix: prefix });
    const ids = Array.from({ length: users }, (_, u) => idOf(u));
    const { tokens, offsets } = await store.read(ids);
    const values = await tokens.float32();
    for (let i = 0; i < users; i++) {
      const mine = Array.from({ length: offsets[i + 1] - offsets[i] }, (_, r) => values[(offsets[i] + r) * width]);
      t.is(mine.length, 2 * steps, `user ${String(ids[i])}: every append of both writers is there`);
      for (const w of [1, 2])
        t.deepEqual(mine.filter((v) => Math.floor(v / 1000) === w), Array.from({ length: steps }, (_, s) => w * 1000 + s), `user ${String(ids[i])}: writer ${w}'s appends, in order`);
    }
  });
}

// The wire between a client and one server: counts how often the client starts sending after the
// server has answered, i.e. round trips.
async function countingRelay(port: number): Promise<{ port: number; roundTrips: () => number; close: () => void }> {
  let trips = 0, last: 'client' | 'server' = 'server';
  const sockets = new Set<net.Socket>();
  const relay = net.createServer((down) => {
    const up = net.connect(port, '127.0.0.1');
    sockets.add(down).add(up);
    down.on('data', (d) => { if (last === 'server') trips++; last = 'client'; up.write(d); });
    up.on('data', (d) => { last = 'server'; down.write(d); });
    for (const [a, b] of [[down, up], [up, down]]) { a.on('error', () => b.destroy()); a.on('close', () => b.destroy()); }
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    port: (relay.address() as net.AddressInfo).port,
    roundTrips: () => trips,
    close: () => { for (const s of sockets) s.destroy(); relay.close(); },
  };
}

redisTest('RedisMemoryStore single: a batch is one round trip per phase (update: read + write; read, lengths, assemble: one), not one per user', async (t) => {
  const relay = await countingRelay(single!.port);
  const client = await connect('single', { url: `redis://127.0.0.1:${relay.port}` });
  const store = new RedisMemoryStore(client, { slots: 4, width: 8, mode: 'overwrite', keyPrefix: freshPrefix('trips') });
  const users = Array.from({ length: 64 }, (_, u) => u);
  const x = tensor(new Float32Array(64 * 4 * 8).fill(1), [256, 8]);
  await store.update(users, x, new Int32Array(64).fill(4));  // loads the script (NOSCRIPT, then EVAL)
  const count = async (what: string, expected: number, op: () => Promise<unknown>) => {
    const before = relay.roundTrips();
    await op();
    t.is(relay.roundTrips() - before, expected, what);
  };
  await count('update of 64 users', 2, () => store.update(users, x, new Int32Array(64).fill(4), { blend: 0.5 }));
  await count('read of 64 users', 1, () => store.read(users));
  await count('lengths of 64 users', 1, () => store.lengths(users));
  await count('assemble of 64 users', 1, () => store.assemble(users, x, Int32Array.from({ length: 65 }, (_, i) => 4 * i), tensor(new Float32Array(16), [2, 8])));
  await count('reset of 64 users', 2, () => store.reset(users));
  relay.close();
});

/**
 * Resolves once the server has begun executing the write scripts of `batch` (polls INFO
 * commandstats); throws if the batch settles first.
 */
async function whenWritesStart(server: RedisServer, callsBefore: number, batch: Promise<unknown>): Promise<void> {
  let settled: unknown;
  void batch.then((outcome) => { settled = outcome ?? 'the batch succeeded'; });
  const watcher = createClient({ url: server.url });
  watcher.on('error', () => undefined);
  await watcher.connect();
  try {
    while (settled === undefined)
      if (evalshaCalls(await watcher.info('commandstats')) > callsBefore) return;
    throw new Error(`the batch settled before it began writing: ${String(settled)}`);
  } finally {
    watcher.destroy();
  }
}
const evalshaCalls = (info: string) => Number(/cmdstat_evalsha:calls=(\d+)/.exec(info)?.[1] ?? 0);

// After a failed batch of overwrites (old token values u + 0.25, new u + 0.5): every written user
// holds the new record, every user not written the old one, every user in doubt one of the two.
async function checkOutcome(t: ExecutionContext, store: RedisMemoryStore, e: RedisMemoryStoreError, ids: number[], width: number) {
  const all = [...e.written, ...e.notWritten, ...e.inDoubt];
  t.log(`${e.written.length} written, ${e.notWritten.length} not written, ${e.inDoubt.length} in doubt: ${e.message}`);
  t.is(all.length, ids.length, 'each user is in exactly one list');
  t.is(new Set(all).size, ids.length, 'every user of the call is in a list');
  t.true(all.every((u) => typeof u === 'number' && ids[u] === u), 'only users of the call are listed');
  const { tokens, offsets } = await store.read(ids);
  const v = await tokens.float32();
  const state = (u: number) => {
    const row = Array.from(v.subarray(offsets[u] * width, offsets[u + 1] * width));
    if (row.length === 2 * width && row.every((x) => x === u + 0.5)) return 'new';
    if (row.length === 2 * width && row.every((x) => x === u + 0.25)) return 'old';
    return 'torn';
  };
  for (const u of e.written as number[]) t.is(state(u), 'new', `written user ${u}`);
  for (const u of e.notWritten as number[]) t.is(state(u), 'old', `user ${u} not written`);
  for (const u of e.inDoubt as number[]) t.not(state(u), 'torn', `user ${u} in doubt`);
}

async function overwriteBatch(store: RedisMemoryStore, ids: number[], width: number, value: (u: number) => number) {
  const data = new Float32Array(ids.length * 2 * width);
  ids.forEach((u) => data.fill(value(u), u * 2 * width, (u + 1) * 2 * width));
  return store.update(ids, tensor(data, [ids.length * 2, width]), new Int32Array(ids.length).fill(2));
}

for (const fault of ['SIGKILL', 'SIGSTOP'] as const) {
  redisSerial(`RedisMemoryStore single: server ${fault === 'SIGKILL' ? 'killed' : 'hung'} (${fault}) mid-batch: rejects within timeoutMs with users written / not written / in doubt; no record torn`, async (t) => {
    const server = await RedisServer.start({ durable: true });
    try {
      const client = await connect('single', { url: server.url });  // reconnects forever (node-redis default)
      const width = 16, timeoutMs = 8000, ids = Array.from({ length: 20000 }, (_, u) => u);
      const store = new RedisMemoryStore(client, { slots: 2, width, mode: 'overwrite', timeoutMs });
      await overwriteBatch(new RedisMemoryStore(client, { slots: 2, width, mode: 'overwrite', timeoutMs: 60000 }), ids, width, (u) => u + 0.25);
      const callsBefore = evalshaCalls(await (client as ReturnType<typeof createClient>).info('commandstats'));
      const started = Date.now();
      const batch = overwriteBatch(store, ids, width, (u) => u + 0.5).then(() => undefined, (e) => e);
      await whenWritesStart(server, callsBefore, batch);
      server.signal(fault);
      const e = await batch;
      const elapsed = Date.now() - started;
      t.true(e instanceof RedisMemoryStoreError, String(e));
      t.true(elapsed <= timeoutMs + 500, `rejected after ${elapsed} ms (timeoutMs ${timeoutMs})`);
      t.true(e.written.length + e.inDoubt.length > 0, 'the batch had begun writing');
      t.true(e.notWritten.length + e.inDoubt.length > 0, 'the batch had not finished');
      if (fault === 'SIGSTOP') t.true(e.inDoubt.length > 0 && elapsed >= timeoutMs - 50, 'a hung server leaves the sent writes in doubt until the deadline');
      t.regex(e.message, fault === 'SIGKILL' ? /the connection failed|no answer within/ : /no answer within timeoutMs = 8000/);
      // The server back (from its append-only file when killed): the records tell the lists true.
      if (fault === 'SIGKILL') await server.restart(); else server.signal('SIGCONT');
      await checkOutcome(t, new RedisMemoryStore(await connect('single', { url: server.url }), { slots: 2, width, mode: 'overwrite', timeoutMs: 60000 }), e, ids, width);
    } finally {
      await server.stop();
    }
  });
}

redisSerial('RedisMemoryStore single: a server already down rejects within timeoutMs, every user not written', async (t) => {
  const server = await RedisServer.start();
  try {
    const client = await connect('single', { url: server.url });
    const store = new RedisMemoryStore(client, { slots: 2, width: 4, mode: 'overwrite', timeoutMs: 1000 });
    await server.kill();
    const started = Date.now();
    const e = await overwriteBatch(store, [0, 1, 2], 4, () => 1).then(() => undefined, (err) => err);
    t.true(e instanceof RedisMemoryStoreError, String(e));
    t.true(Date.now() - started <= 1500, `rejected after ${Date.now() - started} ms`);
    t.deepEqual([e.written, e.notWritten, e.inDoubt], [[], [0, 1, 2], []]);
    const r = await store.read([0]).then(() => undefined, (err) => err);
    t.true(r instanceof RedisMemoryStoreError && /^RedisMemoryStore\.read: /.test(r.message), String(r));
  } finally {
    await server.stop();
  }
});

redisSerial('RedisMemoryStore cluster: one of three masters killed mid-batch: rejects with the three lists, some users written; no record torn once it restarts; users on every master', async (t) => {
  const servers = await RedisClusterServers.start(3, { durable: true });
  try {
    const client = await connect('cluster', { rootNodes: servers.rootNodes });
    const width = 16, timeoutMs = 8000, ids = Array.from({ length: 20000 }, (_, u) => u);
    const store = new RedisMemoryStore(client, { slots: 2, width, mode: 'overwrite', timeoutMs });
    await overwriteBatch(new RedisMemoryStore(client, { slots: 2, width, mode: 'overwrite', timeoutMs: 60000 }), ids, width, (u) => u + 0.25);
    const victim = servers.nodes[0];
    const callsBefore = evalshaCalls(await victim.cli('info', 'commandstats'));
    const started = Date.now();
    const batch = overwriteBatch(store, ids, width, (u) => u + 0.5).then(() => undefined, (e) => e);
    await whenWritesStart(victim, callsBefore, batch);
    await victim.kill();
    const e = await batch;
    t.true(e instanceof RedisMemoryStoreError, String(e));
    t.true(Date.now() - started <= timeoutMs + 500, `rejected after ${Date.now() - started} ms`);
    t.true(e.written.length > 0 && e.notWritten.length + e.inDoubt.length > 0, `${e.written.length} written, ${e.notWritten.length} not, ${e.inDoubt.length} in doubt`);
    await victim.restart();
    for (let i = 0; i < 100 && !(await victim.cli('cluster', 'info')).includes('cluster_state:ok'); i++) await new Promise((r) => setTimeout(r, 100));
    await checkOutcome(t, new RedisMemoryStore(await connect('cluster', { rootNodes: servers.rootNodes }), { slots: 2, width, mode: 'overwrite', timeoutMs: 60000 }), e, ids, width);
    // Users spread over every master.
    for (const n of servers.nodes) t.true(Number((await n.cli('dbsize')).trim()) > 1000, `node ${n.port} holds users`);
  } finally {
    await servers.stop();
  }
});

test('lifelong-kernels loads, RedisMemoryStore included, where `redis` cannot be resolved (it is an optional peer dependency)', (t) => {
  const hide = `const M = require('module'); const resolve = M._resolveFilename;
M._resolveFilename = function (request, ...rest) {
  if (request === 'redis' || request.startsWith('@redis/')) { const e = new Error("Cannot find module '" + request + "'"); e.code = 'MODULE_NOT_FOUND'; throw e; }
  return resolve.call(this, request, ...rest);
};`;
  const probe = `let hidden = false; try { require('redis'); } catch { hidden = true; }
const lk = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'index.ts'))});
console.log(JSON.stringify({ hidden, store: typeof lk.RedisMemoryStore, error: typeof lk.RedisMemoryStoreError }));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', `${hide}\n${probe}`], { encoding: 'utf8', env: process.env });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout.trim().split('\n').pop()!), { hidden: true, store: 'function', error: 'function' });
});
