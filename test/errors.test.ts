// Bad input (SPEC §6): a clear TypeError / RangeError naming the argument, never a crash, inputs
// never mutated, and no output left behind.
import test from 'ava';
import { maskedAttention, tensor, zeros } from '../lib/index';
import { parityDevices } from './helpers';

for (const device of parityDevices()) {
  const q = tensor(new Float32Array(5 * 2 * 8).fill(0.5), [5, 2, 8], { device });
  const k = tensor(new Float32Array(5 * 1 * 8).fill(0.25), [5, 1, 8], { device });
  const v = tensor(new Float32Array(5 * 1 * 8).fill(1), [5, 1, 8], { device });
  const offsets = new Int32Array([0, 2, 5]);
  const ok = { q: { offsets } };

  const cases: [string, () => Promise<unknown>, { instanceOf: typeof TypeError | typeof RangeError; message: RegExp }][] = [
    ['q not a tensor', () => maskedAttention([1, 2] as never, k, v, ok), { instanceOf: TypeError, message: /^q: expected a Tensor/ }],
    ['int32 keys', () => maskedAttention(q, zeros([5, 1, 8], { dtype: 'int32', device }), v, ok), { instanceOf: TypeError, message: /^k: expected dtype/ }],
    ['dtype mismatch', () => maskedAttention(q, zeros([5, 1, 8], { dtype: 'float16', device }), v, ok), { instanceOf: TypeError, message: /^k: dtype float16 differs/ }],
    ['rank 2 query', () => maskedAttention(zeros([5, 16], { device }), k, v, ok), { instanceOf: RangeError, message: /^q: expected rank 3/ }],
    ['head size mismatch', () => maskedAttention(q, zeros([5, 1, 16], { device }), v, ok), { instanceOf: RangeError, message: /^k: head size 16 differs/ }],
    ['heads not divisible', () => maskedAttention(zeros([5, 3, 8], { device }), zeros([5, 2, 8], { device }), zeros([5, 2, 8], { device }), ok), { instanceOf: RangeError, message: /^k: kv heads 2 must divide/ }],
    ['v tokens differ', () => maskedAttention(q, k, zeros([4, 1, 8], { device }), ok), { instanceOf: RangeError, message: /^v: shape/ }],
    ['offsets not Int32Array', () => maskedAttention(q, k, v, { q: { offsets: [0, 5] as never } }), { instanceOf: TypeError, message: /^options\.q\.offsets: expected an Int32Array/ }],
    ['offsets not ending at T', () => maskedAttention(q, k, v, { q: { offsets: new Int32Array([0, 2, 4]) } }), { instanceOf: RangeError, message: /^options\.q\.offsets: the last offset must equal the token count 5, got 4/ }],
    ['offsets decreasing', () => maskedAttention(q, k, v, { q: { offsets: new Int32Array([0, 3, 2, 5]) } }), { instanceOf: RangeError, message: /^options\.q\.offsets: must be nondecreasing/ }],
    ['offsets not starting at 0', () => maskedAttention(q, k, v, { q: { offsets: new Int32Array([1, 5]) } }), { instanceOf: RangeError, message: /offsets\[0\] must be 0/ }],
    ['segments length', () => maskedAttention(q, k, v, { q: { offsets, segments: new Int32Array(4) } }), { instanceOf: RangeError, message: /^options\.q\.segments: expected 5 entries/ }],
    ['segments decreasing', () => maskedAttention(q, k, v, { q: { offsets, segments: new Int32Array([0, 0, 1, 0, 1]) } }), { instanceOf: RangeError, message: /^options\.q\.segments: must be nondecreasing/ }],
    ['roles out of range', () => maskedAttention(q, k, v, { q: { offsets, roles: new Uint8Array([0, 0, 3, 0, 0]) } }), { instanceOf: RangeError, message: /^options\.q\.roles: roles are 0 \(item\), 1 \(memory\) or 2 \(target\), got 3/ }],
    ['roles wrong type', () => maskedAttention(q, k, v, { q: { offsets, roles: new Int32Array(5) as never } }), { instanceOf: TypeError, message: /^options\.q\.roles: expected a Uint8Array/ }],
    ['kv batch differs', () => maskedAttention(q, k, v, { q: { offsets }, kv: { offsets: new Int32Array([0, 5]) } }), { instanceOf: RangeError, message: /^options\.kv: batch 1 differs/ }],
    ['self-attention token mismatch', () => maskedAttention(q, zeros([6, 1, 8], { device }), zeros([6, 1, 8], { device }), ok), { instanceOf: RangeError, message: /^k: self-attention needs as many keys/ }],
    ['unknown preset', () => maskedAttention(q, k, v, { q: { offsets }, rule: 'diagonal' as never }), { instanceOf: RangeError, message: /^options\.rule: unknown preset 'diagonal'/ }],
    ['unknown seg relation', () => maskedAttention(q, k, v, { q: { offsets }, rule: { item: { item: { seg: 'later' as never, causal: true } } } }), { instanceOf: RangeError, message: /^options\.rule\.item\.item\.seg/ }],
    ['unknown role in rule', () => maskedAttention(q, k, v, { q: { offsets }, rule: { user: {} } as never }), { instanceOf: RangeError, message: /^options\.rule: unknown query role 'user'/ }],
    ['causal not boolean', () => maskedAttention(q, k, v, { q: { offsets }, rule: { item: { item: { seg: 'any', causal: 1 as never } } } }), { instanceOf: TypeError, message: /causal: expected a boolean/ }],
    ['bad normalize', () => maskedAttention(q, k, v, { q: { offsets }, normalize: 'relu' as never }), { instanceOf: RangeError, message: /^options\.normalize/ }],
    ['lse with silu', () => maskedAttention(q, k, v, { q: { offsets }, normalize: 'silu', returnLse: true }), { instanceOf: RangeError, message: /^options\.returnLse/ }],
    ['bad silu divisor', () => maskedAttention(q, k, v, { q: { offsets }, normalize: 'silu', siluDivisor: 0 }), { instanceOf: RangeError, message: /^options\.siluDivisor/ }],
    ['bad scale', () => maskedAttention(q, k, v, { q: { offsets }, scale: Number.NaN }), { instanceOf: TypeError, message: /^options\.scale/ }],
    ['head size too large', () => maskedAttention(zeros([1, 1, 512], { device }), zeros([1, 1, 512], { device }), zeros([1, 1, 8], { device }), { q: { offsets: new Int32Array([0, 1]) } }), { instanceOf: RangeError, message: /head sizes up to 256/ }],
  ];
  for (const [name, call, expected] of cases) {
    test(`maskedAttention on ${device} rejects: ${name}`, async (t) => {
      const before = await Promise.all([q.data(), k.data(), v.data()]);
      await t.throwsAsync(call, expected);
      const after = await Promise.all([q.data(), k.data(), v.data()]);
      t.deepEqual(after, before, 'inputs unchanged');
    });
  }

  test(`maskedAttention on ${device} rejects a disposed input`, async (t) => {
    const x = tensor(new Float32Array(5 * 2 * 8), [5, 2, 8], { device });
    x.dispose();
    await t.throwsAsync(() => maskedAttention(x, k, v, ok), { message: 'tensor is disposed' });
  });

  if (device === 'cuda') {
    test('CUDA refuses head sizes it has no kernel for, listing the supported ones', async (t) => {
      const x = zeros([2, 1, 24], { device });
      await t.throwsAsync(() => maskedAttention(x, x, x, { q: { offsets: new Int32Array([0, 2]) } }), { instanceOf: RangeError, message: /8, 16, 32, 64, 128, 256/ });
    });
  }

  test(`inputs are never mutated and a valid call still works after the failures, on ${device}`, async (t) => {
    const r = await maskedAttention(q, k, v, ok);
    const out = await r.output.float32();
    t.deepEqual(Array.from(out), new Array(5 * 2 * 8).fill(1)); // v is all ones
  });
}

test('tensor() argument errors', (t) => {
  t.throws(() => tensor([1, 2, 3], [2, 2]), { instanceOf: RangeError, message: /^data: shape \[2, 2\] needs 4 elements, got 3/ });
  t.throws(() => tensor([1], [1], { dtype: 'float64' as never }), { instanceOf: TypeError, message: /^dtype:/ });
  t.throws(() => tensor([1], [1], { device: 'tpu' as never }), { instanceOf: TypeError, message: /^device:/ });
  t.throws(() => tensor([1], [-1]), { instanceOf: RangeError, message: /^shape:/ });
  t.throws(() => tensor([1.5], [1], { dtype: 'int32' }), { instanceOf: TypeError, message: /^data: int32 tensors need integers/ });
  t.throws(() => tensor(42 as never, [1]), { instanceOf: TypeError, message: /^data:/ });
  t.throws(() => zeros('3' as never), { instanceOf: TypeError, message: /^shape:/ });
});
