// Issue #8's defects, each pinned by a test that fails without its fix: exceptions inside the
// thread pool, arguments captured at the call (SPEC §11), own names only (SPEC §6), limits checked
// before allocation, linear-time validation, ops that never hold libuv's thread pool, checked tensor
// values, MemoryBank files, and hundreds of ops in flight with their inputs disposed right away.
// Tests that compare the addon's external-memory total run serially (nothing else allocates meanwhile).
import test from 'ava';
import { spawnSync } from 'child_process';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MemoryBank, maskedAttention, reference, sparseAttention, tensor, topK, indexedCrossAttention, zeros, Tensor } from '../lib/index';
import { native } from '../lib/native';
import { compare, parityDevices, Rng } from './helpers';

const external = () => native().liveMemory();

test('an exception inside a thread-pool task rejects its call and leaves the pool healthy', async (t) => {
  for (let round = 0; round < 20; round++) {
    await t.throwsAsync(native()._failInPoolTask(64, round % 8), { message: /failed on purpose/ });
  }
  // The pool still runs real work, and several failing calls in flight do not disturb each other.
  const results = await Promise.allSettled([0, 1, 2, 3].map((i) => native()._failInPoolTask(32, i * 7)));
  t.true(results.every((r) => r.status === 'rejected'));
  const q = tensor(new Float32Array(200 * 2 * 8).fill(0.5), [200, 2, 8]);
  const { output } = await maskedAttention(q, q, q, { q: { offsets: new Int32Array([0, 200]) } });
  t.true((await output.float32()).every((x) => Math.abs(x - 0.5) < 1e-6));
  q.dispose();
  output.dispose();
});

