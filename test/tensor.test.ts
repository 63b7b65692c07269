// Tensors and backends (SPEC §1).
import test from 'ava';
import { spawnSync } from 'child_process';
import { backends, tensor, zeros, Tensor, reference } from '../lib/index';
import { parityDevices } from './helpers';
import { native } from '../lib/native';

test('backends() reports the CPU and says why CUDA is or is not usable', (t) => {
  const b = backends();
  t.true(Number.isInteger(b.cpu.threads) && b.cpu.threads >= 1);
  t.is(typeof b.cuda.available, 'boolean');
  t.is(typeof b.cuda.compiled, 'boolean');
  t.is(typeof b.cuda.emulated, 'boolean');
  t.true(Array.isArray(b.cuda.devices));
  if (!b.cuda.available) t.regex(b.cuda.reason ?? '', /\w+/);
  else t.true(b.cuda.devices.length > 0 && /^\d+\.\d+$/.test(b.cuda.devices[0].computeCapability));
  if (process.env.LIFELONG_CUDA_EMULATE === '1') t.true(b.cuda.emulated && b.cuda.available);
});

for (const device of parityDevices()) {
  test(`tensor round trips on ${device}: float32, int32, float16 and bfloat16 bits`, async (t) => {
    const f = tensor([1, -2.5, 3, 1e-3, 65504, -0], [2, 3], { device });
    t.deepEqual(f.shape, [2, 3]);
    t.deepEqual(f.dims, [2, 3]);
    t.is(f.size, 6);
    t.is(f.dtype, 'float32');
    t.is(f.device, device);
    t.deepEqual(Array.from(await f.data()), Array.from(Float32Array.from([1, -2.5, 3, 1e-3, 65504, -0])));
    const i = tensor(new Int32Array([7, -8, 2 ** 30]), [3], { device });
    t.is(i.dtype, 'int32');
    t.deepEqual(Array.from(await i.data()), [7, -8, 2 ** 30]);
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const values = [1, -2.5, 3, 1e-3, 65504, 0.1];
      const h = tensor(values, [6], { dtype, device });
      const bits = (await h.data()) as Uint16Array;
      t.true(bits instanceof Uint16Array);
      const expected = dtype === 'float16' ? reference.toFloat16Array(values) : reference.toBfloat16Array(values);
      t.deepEqual(Array.from(bits), Array.from(expected));
      const back = await h.float32();
      const refBack = dtype === 'float16' ? reference.fromFloat16Array(expected) : reference.fromBfloat16Array(expected);
      t.deepEqual(Array.from(back), Array.from(refBack));
      const raw = tensor(bits, [6], { dtype, device }); // Uint16Array = raw bits, as in onnxruntime
      t.deepEqual(Array.from((await raw.data()) as Uint16Array), Array.from(bits));
    }
    const z = zeros([4, 2], { dtype: 'bfloat16', device });
    t.deepEqual(Array.from(await z.float32()), new Array(8).fill(0));
  });

  test(`dispose() frees now and every later use throws, on ${device}`, async (t) => {
    const x = tensor([1, 2, 3], [3], { device });
    const y = await x.to('cpu');
    x.dispose();
    t.true(x.disposed);
    x.dispose(); // idempotent
    await t.throwsAsync(() => x.data(), { message: 'tensor is disposed' });
    await t.throwsAsync(() => x.to('cpu'), { message: 'tensor is disposed' });
    t.deepEqual(Array.from(await y.data()), [1, 2, 3]);
    {
      using z = tensor([4], [1], { device });
      t.false(z.disposed);
    }
  });
}

test('float16 conversion matches the reference on every bit pattern', async (t) => {
  const bits = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) bits[i] = i;
  for (const dtype of ['float16', 'bfloat16'] as const) {
    const x = tensor(bits, [65536], { dtype });
    const got = await x.float32();
    const ref = dtype === 'float16' ? reference.fromFloat16Array(bits) : reference.fromBfloat16Array(bits);
    let bad = -1;
    for (let i = 0; i < 65536; i++) if (!Object.is(got[i], ref[i]) && !(Number.isNaN(got[i]) && Number.isNaN(ref[i]))) { bad = i; break; }
    t.is(bad, -1, `${dtype} bits 0x${bad.toString(16)}: got ${got[bad]}, reference ${ref[bad]}`);
    // float32 -> 16 bits on random values, rounding included
    const vals = new Float32Array(20000);
    for (let i = 0; i < vals.length; i++) vals[i] = (Math.random() - 0.5) * 2 ** ((i % 60) - 30);
    const enc = (await tensor(vals, [vals.length], { dtype }).data()) as Uint16Array;
    const refEnc = dtype === 'float16' ? reference.toFloat16Array(vals) : reference.toBfloat16Array(vals);
    t.deepEqual(Array.from(enc), Array.from(refEnc));
  }
});

test('a tensor nobody disposes is freed by its finalizer (external memory goes back down)', async (t) => {
  const gc = (globalThis as { gc?: () => void }).gc;
  t.truthy(gc, 'the suite runs with --expose-gc (package.json ava.nodeArguments)');
  gc!();
  const before = native().externalMemory();
  let live: Tensor[] | undefined = [];
  for (let i = 0; i < 20; i++) live.push(zeros([1 << 20])); // 4 MiB of native memory each, no JS buffer
  const during = native().externalMemory();
  t.true(during - before >= 20 * 4 * (1 << 20) * 0.99, `native memory is reported to V8 (grew ${during - before} bytes)`);
  t.is(live.length, 20);
  live = undefined; // never disposed: only the finalizers can free them
  for (let i = 0; i < 20 && native().externalMemory() - before > 8 * (1 << 20); i++) {
    gc!();
    await new Promise((r) => setTimeout(r, 10));
  }
  t.true(native().externalMemory() - before < 8 * (1 << 20), 'finalizers released the storage');
});

test('LIFELONG_DEVICE=cpu turns CUDA off with that reason, and cuda tensors are refused', (t) => {
  const script = `const lk = require(${JSON.stringify(require.resolve('../lib/index'))});
    const b = lk.backends();
    let refused = '';
    try { lk.tensor([1], [1], { device: 'cuda' }); } catch (e) { refused = e.message; }
    console.log(JSON.stringify({ available: b.cuda.available, reason: b.cuda.reason, refused }));`;
  const r = spawnSync(process.execPath, ['--import=tsx', '-e', script], { env: { ...process.env, LIFELONG_DEVICE: 'cpu' }, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.false(out.available);
  t.regex(out.reason, /^disabled by LIFELONG_DEVICE=cpu/);
  t.regex(out.refused, /^device: CUDA is not available: disabled by LIFELONG_DEVICE=cpu/);
});

test('Tensor is the class the ops return', (t) => {
  t.true(tensor([1], [1]) instanceof Tensor);
});
