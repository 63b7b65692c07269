// The oracle itself, checked against facts written out by hand from SPEC §3 / §5 and IEEE 754.
import test from 'ava';
import { reference } from '../lib/index';

// Allowed-pair matrix of one sequence under a preset, as '1' / '.' rows (query i, key j).
function matrix(rule: reference.PresetName, segs: number[], roles: number[]): string[] {
  const rows: string[] = [];
  for (let i = 0; i < segs.length; i++) {
    let r = '';
    for (let j = 0; j < segs.length; j++)
      r += reference.refAllowed(reference.referencePresets[rule], roles[i], roles[j], segs[i], segs[j], i, j) ? '1' : '.';
    rows.push(r);
  }
  return rows;
}

test('persrec on S0 M0 S1 M1 target: items see their own segment causally and earlier summaries only', (t) => {
  //              S0 S0 M0 S1 S1 M1 T
  const segs = [0, 0, 0, 1, 1, 1, 1];
  const roles = [0, 0, 1, 0, 0, 1, 2];
  t.deepEqual(matrix('persrec', segs, roles), [
    '1......',
    '11.....',
    '111....', // M0: its segment's items and itself
    '..11...', // S1 item: M0 (earlier memory) and itself, never S0's raw items
    '..111..',
    '..1111.', // M1: S1 items, M0 and itself (same-or-earlier)
    '..111.1', // target: earlier memory (M0), same-segment items, itself
  ]);
});

test('rec2pm-reference on S0 Q S1 Q: items never see memory; Q sees all earlier items and its own block', (t) => {
  const segs = [0, 0, 0, 1, 1];
  const roles = [0, 1, 1, 0, 1];
  t.deepEqual(matrix('rec2pm-reference', segs, roles), [
    '1....',
    '11...',
    '111..',
    '1..1.',
    '1..11',
  ]);
});

test('rec2pm-update on [m; S; Q] blocks: each block causal and blind to the others', (t) => {
  const segs = [0, 0, 0, 1, 1, 1];
  const roles = [1, 0, 1, 1, 0, 1];
  t.deepEqual(matrix('rec2pm-update', segs, roles), [
    '1.....',
    '11....',
    '111...',
    '...1..',
    '...11.',
    '...111',
  ]);
});

test('causal alignment is bottom-right for Lq < Lk, and a row with no key gives zeros and lse -Infinity', (t) => {
  const q = { data: [1, 0, 0, 1], shape: [2, 1, 2] };
  const k = { data: [1, 0, 0, 1, 1, 1], shape: [3, 1, 2] };
  const v = { data: [1, 2, 3], shape: [3, 1, 1] };
  const r = reference.maskedAttention(q, k, v, { q: { offsets: new Int32Array([0, 2]) }, kv: { offsets: new Int32Array([0, 3]) }, scale: 1, returnLse: true });
  // query 0 stands at position 1: keys 0, 1 with scores 1, 0
  const e1 = Math.exp(1), e0 = 1;
  t.true(Math.abs(r.output.data[0] - (e1 * 1 + e0 * 2) / (e1 + e0)) < 1e-12);
  t.true(Math.abs(r.lse!.data[0] - Math.log(e1 + e0)) < 1e-12);
  const none = reference.maskedAttention(q, k, v, { q: { offsets: new Int32Array([0, 2]) }, kv: { offsets: new Int32Array([0, 3]) }, rule: {}, returnLse: true });
  t.deepEqual(Array.from(none.output.data), [0, 0]);
  t.deepEqual(Array.from(none.lse!.data), [-Infinity, -Infinity]);
});

test('silu normalisation divides by the longest key sequence', (t) => {
  const q = { data: [1], shape: [1, 1, 1] }, k = { data: [2], shape: [1, 1, 1] }, v = { data: [3], shape: [1, 1, 1] };
  const r = reference.maskedAttention(q, k, v, { q: { offsets: new Int32Array([0, 1]) }, normalize: 'silu', scale: 1, siluDivisor: 4 });
  t.true(Math.abs(r.output.data[0] - (2 / (1 + Math.exp(-2))) / 4 * 3) < 1e-12);
});

test('topK: descending, ties by lower index, NaN and -Infinity never, -1 padding, lengths', (t) => {
  const r = reference.topK({ data: [1, NaN, 3, 3, -Infinity, Infinity, 0, 1], shape: [1, 8] }, 6);
  t.deepEqual(Array.from(r.indices.data), [5, 2, 3, 0, 7, 6]);
  const short = reference.topK({ data: [5, NaN, 7], shape: [1, 3] }, 4, { lengths: new Int32Array([2]) });
  t.deepEqual(Array.from(short.indices.data), [0, -1, -1, -1]);
  t.deepEqual(Array.from(short.values.data), [5, -Infinity, -Infinity, -Infinity]);
});

test('float16 / bfloat16 bit patterns', (t) => {
  const h = reference.float32ToFloat16Bits;
  t.is(h(1), 0x3c00);
  t.is(h(-2), 0xc000);
  t.is(h(65504), 0x7bff);
  t.is(h(65520), 0x7c00);                // rounds up to infinity
  t.is(h(65519.99), 0x7bff);
  t.is(h(2 ** -24), 0x0001);             // smallest subnormal
  t.is(h(2 ** -25), 0x0000);             // ties to even: 0
  t.is(h(3 * 2 ** -25), 0x0002);         // ties to even: 2
  t.is(h(1 + 2 ** -11), 0x3c00);         // halfway, even stays
  t.is(h(1 + 3 * 2 ** -11), 0x3c02);     // halfway, odd rounds up
  t.is(h(-0), 0x8000);
  t.is(h(NaN) & 0x7c00, 0x7c00);
  t.is(reference.float16BitsToFloat32(0x0001), 2 ** -24);
  t.is(reference.float32ToBfloat16Bits(1), 0x3f80);
  t.is(reference.float32ToBfloat16Bits(1 + 2 ** -8), 0x3f80); // halfway to even
  t.is(reference.float32ToBfloat16Bits(1 + 3 * 2 ** -8), 0x3f82);
  t.is(reference.bfloat16BitsToFloat32(0xc040), -3);
});

test('sparseAttention equals maskedAttention restricted to the selected keys', (t) => {
  const q = { data: [0.3, -0.2], shape: [1, 1, 2] };
  const k = { data: [1, 0, 0, 1, 1, 1, -1, 2], shape: [4, 1, 2] };
  const v = { data: [1, 2, 3, 4], shape: [4, 1, 1] };
  const sparse = reference.sparseAttention(q, k, v, { data: [3, -1, 1], shape: [1, 3] }, { qOffsets: new Int32Array([0, 1]), kOffsets: new Int32Array([0, 4]) });
  const s1 = (0 * 0.3 + 1 * -0.2) / Math.SQRT2, s3 = (-1 * 0.3 + 2 * -0.2) / Math.SQRT2;
  const want = (Math.exp(s1) * 2 + Math.exp(s3) * 4) / (Math.exp(s1) + Math.exp(s3));
  t.true(Math.abs(sparse.output.data[0] - want) < 1e-12);
  t.throws(() => reference.sparseAttention(q, k, v, { data: [4], shape: [1, 1] }, { qOffsets: new Int32Array([0, 1]), kOffsets: new Int32Array([0, 4]) }), { instanceOf: RangeError, message: /^indices:/ });
});