for (const device of parityDevices()) {
  test(`${device}: MemoryBank ops capture userIds / counts / tokens at the call`, async (t) => {
    const width = 4;
    const bank = new MemoryBank({ users: 4, slots: 3, width, mode: 'append', device });
    // One ids / counts buffer reused for four queued updates, each tokens tensor disposed at once.
    const ids = new Int32Array(1), counts = new Int32Array([1]);
    const pending: Promise<void>[] = [];
    for (let u = 0; u < 4; u++) {
      ids[0] = u;
      const tokens = tensor(new Float32Array(width).fill(u + 1), [1, width], { device });
      pending.push(bank.update(ids, tokens, counts));
      tokens.dispose();
    }
    ids[0] = 0;
    counts[0] = 2;
    await Promise.all(pending);
    t.deepEqual(Array.from(bank.lengths()), [1, 1, 1, 1]);
    const read = await bank.read(Int32Array.from([0, 1, 2, 3]));
    t.deepEqual(Array.from(await read.tokens.float32()), [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]);
    read.tokens.dispose();

    // updateFrom's layout and assemble's inputs are captured too.
    const hidden = tensor(Float32Array.from({ length: 3 * width }, (_, i) => i), [3, width], { device });
    const layout = { offsets: new Int32Array([0, 3]), roles: new Uint8Array([0, 1, 1]) };
    const from = bank.updateFrom(new Int32Array([3]), hidden, layout, 'memory');
    hidden.dispose();
    layout.roles.fill(0);
    await from;
    t.deepEqual(Array.from(bank.lengths(new Int32Array([3]))), [3]);
    const items = tensor(new Float32Array(2 * width).fill(9), [2, width], { device });
    const queries = tensor(new Float32Array(width).fill(7), [1, width], { device });
    const itemOffsets = new Int32Array([0, 2]);
    const assembled = bank.assemble(new Int32Array([1]), items, itemOffsets, queries);
    items.dispose();
    queries.dispose();
    itemOffsets[1] = 0;
    const { hidden: h, layout: l } = await assembled;
    t.deepEqual(Array.from(l.offsets), [0, 4]);
    t.deepEqual(Array.from(await h.float32()), [2, 2, 2, 2, 9, 9, 9, 9, 9, 9, 9, 9, 7, 7, 7, 7]);
    h.dispose();
    bank.dispose();
  });

  test(`${device}: sparseAttention and maskedAttention capture their inputs at the call`, async (t) => {
    const rng = new Rng(5);
    const make = () => ({
      q: tensor(rng.floats(2 * 2 * 8), [2, 2, 8], { device }),
      k: tensor(rng.floats(5 * 1 * 8), [5, 1, 8], { device }),
      v: tensor(rng.floats(5 * 1 * 8), [5, 1, 8], { device }),
      idx: tensor(new Int32Array([0, 2, 1, -1]), [2, 2], { device }),
    });
    const a = make();
    const layout = { qOffsets: new Int32Array([0, 1, 2]), kOffsets: new Int32Array([0, 3, 5]) };
    const want = await sparseAttention(a.q, a.k, a.v, a.idx, layout);
    const wantData = await want.output.float32();
    const call = sparseAttention(a.q, a.k, a.v, a.idx, layout);
    for (const x of [a.q, a.k, a.v, a.idx]) x.dispose();
    layout.kOffsets.set([0, 1, 5]);  // would make index 2 of query 0 invalid, and move query 1's keys
    const got = await call;
    t.deepEqual(Array.from(await got.output.float32()), Array.from(wantData));

    const b = make();
    const offsets = new Int32Array([0, 2]);
    const ref = await maskedAttention(b.q, b.q, b.q, { q: { offsets }, rule: 'full' });
    const pending = maskedAttention(b.q, b.q, b.q, { q: { offsets }, rule: 'full' });
    b.q.dispose();
    offsets[1] = 1;
    t.deepEqual(Array.from(await (await pending).output.float32()), Array.from(await ref.output.float32()));
    for (const x of [want.output, got.output, ref.output, b.k, b.v, b.idx]) x.dispose();
  });

  test(`${device}: names are own names only ('toString', '__proto__', 'constructor' are unknown)`, async (t) => {
    const q = tensor(new Float32Array(3 * 8).fill(1), [3, 1, 8], { device });
    const layout = { q: { offsets: new Int32Array([0, 3]) } };
    for (const name of ['toString', 'constructor', '__proto__', 'hasOwnProperty', 'valueOf']) {
      await t.throwsAsync(maskedAttention(q, q, q, { ...layout, rule: name as never }), { instanceOf: RangeError, message: /^options\.rule: unknown preset/ }, name);
      await t.throwsAsync(maskedAttention(q, q, q, { ...layout, rule: { item: { item: { seg: name as never, causal: true } } } }),
        { instanceOf: RangeError, message: /^options\.rule\.item\.item\.seg:/ }, name);
      t.throws(() => new MemoryBank({ users: 1, slots: 1, width: 1, mode: 'overwrite', dtype: name as never }), { instanceOf: TypeError, message: /^dtype:/ }, name);
      t.throws(() => tensor([1], [1], { dtype: name as never }), { instanceOf: TypeError, message: /^dtype:/ }, name);
    }
    // A rule whose entries are inherited, not own, allows nothing.
    const inherited = Object.create({ item: { item: { seg: 'any', causal: false } } });
    const { output } = await maskedAttention(q, q, q, { ...layout, rule: inherited });
    t.true((await output.float32()).every((x) => x === 0));
    output.dispose();

    const bank = new MemoryBank({ users: 2, slots: 2, width: 8, mode: 'overwrite', device });
    await bank.update(new Int32Array([0, 1]), tensor(new Float32Array(32).fill(3), [4, 8], { device }), new Int32Array([2, 2]));
    const hidden = tensor(new Float32Array(16), [2, 8], { device });
    for (const name of ['constructor', 'toString', '__proto__']) {
      await t.throwsAsync(bank.updateFrom(new Int32Array([0]), hidden, { offsets: new Int32Array([0, 2]) }, name as never), { instanceOf: TypeError, message: /^select:/ });
      await t.throwsAsync(bank.updateFrom(new Int32Array([0]), hidden, { offsets: new Int32Array([0, 2]) }, { role: name as never, last: 1 }), { instanceOf: TypeError, message: /^select\.role:/ });
    }
    t.deepEqual(Array.from(bank.lengths()), [2, 2], 'rejected updateFrom calls emptied no memory');
    for (const x of [q, hidden]) x.dispose();
    bank.dispose();
  });

  test.serial(`${device}: sizes are checked before anything is allocated`, async (t) => {
    const before = external();
    const s = zeros([64, 2], { device });
    await t.throwsAsync(topK(s, 2 ** 28), { instanceOf: RangeError, message: /^k: the (CPU|CUDA) top-k supports k <= \d+, got 268435456/ });
    const q = zeros([2, 1, 8], { device }), kv = zeros([4, 1, 8], { device });
    const qI = zeros([2, 1, 8], { device }), kI = zeros([4, 8], { device }), w = zeros([2, 1], { device });
    await t.throwsAsync(indexedCrossAttention(q, kv, kv, { indexer: { q: qI, k: kI, w }, topK: 2 ** 28, qOffsets: new Int32Array([0, 2]), kOffsets: new Int32Array([0, 4]) }),
      { instanceOf: RangeError, message: /^options\.topK:/ });
    for (const x of [s, q, kv, qI, kI, w]) x.dispose();
    t.deepEqual(external(), before, 'no output left allocated');
  });

  test(`${device}: reset() with bad ids rejects (never throws synchronously) and changes nothing`, async (t) => {
    const bank = new MemoryBank({ users: 3, slots: 1, width: 2, mode: 'overwrite', device });
    await bank.update(new Int32Array([1]), tensor(new Float32Array([1, 2]), [1, 2], { device }), new Int32Array([1]));
    let promise: Promise<void> | undefined;
    t.notThrows(() => { promise = bank.reset(new Int32Array([1, 7])); });
    await t.throwsAsync(promise!, { instanceOf: RangeError, message: /^userIds: user id 7/ });
    await t.throwsAsync(bank.reset([1] as never), { instanceOf: TypeError, message: /^userIds:/ });
    t.deepEqual(Array.from(bank.lengths()), [0, 1, 0]);
    bank.dispose();
  });
}

