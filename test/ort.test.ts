// onnxruntime-node interop (SPEC §11) against the real onnxruntime-node: dense layers in ORT,
// attention here, tensors crossing without copies on the CPU.
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { encodeModel, DataType, floatTensor } from '../bench/onnx-builder';
import { fromOrt, maskedAttention, reference, tensor, toOrt } from '../lib/index';
import { compare, parityDevices, Rng } from './helpers';

const options: ort.InferenceSession.SessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };

// Y = X · W for each named weight: one MatMul per output.
async function linearLayers(din: number, weights: Record<string, { dout: number; data: Float32Array }>): Promise<ort.InferenceSession> {
  const names = Object.keys(weights);
  const bytes = encodeModel({
    graph: {
      name: 'linear',
      inputs: [{ name: 'X', dims: ['T', din] }],
      outputs: names.map((n) => ({ name: n, dims: ['T', weights[n].dout] })),
      initializers: names.map((n) => floatTensor(`W_${n}`, [din, weights[n].dout], weights[n].data)),
      nodes: names.map((n) => ({ op: 'MatMul', inputs: ['X', `W_${n}`], outputs: [n] })),
    },
  });
  return ort.InferenceSession.create(bytes, options);
}

function matmul(x: Float32Array, w: Float32Array, rows: number, din: number, dout: number): Float64Array {
  const y = new Float64Array(rows * dout);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < din; i++) for (let o = 0; o < dout; o++) y[r * dout + o] += x[r * din + i] * w[i * dout + o];
  return y;
}

test('dense layers in onnxruntime, attention here: Q/K/V projections → maskedAttention → output projection', async (t) => {
  const rng = new Rng(7);
  const T = 29, d = 32, H = 4, D = 8;
  const offsets = new Int32Array([0, 13, 13, 29]);
  const w = { Q: rng.floats(d * H * D, 0.3), K: rng.floats(d * H * D, 0.3), V: rng.floats(d * H * D, 0.3) };
  const proj = await linearLayers(d, { Q: { dout: H * D, data: w.Q }, K: { dout: H * D, data: w.K }, V: { dout: H * D, data: w.V } });
  const x = rng.floats(T * d);
  const outs = await proj.run({ X: new ort.Tensor('float32', x, [T, d]) });
  // ORT's outputs used in place: the tensor shares the array
  const [q, k, v] = ['Q', 'K', 'V'].map((n) => fromOrt(outs[n]).reshape([T, H, D]));
  const qData = outs.Q.data as Float32Array;
  t.is((await q.data())[5], qData[5]);
  const { output } = await maskedAttention(q, k, v, { q: { offsets }, rule: 'causal' });
  const ref = reference.maskedAttention({ data: qData, shape: [T, H, D] }, { data: outs.K.data as Float32Array, shape: [T, H, D] },
    { data: outs.V.data as Float32Array, shape: [T, H, D] }, { q: { offsets }, rule: 'causal' });
  t.is(compare(await output.data(), ref.output.data, 'float32', 'attention'), '');
  // and back: the attention output (viewed as [T, H·D], no copy) through ORT's output projection
  const wo = rng.floats(H * D * d, 0.3);
  const outProj = await linearLayers(H * D, { Y: { dout: d, data: wo } });
  const flat = output.reshape([T, H * D]);
  const feed = toOrt(flat, ort);
  t.is(feed.type, 'float32');
  t.deepEqual(feed.dims, [T, H * D]);
  const y = (await outProj.run({ X: feed })).Y.data as Float32Array;
  const expected = matmul((await flat.data()) as Float32Array, wo, T, H * D, d);
  t.is(compare(y, expected, 'float32', 'output projection'), '');
  for (const s of [proj, outProj]) await s.release();
});

test('toOrt / fromOrt share memory on the CPU where the dtype allows', async (t) => {
  const lk = tensor(new Float32Array([1, 2, 3, 4]), [2, 2]);
  const o = toOrt(lk, ort);
  (o.data as Float32Array)[0] = 42;
  t.is((await lk.data())[0], 42, 'a write through the ORT tensor is seen here');
  lk.dispose();
  t.is((o.data as Float32Array)[3], 4, 'the ORT tensor keeps the memory alive after dispose()');
  const ids = tensor(new Int32Array([3, 1, 2]), [3]);
  const oi = toOrt(ids, ort);
  t.is(oi.type, 'int32');
  const halves = tensor([0.5, -1, 2], [3], { dtype: 'float16' });
  const oh = toOrt(halves, ort);
  t.is(oh.type, 'float16');
  t.deepEqual(Array.from(oh.data as Uint16Array), Array.from((await halves.data()) as Uint16Array));
  t.deepEqual(Array.from(toOrt(halves, ort, { type: 'float32' }).data as Float32Array), [0.5, -1, 2]);
  const back = fromOrt(new ort.Tensor('float32', new Float32Array([5, 6]), [1, 2]));
  t.deepEqual(back.shape, [1, 2]);
  t.deepEqual(Array.from(await back.data()), [5, 6]);
  const source = new Float32Array([7, 8]);
  const shared = fromOrt(new ort.Tensor('float32', source, [2]));
  source[1] = 9;
  t.is((await shared.data())[1], 9, 'fromOrt wraps the ORT array in place');
});

