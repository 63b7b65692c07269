// Tensors in a larger program (SPEC §11): views (reshape / slice) over reference-counted storage,
// concat, zero-copy wrapping of a caller's array, copyTo, raw bytes, structured clone.
import test from 'ava';
import { MessageChannel } from 'worker_threads';
import * as util from 'util';
import * as os from 'os';
import * as path from 'path';
import { concat, maskedAttention, MemoryBank, reference, tensor, Tensor, zeros } from '../lib/index';
import { native } from '../lib/native';
import { compare, parityDevices, Rng } from './helpers';

const live = () => native().liveMemory();
const gc = (globalThis as { gc?: () => void }).gc!;

for (const device of parityDevices()) {
  test.serial(`reshape and slice are views on ${device}: no copy, storage freed with the last view`, async (t) => {
    const before = live();
    const rng = new Rng(11);
    for (let trial = 0; trial < 25; trial++) {
      const rows = rng.int(0, 9), cols = rng.int(1, 7);
      const values = rng.floats(rows * cols);
      const x = tensor(values, [rows, cols], { device });
      const owned = live();
      t.is(owned.buffers, before.buffers + 1);
      const start = rng.int(0, rows), end = rng.int(start, rows);
      const s = x.slice(start, end);
      t.deepEqual(s.shape, [end - start, cols]);
      t.deepEqual(Array.from(await s.data()), Array.from(values.subarray(start * cols, end * cols)));
      const r = x.reshape([cols, -1]);
      t.deepEqual(r.shape, [cols, rows]);
      const flat = s.reshape([-1]);
      t.deepEqual(flat.shape, [(end - start) * cols]);
      if (end > start) {
        const shaped = flat.reshape([end - start, cols]);
        const inner = shaped.slice(end - start - 1);  // slice of a view of a view
        t.deepEqual(Array.from(await inner.data()), Array.from(values.subarray((end - 1) * cols, end * cols)));
        inner.dispose();
        shaped.dispose();
      }
      t.deepEqual(live(), owned, 'views allocate nothing');
      x.dispose();
      r.dispose();
      t.deepEqual(Array.from(await flat.data()), Array.from(values.subarray(start * cols, end * cols)), 'a view keeps its storage alive');
      t.deepEqual(live(), owned);
      s.dispose();
      t.deepEqual(live(), owned, 'flat still holds it');
      flat.dispose();
      t.deepEqual(live(), before, 'the last view frees it');
    }
  });

  test(`reshape / slice reject what does not fit, naming the argument, on ${device}`, (t) => {
    const x = tensor(new Float32Array(12), [3, 4], { device });
    t.throws(() => x.reshape([5, 2]), { instanceOf: RangeError, message: /^shape: \[5, 2\] holds 10 elements/ });
    t.throws(() => x.reshape([-1, -1]), { instanceOf: RangeError, message: /^shape: at most one -1/ });
    t.throws(() => x.reshape([5, -1]), { instanceOf: RangeError, message: /^shape: \[5, -1\] cannot hold/ });
    t.throws(() => x.reshape([2.5, 4]), { instanceOf: RangeError, message: /^shape:/ });
    t.throws(() => x.slice(2, 1), { instanceOf: RangeError, message: /^end: expected 2 to 3, got 1/ });
    t.throws(() => x.slice(4), { instanceOf: RangeError, message: /^start: expected 0 to 3/ });
    t.throws(() => x.slice(-1), { instanceOf: RangeError, message: /^start:/ });
    t.throws(() => x.slice(0.5), { instanceOf: TypeError, message: /^start: expected an integer/ });
    t.throws(() => x.reshape([]).slice(0), { instanceOf: RangeError });
    x.dispose();
    t.throws(() => x.reshape([12]), { message: 'tensor is disposed' });
    t.throws(() => x.slice(0), { message: 'tensor is disposed' });
  });

  test(`views feed the ops as copies do: a packed [3, T, H, D] qkv sliced and reshaped, on ${device}`, async (t) => {
    const rng = new Rng(5);
    const T = 37, H = 2, D = 16;
    const offsets = new Int32Array([0, 1, 17, 37]);
    for (const dtype of ['float32', 'float16'] as const) {
      const packed = tensor(rng.floats(3 * T * H * D), [3, T * H * D], { dtype, device });
      const [q, k, v] = [0, 1, 2].map((i) => packed.slice(i, i + 1).reshape([T, H, D]));
      packed.dispose();
      const { output, lse } = await maskedAttention(q, k, v, { q: { offsets }, rule: 'causal', returnLse: true });
      const [qd, kd, vd] = await Promise.all([q.float32(), k.float32(), v.float32()]);
      const ref = reference.maskedAttention({ data: qd, shape: [T, H, D] }, { data: kd, shape: [T, H, D] }, { data: vd, shape: [T, H, D] },
        { q: { offsets }, rule: 'causal', returnLse: true });
      t.is(compare(await output.float32(), ref.output.data, dtype, 'output'), '');
      t.is(compare(await lse.data(), ref.lse!.data, 'float32', 'lse'), '');
      for (const x of [q, k, v, output, lse]) x.dispose();
    }
  });

  test(`concat joins along dimension 0 (a copy), inputs disposable at once, on ${device}`, async (t) => {
    const rng = new Rng(9);
    for (const dtype of ['float32', 'bfloat16', 'int32'] as const) {
      const cols = rng.int(1, 5);
      const parts = Array.from({ length: rng.int(1, 5) }, () => rng.int(0, 6));
      const arrays = parts.map((rows) => Int32Array.from({ length: rows * cols }, () => rng.int(-100, 100)));
      const tensors = arrays.map((a, i) => tensor(a, [parts[i], cols], { dtype, device }));
      const joined = concat(tensors);
      for (const x of tensors) x.dispose();
      const out = await joined;
      t.deepEqual(out.shape, [parts.reduce((a, b) => a + b, 0), cols]);
      const expected = arrays.flatMap((a) => Array.from(a));
      const got = dtype === 'int32' ? Array.from((await out.data()) as Int32Array) : Array.from(await out.float32());
      t.deepEqual(got, expected);
      out.dispose();
    }
    const a = zeros([2, 3], { device }), b = zeros([2, 4], { device }), c = zeros([2, 3], { dtype: 'float16', device });
    await t.throwsAsync(concat([a, b]), { instanceOf: RangeError, message: /^tensors\[1\]: shape \[2, 4\] does not match/ });
    await t.throwsAsync(concat([a, c]), { instanceOf: TypeError, message: /^tensors\[1\]: dtype float16 differs/ });
    await t.throwsAsync(concat([]), { instanceOf: TypeError, message: /^tensors:/ });
    await t.throwsAsync(concat([a, 'x' as unknown as Tensor<'float32'>]), { instanceOf: TypeError, message: /^tensors\[1\]: expected a Tensor/ });
  });

  test(`copyTo reads into the caller's array, checking its class and length, on ${device}`, async (t) => {
    const rng = new Rng(3);
    const values = rng.floats(24);
    const x = tensor(values, [4, 6], { device });
    const into = new Float32Array(24);
    t.is(await x.copyTo(into), into);
    t.deepEqual(Array.from(into), Array.from(values));
    await t.throwsAsync(x.copyTo(new Float32Array(23)), { instanceOf: RangeError, message: /^array: expected 24 elements, got 23/ });
    await t.throwsAsync(x.copyTo(new Int32Array(24) as unknown as Float32Array), { instanceOf: TypeError, message: /^array: a float32 tensor reads into a Float32Array, got Int32Array/ });
    const h = tensor(values, [24], { dtype: 'bfloat16', device });
    const bits = new Uint16Array(24);
    await h.slice(0).copyTo(bits);
    t.deepEqual(Array.from(bits), Array.from(reference.toBfloat16Array(Array.from(values))));
    const part = new Float32Array(6);
    await x.slice(2, 3).copyTo(part);
    t.deepEqual(Array.from(part), Array.from(values.subarray(12, 18)));
  });

  test(`a Buffer or ArrayBuffer is read as raw elements of the dtype, never as byte values, on ${device}`, async (t) => {
    const values = new Float32Array([1.5, -2, 3.25, 4]);
    const buf = Buffer.from(values.buffer);
    t.deepEqual(Array.from(await tensor(buf, [4], { device }).data()), Array.from(values));
    t.deepEqual(Array.from(await tensor(values.buffer, [2, 2], { device }).data()), Array.from(values));
    const unaligned = Buffer.alloc(17).subarray(1);  // byteOffset 1: copied, still read as float32
    buf.copy(unaligned);
    t.deepEqual(Array.from(await tensor(unaligned, [4], { device }).data()), Array.from(values));
    const ids = Buffer.from(new Int32Array([7, -8, 9]).buffer);
    t.deepEqual(Array.from(await tensor(ids, [3], { dtype: 'int32', device }).data()), [7, -8, 9]);
    t.throws(() => tensor(buf, [16], { device }), { instanceOf: RangeError, message: /^data: shape \[16\] of float32 needs 64 bytes, got a Buffer of 16 bytes/ });
    t.throws(() => tensor(new BigInt64Array(2) as never, [2], { device }), { instanceOf: TypeError, message: /^data: BigInt arrays \(int64\)/ });
    t.throws(() => tensor([1n, 2n] as unknown as number[], [2], { dtype: 'int32', device }), { instanceOf: TypeError, message: /^data: element 0 is a BigInt/ });
  });

  test(`a tensor cannot be posted or cloned without its data: a clear TypeError, on ${device}`, (t) => {
    const x = tensor([1, 2, 3], [3], { device });
    const { port1, port2 } = new MessageChannel();
    try {
      t.throws(() => port1.postMessage(x), { instanceOf: TypeError, message: /^Tensor\(float32, \[3\], \w+\) cannot be cloned \(postMessage.*await t\.data\(\)/ });
      t.throws(() => port1.postMessage({ batch: [x] }), { instanceOf: TypeError, message: /cannot be cloned/ });
      t.throws(() => structuredClone(x), { instanceOf: TypeError, message: /cannot be cloned/ });
      t.throws(() => JSON.stringify(x), { instanceOf: TypeError, message: /cannot be cloned/ });
    } finally {
      port1.close();
      port2.close();
    }
    t.is(util.inspect(x), `Tensor(float32, [3], ${device})`);
    t.is(String(x), `Tensor(float32, [3], ${device})`);
  });
}

test.serial('tensor(array, shape, { copy: false }) uses the array in place and keeps it alive', async (t) => {
  const before = live();
  const values = new Float32Array([1, 2, 3, 4, 5, 6]);
  const x = tensor(values, [2, 3], { copy: false });
  t.deepEqual(live(), before, 'no native allocation');
  values[0] = 10;
  t.is((await x.data())[0], 10, 'a write to the array is seen by the tensor');
  const y = await x.to('cpu');
  t.is((await y.data())[0], 10);
  y.dispose();
  // The tensor alone keeps the memory alive: the array may be dropped and collected.
  const make = () => tensor(Int32Array.from({ length: 1 << 16 }, (_, i) => i), [1 << 16], { copy: false });
  const ids = make();
  for (let i = 0; i < 3; i++) { gc(); await new Promise((r) => setImmediate(r)); }
  const back = (await ids.data()) as Int32Array;
  t.is(back[12345], 12345);
  t.is(back[65535], 65535);
  const view = ids.slice(100, 200);
  ids.dispose();
  gc();
  t.is(((await view.data()) as Int32Array)[0], 100, 'a view keeps the wrapped array alive');
  view.dispose();
  const halves = new Uint16Array(4);
  t.is(tensor(halves, [4], { dtype: 'float16', copy: false }).dtype, 'float16');
  t.throws(() => tensor([1, 2], [2], { copy: false }), { instanceOf: TypeError, message: /^options\.copy: false needs the float32 elements as a Float32Array, got Array/ });
  t.throws(() => tensor(new Float32Array(2), [2], { dtype: 'float16', copy: false }), { instanceOf: TypeError, message: /Uint16Array/ });
  t.throws(() => tensor(Buffer.alloc(9).subarray(1), [2], { copy: false }), { instanceOf: RangeError, message: /^data: copy: false needs 4-byte aligned float32 elements/ });
  t.throws(() => tensor(new Float32Array(2), [2], { copy: 'no' as unknown as boolean }), { instanceOf: TypeError, message: /^options\.copy:/ });
  if (parityDevices().includes('cuda'))
    t.throws(() => tensor(new Float32Array(2), [2], { device: 'cuda', copy: false }), { instanceOf: TypeError, message: /^options\.copy: false uses host memory in place/ });
  // A transferred array's memory is no longer the tensor's: every use says so.
  const moved = new Float32Array(8);
  const w = tensor(moved, [8], { copy: false });
  structuredClone(moved.buffer, { transfer: [moved.buffer] });
  await t.throwsAsync(() => w.data(), { instanceOf: TypeError, message: /wraps \(copy: false\) was transferred or detached/ });
  t.deepEqual(live(), before);
});

test('a wrapped array feeds maskedAttention exactly as a copied one', async (t) => {
  const rng = new Rng(21);
  const T = 20, H = 2, D = 8;
  const offsets = new Int32Array([0, 5, 20]);
  const [q, k, v] = [0, 1, 2].map(() => rng.floats(T * H * D));
  const wrapped = [q, k, v].map((a) => tensor(a, [T, H, D], { copy: false }));
  const copied = [q, k, v].map((a) => tensor(a, [T, H, D]));
  const a = await maskedAttention(wrapped[0], wrapped[1], wrapped[2], { q: { offsets }, rule: 'full' });
  const b = await maskedAttention(copied[0], copied[1], copied[2], { q: { offsets }, rule: 'full' });
  t.deepEqual(Array.from(await a.output.data()), Array.from(await b.output.data()));
});

test('String(bank) describes it; a failed save names the target file', async (t) => {
  const bank = new MemoryBank({ users: 3, slots: 4, width: 8, mode: 'append', overflow: 'evict-oldest', dtype: 'bfloat16' });
  t.is(String(bank), 'MemoryBank(append, overflow evict-oldest, 3 users × 4 slots × 8 bfloat16, cpu)');
  t.is(util.inspect(bank), String(bank));
  const target = path.join(os.tmpdir(), `lk-missing-${process.pid}`, 'bank.lkmb');
  const e = await t.throwsAsync(bank.save(target));
  t.true(e!.message.startsWith(`MemoryBank.save(${target}): `), e!.message);
  t.is((e as NodeJS.ErrnoException).code, 'ENOENT');
  bank.dispose();
  t.regex(String(bank), /disposed\)$/);
});