test.serial('hundreds of ops in flight, inputs disposed and arrays reused right after each call, all equal the reference', async (t) => {
  const rng = new Rng(99);
  const devices = parityDevices();
  const offsets = new Int32Array(3);
  const jobs: Promise<void>[] = [];
  const before = external();
  for (let i = 0; i < 300; i++) {
    const device = devices[i % devices.length];
    const a = rng.int(0, 9), b = rng.int(0, 9), T = a + b;
    offsets.set([0, a, T]);
    const qd = rng.floats(T * 2 * 8), kd = rng.floats(T * 8), vd = rng.floats(T * 8);
    const rule = rng.pick(['causal', 'full', 'persrec', 'rec2pm-update'] as const);
    const want = reference.maskedAttention({ data: qd, shape: [T, 2, 8] }, { data: kd, shape: [T, 1, 8] }, { data: vd, shape: [T, 1, 8] },
      { q: { offsets: offsets.slice() }, rule }).output.data;
    const q = tensor(qd, [T, 2, 8], { device }), k = tensor(kd, [T, 1, 8], { device }), v = tensor(vd, [T, 1, 8], { device });
    const call = maskedAttention(q, k, v, { q: { offsets }, rule });
    q.dispose(); k.dispose(); v.dispose();
    jobs.push(call.then(async ({ output }: { output: Tensor }) => {
      const msg = compare(await output.float32(), want, 'float32', `op ${i} on ${device}`);
      output.dispose();
      if (msg) throw new Error(msg);
    }));
  }
  offsets.fill(0);
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
  t.deepEqual(failed.map((r) => String(r.reason)), []);
  t.deepEqual(external(), before, 'every input and output freed');
});