test('bfloat16 crosses as float32 (ORT has no bfloat16 in JavaScript), into a real session', async (t) => {
  const rng = new Rng(2);
  const values = rng.floats(6 * 8);
  const bf = tensor(values, [6, 8], { dtype: 'bfloat16' });
  const o = toOrt(bf, ort);
  t.is(o.type, 'float32');
  t.deepEqual(Array.from(o.data as Float32Array), Array.from(await bf.float32()));
  const wo = rng.floats(8 * 3);
  const session = await linearLayers(8, { Y: { dout: 3, data: wo } });
  const y = (await session.run({ X: o })).Y.data as Float32Array;
  t.is(compare(y, matmul(await bf.float32(), wo, 6, 8, 3), 'float32', 'bfloat16 input'), '');
  await session.release();
});

test('int64 ids: toOrt(..., { type: "int64" }) into an embedding Gather, fromOrt back to int32 with a range check', async (t) => {
  const vocab = 10, dim = 4;
  const table = Float32Array.from({ length: vocab * dim }, (_, i) => i);
  const bytes = encodeModel({
    graph: {
      name: 'embed',
      inputs: [{ name: 'ids', dims: ['N'], elemType: DataType.INT64 }],
      outputs: [{ name: 'E', dims: ['N', dim] }],
      initializers: [floatTensor('table', [vocab, dim], table)],
      nodes: [{ op: 'Gather', inputs: ['table', 'ids'], outputs: ['E'] }],
    },
  });
  const session = await ort.InferenceSession.create(bytes, options);
  const ids = tensor(new Int32Array([9, 0, 4]), [3]);
  const feed = toOrt(ids, ort, { type: 'int64' });
  t.is(feed.type, 'int64');
  t.deepEqual(Array.from(feed.data as BigInt64Array), [9n, 0n, 4n]);
  const e = fromOrt((await session.run({ ids: feed })).E);
  t.deepEqual(e.shape, [3, dim]);
  t.deepEqual(Array.from(await e.data()), [36, 37, 38, 39, 0, 1, 2, 3, 16, 17, 18, 19]);
  const back = fromOrt(new ort.Tensor('int64', BigInt64Array.from([5n, -(2n ** 31n)]), [2]));
  t.is(back.dtype, 'int32');
  t.deepEqual(Array.from(await back.data()), [5, -(2 ** 31)]);
  t.throws(() => fromOrt(new ort.Tensor('int64', BigInt64Array.from([1n, 2n ** 40n]), [2])),
    { instanceOf: RangeError, message: /^ortTensor: int64 element 1 = 1099511627776 is outside the int32 range/ });
  t.throws(() => toOrt(tensor([1.5], [1]), ort, { type: 'int64' }), { instanceOf: TypeError, message: /^options\.type: 'int64' converts int32 tensors/ });
  await session.release();
});

test('interop rejects what it cannot carry, naming the argument', (t) => {
  t.throws(() => fromOrt(new ort.Tensor('float64', new Float64Array(2), [2])), { instanceOf: TypeError, message: /^ortTensor: type 'float64' is not supported/ });
  t.throws(() => fromOrt(new ort.Tensor('uint8', new Uint8Array(2), [2])), { instanceOf: TypeError, message: /^ortTensor: type 'uint8'/ });
  t.throws(() => fromOrt({ type: 'float32', dims: [2], data: new Float32Array(2), location: 'gpu-buffer' }), { instanceOf: TypeError, message: /^ortTensor: its data is on 'gpu-buffer'/ });
  t.throws(() => fromOrt(null as never), { instanceOf: TypeError, message: /^ortTensor:/ });
  t.throws(() => toOrt(tensor([1], [1]), {} as never), { instanceOf: TypeError, message: /^ort: expected the onnxruntime-node module/ });
  t.throws(() => toOrt('x' as never, ort), { instanceOf: TypeError, message: /^t: expected a Tensor/ });
  const gone = tensor([1], [1]);
  gone.dispose();
  t.throws(() => toOrt(gone, ort), { message: 'tensor is disposed' });
});

for (const device of parityDevices().filter((d) => d !== 'cpu'))
  test(`a ${device} tensor goes to onnxruntime through the CPU: clear TypeError, then fromOrt({ device }) copies back`, async (t) => {
    const x = tensor([1, 2, 3], [3], { device });
    t.throws(() => toOrt(x, ort), { instanceOf: TypeError, message: new RegExp(`^t: on ${device}; .*await t\\.to\\('cpu'\\)`) });
    const o = toOrt(await x.to('cpu'), ort);
    const y = fromOrt(o, { device });
    t.is(y.device, device);
    t.deepEqual(Array.from(await y.data()), [1, 2, 3]);
  });
