// MemoryBank (SPEC §4) against the reference bank, on every backend: random update streams,
// blend, updateFrom, the whole Rec2PM inference step, nothing lost on bad calls, call order, files.
import test from 'ava';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MemoryBank, maskedAttention, reference, tensor, DType } from '../lib/index';
import { ReferenceMemoryBank } from '../lib/reference/memory-bank';
import { compare, parityDevices, Rng } from './helpers';

type Mode = { mode: 'overwrite' | 'append'; overflow?: 'error' | 'evict-oldest' };
const MODES: Mode[] = [{ mode: 'overwrite' }, { mode: 'append', overflow: 'error' }, { mode: 'append', overflow: 'evict-oldest' }];

function pickUsers(rng: Rng, users: number, n: number): Int32Array {
  const all = Array.from({ length: users }, (_, i) => i);
  for (let i = all.length - 1; i > 0; i--) { const j = rng.int(0, i); [all[i], all[j]] = [all[j], all[i]]; }
  return Int32Array.from(all.slice(0, n));
}

async function expectSame(t: import('ava').ExecutionContext, bank: MemoryBank, ref: ReferenceMemoryBank, dtype: DType, what: string) {
  const ids = Int32Array.from({ length: bank.users }, (_, i) => i);
  const got = await bank.read(ids);
  const want = ref.read(ids);
  t.deepEqual(Array.from(got.offsets), Array.from(want.offsets), `${what}: offsets`);
  t.deepEqual(Array.from(bank.lengths()), Array.from(ref.lengths()), `${what}: lengths`);
  t.is(compare(await got.tokens.float32(), want.tokens.data, dtype, 'tokens'), '', what);
  got.tokens.dispose();
}