test('tensor values are checked: no silent int32 wrap-around, no NaN from non-numbers', (t) => {
  t.throws(() => tensor([2 ** 40], [1], { dtype: 'int32' }), { instanceOf: RangeError, message: /^data: int32 tensors need integers in \[-2\^31, 2\^31 - 1\], got 1099511627776/ });
  t.throws(() => tensor([-(2 ** 31) - 1], [1], { dtype: 'int32' }), { instanceOf: RangeError, message: /^data:/ });
  t.throws(() => tensor(new Float64Array([2 ** 31]), [1], { dtype: 'int32' }), { instanceOf: RangeError, message: /^data:/ });
  t.throws(() => tensor(['a', {}, null] as never, [3]), { instanceOf: TypeError, message: /^data: element 0 is string/ });
  t.throws(() => tensor([1, null] as never, [2], { dtype: 'bfloat16' }), { instanceOf: TypeError, message: /^data: element 1 is null/ });
  t.throws(() => tensor([1, 2], [2], null as never), { instanceOf: TypeError, message: /^options:/ });
  const ok = tensor([-(2 ** 31), 2 ** 31 - 1], [2], { dtype: 'int32' });
  t.is(ok.dtype, 'int32');
  ok.dispose();
});

test('MemoryBank.load checks the header before reading a file, and every header field', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lk-load-'));
  // A 1.5 GiB junk file (sparse: no disk used) is refused from its header, without reading it.
  const junk = path.join(dir, 'junk.bin');
  const fh = await fsp.open(junk, 'w');
  await fh.write(Buffer.from('not a bank'));
  await fh.truncate(1.5 * 2 ** 30);
  await fh.close();
  const rss = process.memoryUsage().rss;
  await t.throwsAsync(MemoryBank.load(junk), { message: /not a lifelong-kernels memory bank file/ });
  t.true(process.memoryUsage().rss - rss < 256 * 2 ** 20, 'the junk file was not read into memory');

  const bank = new MemoryBank({ users: 2, slots: 2, width: 3, mode: 'append' });
  const file = path.join(dir, 'bank.bin');
  await bank.save(file);
  bank.dispose();
  const good = await fsp.readFile(file);
  const { crc32 } = await import('../lib/crc32');
  const withByte = (at: number, value: number) => {
    const b = Buffer.from(good);
    b[at] = value;
    b.writeUInt32LE(crc32(b.subarray(0, b.length - 4), 0) >>> 0, b.length - 4);  // a valid checksum
    return b;
  };
  for (const [what, at, value] of [['mode', 25, 2], ['overflow', 26, 9], ['reserved', 29, 1], ['dtype', 24, 3]] as const) {
    await fsp.writeFile(file, withByte(at, value));
    await t.throwsAsync(MemoryBank.load(file), { message: /corrupt header/ }, what);
  }
  await fsp.writeFile(file, good);
  (await MemoryBank.load(file)).dispose();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('MemoryBank.save removes the temporary files of dead writers, and keeps those of live ones', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lk-tmp-'));
  const file = path.join(dir, 'bank.bin');
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  const deadPid = Number(dead.stdout);
  const stale = path.join(dir, `.bank.bin.${deadPid}.1700000000000.tmp`);
  const live = path.join(dir, `.bank.bin.${process.ppid}.1700000000000.tmp`);  // our parent is alive
  const other = path.join(dir, `.other.bin.${deadPid}.1700000000000.tmp`);      // another file's
  for (const f of [stale, live, other]) await fsp.writeFile(f, 'partial');
  const bank = new MemoryBank({ users: 1, slots: 1, width: 1, mode: 'overwrite' });
  await bank.save(file);
  bank.dispose();
  const left = (await fsp.readdir(dir)).sort();
  t.deepEqual(left, [path.basename(live), path.basename(other), 'bank.bin'].sort());
  await fsp.rm(dir, { recursive: true, force: true });
});