for (const device of parityDevices()) {
  for (const m of MODES) {
    for (const dtype of ['float32', 'bfloat16'] as DType[]) {
      test(`MemoryBank ${device} ${m.mode}${m.overflow ? '/' + m.overflow : ''} ${dtype}: random update streams equal the reference`, async (t) => {
        const rng = new Rng(m.mode.length * 31 + (m.overflow?.length ?? 0) + dtype.length);
        const users = 12, slots = rng.int(1, 6), width = rng.pick([1, 3, 64, 100]);
        const bank = new MemoryBank({ users, slots, width, dtype: dtype as 'float32', device, ...m });
        const ref = new ReferenceMemoryBank({ users, slots, width, ...m });
        for (let step = 0; step < 12; step++) {
          const ids = pickUsers(rng, users, rng.int(0, users));
          const counts = Int32Array.from(ids, (u) => {
            const room = m.mode === 'append' && m.overflow === 'error' ? slots - ref.memories[u].length : slots;
            return rng.int(0, Math.max(0, room));
          });
          const total = counts.reduce((a, b) => a + b, 0);
          const x = tensor(rng.floats(total * width), [total, width], { dtype, device });
          const exact = await x.float32();
          const blend = m.mode === 'overwrite' && rng.bool(0.4) ? rng.pick([0.25, 0.5, 1]) : undefined;
          await bank.update(ids, x, counts, { blend });
          ref.update(ids, { data: exact, shape: [total, width] }, counts, { blend });
          await expectSame(t, bank, ref, dtype, `step ${step}`);
          if (rng.bool(0.2)) { const r = pickUsers(rng, users, 2); await bank.reset(r); ref.reset(r); }
          x.dispose();
        }
        bank.dispose();
      });
    }

    test(`MemoryBank ${device} ${m.mode}${m.overflow ? '/' + m.overflow : ''}: the Rec2PM inference step (assemble -> maskedAttention -> updateFrom) equals the reference over several segments`, async (t) => {
      const rng = new Rng(77 + m.mode.length);
      const users = 5, C = 4, width = 32, H = 2, D = 16;
      const slots = m.mode === 'overwrite' ? C : 3 * C;
      const bank = new MemoryBank({ users, slots, width, device, ...m });
      const ref = new ReferenceMemoryBank({ users, slots, width, ...m });
      const queries = tensor(rng.floats(C * width), [C, width], { device });
      const qExact = await queries.float32();
      for (let seg = 0; seg < 4; seg++) {
        const ids = pickUsers(rng, users, rng.int(1, users));
        if (m.overflow === 'error') for (const u of ids) if (ref.memories[u].length + C > slots) { await bank.reset(Int32Array.of(u)); ref.reset(Int32Array.of(u)); }
        const itemOffsets = new Int32Array(ids.length + 1);
        ids.forEach((_, i) => { itemOffsets[i + 1] = itemOffsets[i] + rng.pick([0, 1, 7, 33]); });
        const nItems = itemOffsets[ids.length];
        const items = tensor(rng.floats(nItems * width), [nItems, width], { device });
        const { hidden, layout } = await bank.assemble(ids, items, itemOffsets, queries);
        const refAsm = ref.assemble(ids, { data: await items.float32(), shape: [nItems, width] }, itemOffsets, { data: qExact, shape: [C, width] });
        t.deepEqual(Array.from(layout.offsets), Array.from(refAsm.layout.offsets));
        t.deepEqual(Array.from(layout.roles), Array.from(refAsm.layout.roles));
        t.is(compare(await hidden.float32(), refAsm.hidden.data, 'float32', 'assembled'), '');
        // The hidden rows serve as q, k and v of a toy one-layer model: [T, width] = [T, H, D].
        const T = layout.offsets[ids.length];
        const qkv = tensor(await hidden.float32(), [T, H, D], { device });
        const { output } = await maskedAttention(qkv, qkv, qkv, { q: layout, rule: 'rec2pm-update' });
        const refOut = reference.maskedAttention({ data: refAsm.hidden.data, shape: [T, H, D] }, { data: refAsm.hidden.data, shape: [T, H, D] },
          { data: refAsm.hidden.data, shape: [T, H, D] }, { q: refAsm.layout, rule: 'rec2pm-update' });
        const outRows = tensor(await output.float32(), [T, width], { device });
        await bank.updateFrom(ids, outRows, layout, { role: 'memory', last: C });
        ref.updateFrom(ids, { data: refOut.output.data, shape: [T, width] }, refAsm.layout, { role: 'memory', last: C });
        await expectSame(t, bank, ref, 'float32', `segment ${seg}`);
        for (const x of [items, hidden, qkv, output, outRows]) x.dispose();
      }
    });
  }

  test(`MemoryBank ${device}: updateFrom picks rows by role, and the last n of them`, async (t) => {
    const width = 2;
    const bank = new MemoryBank({ users: 3, slots: 4, width, device, mode: 'append', overflow: 'evict-oldest' });
    const hidden = tensor(Array.from({ length: 8 * width }, (_, i) => i), [8, width], { device });
    const layout = { offsets: new Int32Array([0, 5, 8]), roles: new Uint8Array([0, 1, 0, 1, 1, 2, 1, 0]) };
    await bank.updateFrom(new Int32Array([2, 0]), hidden, layout, 'memory');
    let r = await bank.read(new Int32Array([2, 0]));
    t.deepEqual(Array.from(await r.tokens.float32()), [2, 3, 6, 7, 8, 9, 12, 13]);
    await bank.updateFrom(new Int32Array([2, 0]), hidden, layout, { role: 'memory', last: 2 });
    r = await bank.read(new Int32Array([2]));
    t.deepEqual(Array.from(await r.tokens.float32()), [6, 7, 8, 9, 6, 7, 8, 9]); // evict-oldest kept the newest 4
    await bank.updateFrom(new Int32Array([1, 0]), hidden, layout, 'target');
    t.deepEqual(Array.from(bank.lengths()), [3, 0, 4]); // sequence 0 has no target row; sequence 1 has one
  });

  test(`MemoryBank ${device}: every invalid call throws the right error and leaves the bank bit-for-bit unchanged`, async (t) => {
    const width = 4, slots = 3;
    const bank = new MemoryBank({ users: 4, slots, width, device, mode: 'append', overflow: 'error' });
    const blendBank = new MemoryBank({ users: 4, slots, width, device, mode: 'overwrite' });
    const rows = (n: number, dtype: DType = 'float32') => tensor(Array.from({ length: n * width }, (_, i) => i + 0.5), [n, width], { dtype, device });
    await bank.update(new Int32Array([0, 1]), rows(3), new Int32Array([2, 1]));
    const snapshot = async (b: MemoryBank) => {
      const r = await b.read(Int32Array.from({ length: b.users }, (_, i) => i));
      return { data: Array.from(await r.tokens.data()), offsets: Array.from(r.offsets), lengths: Array.from(b.lengths()) };
    };
    const before = await snapshot(bank);
    const bad: [string, () => Promise<unknown>, RegExp, typeof TypeError | typeof RangeError][] = [
      ['user id out of range', () => bank.update(new Int32Array([4]), rows(1), new Int32Array([1])), /^userIds: user id 4 at 0 is out of range/, RangeError],
      ['negative user id', () => bank.update(new Int32Array([-1]), rows(1), new Int32Array([1])), /^userIds: user id -1/, RangeError],
      ['duplicate user id', () => bank.update(new Int32Array([2, 2]), rows(2), new Int32Array([1, 1])), /^userIds: duplicate user id 2/, RangeError],
      ['count larger than slots', () => bank.update(new Int32Array([3]), rows(4), new Int32Array([4])), /^counts: user 3 gets 4 tokens, expected 0 to 3/, RangeError],
      ['overflow under error', () => bank.update(new Int32Array([2, 0]), rows(3), new Int32Array([1, 2])), /^counts: user 0 holds 2 tokens and 2 more overflow 3 slots/, RangeError],
      ['width mismatch', () => bank.update(new Int32Array([2]), tensor([1, 2, 3], [1, 3], { device }), new Int32Array([1])), /^tokens: width 3 differs/, RangeError],
      ['dtype mismatch', () => bank.update(new Int32Array([2]), rows(1, 'float16'), new Int32Array([1])), /^tokens: dtype float16 differs/, TypeError],
      ['rows not summing to counts', () => bank.update(new Int32Array([2]), rows(2), new Int32Array([1])), /^tokens: expected 1 rows/, RangeError],
      ['counts wrong type', () => bank.update(new Int32Array([2]), rows(1), [1] as never), /^counts: expected an Int32Array/, TypeError],
      ['userIds wrong type', () => bank.update([2] as never, rows(1), new Int32Array([1])), /^userIds: expected an Int32Array/, TypeError],
      ['blend on an append bank', () => bank.update(new Int32Array([2]), rows(1), new Int32Array([1]), { blend: 0.5 }), /^options\.blend: only a mode 'overwrite' bank blends/, RangeError],
      ['layout of another batch', () => bank.updateFrom(new Int32Array([2]), rows(2), { offsets: new Int32Array([0, 1, 2]) }), /^layout: 2 sequences for 1 users/, RangeError],
      ['bad select', () => bank.updateFrom(new Int32Array([2]), rows(2), { offsets: new Int32Array([0, 2]) }, 'query' as never), /^select:/, TypeError],
      ['assemble with bad item offsets', () => bank.assemble(new Int32Array([2]), rows(2), new Int32Array([0, 3]), rows(1)), /^itemOffsets\.offsets: the last offset/, RangeError],
    ];
    for (const [name, call, message, instanceOf] of bad) {
      await t.throwsAsync(call, { instanceOf, message }, name);
      t.deepEqual(await snapshot(bank), before, `${name}: bank unchanged`);
    }
    await blendBank.update(new Int32Array([1]), rows(2), new Int32Array([2]));
    const blendBefore = await snapshot(blendBank);
    await t.throwsAsync(() => blendBank.update(new Int32Array([1]), rows(2), new Int32Array([2]), { blend: 1.5 }), { instanceOf: RangeError, message: /^options\.blend: expected a number in \(0, 1\]/ });
    await t.throwsAsync(() => blendBank.update(new Int32Array([1]), rows(2), new Int32Array([2]), { blend: 0 }), { instanceOf: RangeError });
    t.deepEqual(await snapshot(blendBank), blendBefore);
    t.throws(() => new MemoryBank({ users: 0, slots: 1, width: 1, mode: 'overwrite' }), { instanceOf: RangeError, message: /^users:/ });
    t.throws(() => new MemoryBank({ users: 1, slots: 1, width: 1, mode: 'ring' as never }), { instanceOf: TypeError, message: /^mode:/ });
    bank.dispose();
    await t.throwsAsync(() => bank.update(new Int32Array([2]), rows(1), new Int32Array([1])), { message: 'memory bank is disposed' });
    await t.throwsAsync(() => bank.read(new Int32Array([0])), { message: 'memory bank is disposed' });
  });

  test(`MemoryBank ${device}: concurrent updates apply in call order`, async (t) => {
    const bank = new MemoryBank({ users: 2, slots: 8, width: 1, device, mode: 'append', overflow: 'evict-oldest' });
    const calls = [];
    for (let i = 0; i < 20; i++) calls.push(bank.update(new Int32Array([i % 2]), tensor([i], [1, 1], { device }), new Int32Array([1])));
    const failing = bank.update(new Int32Array([9]), tensor([0], [1, 1], { device }), new Int32Array([1]));
    calls.push(bank.update(new Int32Array([0]), tensor([100], [1, 1], { device }), new Int32Array([1])));
    await t.throwsAsync(failing, { instanceOf: RangeError });
    await Promise.all(calls);
    const r = await bank.read(new Int32Array([0, 1]));
    t.deepEqual(Array.from(await r.tokens.float32()), [6, 8, 10, 12, 14, 16, 18, 100, 5, 7, 9, 11, 13, 15, 17, 19]);
  });

  test(`MemoryBank ${device}: save / load round trip is exact; truncated, corrupt or other-version files are errors`, async (t) => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lk-bank-'));
    const file = path.join(dir, 'bank.lkmb');
    const rng = new Rng(5);
    const bank = new MemoryBank({ users: 6, slots: 3, width: 5, dtype: 'float16', device, mode: 'append', overflow: 'evict-oldest' });
    for (let i = 0; i < 4; i++) await bank.update(new Int32Array([i, 5]), tensor(rng.floats(4 * 5), [4, 5], { dtype: 'float16', device }), new Int32Array([2, 2]));
    await bank.save(file);
    const loaded = await MemoryBank.load(file, { device });
    const ids = Int32Array.from({ length: 6 }, (_, i) => i);
    t.deepEqual(Array.from(await (await loaded.read(ids)).tokens.data()), Array.from(await (await bank.read(ids)).tokens.data()));
    t.deepEqual(Array.from(loaded.lengths()), Array.from(bank.lengths()));
    t.is(loaded.mode, 'append');
    t.is(loaded.overflow, 'evict-oldest');
    t.is(loaded.dtype, 'float16');
    t.deepEqual((await fsp.readdir(dir)).sort(), ['bank.lkmb'], 'no temporary file left behind');
    const bytes = await fsp.readFile(file);
    await fsp.writeFile(path.join(dir, 'short'), bytes.subarray(0, bytes.length - 7));
    await t.throwsAsync(() => MemoryBank.load(path.join(dir, 'short')), { message: /truncated or corrupt/ });
    const flipped = Buffer.from(bytes); flipped[100] ^= 0x10;
    await fsp.writeFile(path.join(dir, 'flipped'), flipped);
    await t.throwsAsync(() => MemoryBank.load(path.join(dir, 'flipped')), { message: /checksum mismatch/ });
    const v2 = Buffer.from(bytes); v2.writeUInt32LE(2, 8);
    await fsp.writeFile(path.join(dir, 'v2'), v2);
    await t.throwsAsync(() => MemoryBank.load(path.join(dir, 'v2')), { message: /format version 2 is not supported/ });
    await fsp.writeFile(path.join(dir, 'junk'), 'not a bank at all, just text');
    await t.throwsAsync(() => MemoryBank.load(path.join(dir, 'junk')), { message: /not a lifelong-kernels memory bank/ });
    // A failed save leaves the previous file as it was.
    const previous = await fsp.readFile(file);
    await t.throwsAsync(() => bank.save(path.join(dir, 'missing-folder', 'x.lkmb')));
    bank.dispose();
    await t.throwsAsync(() => bank.save(file), { message: 'memory bank is disposed' });
    t.deepEqual(await fsp.readFile(file), previous);
    await fsp.rm(dir, { recursive: true, force: true });
  });
}

test('MemoryBank scale: 1,000,000 users x 4 slots x 64 float32 (~1 GB) on the CPU, 4,096 users updated in one call', async (t) => {
  const users = 1_000_000, slots = 4, width = 64;
  const bank = new MemoryBank({ users, slots, width, mode: 'overwrite' });
  t.is(bank.bytesPerUser, 1024);
  const rng = new Rng(9);
  const ids = Int32Array.from({ length: 4096 }, (_, i) => (i * 244_140 + 17) % users);
  const x = tensor(rng.floats(4096 * slots * width), [4096 * slots, width]);
  await bank.update(ids, x, new Int32Array(4096).fill(slots));
  const probe = Int32Array.of(ids[0], ids[4095], 999_999);
  const r = await bank.read(probe);
  const data = await r.tokens.float32();
  const src = await x.float32();
  t.deepEqual(Array.from(r.offsets), [0, 4, 8, ids.includes(999_999) ? 12 : 8]);
  t.deepEqual(Array.from(data.subarray(0, 4 * width)), Array.from(src.subarray(0, 4 * width)));
  t.deepEqual(Array.from(data.subarray(4 * width, 8 * width)), Array.from(src.subarray(4095 * 4 * width, 4096 * 4 * width)));
  bank.dispose();
});
