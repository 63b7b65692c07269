// The CPU kernels' float32 -> float16 / bfloat16 narrowing (native/cpu/convert.h narrow_row: F16C's
// vcvtps2ph on AVX2 and later) on every ISA path this CPU runs, bit for bit against the scalar
// rounding fromFloat32 uses (cuda/common/half_convert.h): random bit patterns of every exponent, the
// float16 range's edges (overflow to inf, the largest finite, subnormals, underflow to zero), exact
// ties on both parities, and NaNs of every payload, sign and quietness (both paths give the canonical
// quiet NaN). Lengths that are not multiples of the vector width cover the scalar tails.
import test from 'ava';
import { backends } from '../lib/index';
import { codes, native } from '../lib/native';
import { Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;

function f32(bits: number): number {
  return new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0];
}

// Bit patterns, not numbers: a JS number cannot carry a float32 NaN payload, so NaNs go in as bits.
function edgeBits(): number[] {
  const bits: number[] = [];
  const around = (b: number, r: number) => { for (let d = -r; d <= r; d++) bits.push((b + d) >>> 0); };
  for (const sign of [0, 0x80000000]) {
    for (const b of [
      0x00000000, 0x00000001, 0x007fffff, 0x00800000,  // zero, float32 subnormals, the smallest normal
      0x33000000, 0x33000001, 0x337fffff, 0x33800000,  // 2^-25 (half the smallest float16 subnormal: a tie to 0)
      0x33c00000, 0x34000000, 0x34400000,  // 1.5 * 2^-24 (a tie to 2^-23), 2^-23, 1.5 * 2^-23 (a tie up)
      0x387fc000, 0x387fe000, 0x387ff000, 0x38800000,  // the largest float16 subnormal, into the smallest normal
      0x3f800000, 0x3f801000, 0x3f803000, 0x3f802000,  // 1, ties to even down and up, a non-tie
      0x477fe000, 0x477fefff, 0x477ff000, 0x47800000,  // 65504, just below the overflow tie, the tie, 65536
      0x7f7fffff, 0x7f800000,  // the largest float32, inf
      0x7f800001, 0x7fbfffff, 0x7fc00000, 0x7fc00001, 0x7fffe000, 0x7fffffff, 0x7f802000, 0x7fa00000,  // signalling and quiet NaNs
    ]) around(b | sign, 2);
  }
  // Every tie and its neighbours in the normal range: 13 dropped bits of exactly 0x1000.
  for (let e = 0x38800000; e < 0x47800000; e += 0x00800000) for (const m of [0, 0x1000, 0x3000, 0x7ff000, 0x7fd000]) around(e + m, 1);
  return bits;
}

function inputs(rng: Rng, length: number): Float32Array {
  const bits = new Uint32Array(length);
  const edges = edgeBits();
  for (let i = 0; i < length; i++) {
    const r = rng.next();
    if (i < edges.length) bits[i] = edges[i];
    // exponents near the float16 range, where rounding, subnormals and overflow happen
    else if (r < 0.5) bits[i] = ((rng.next() < 0.5 ? 0x80000000 : 0) | ((0x60 + Math.floor(rng.next() * 0x40)) << 23) | Math.floor(rng.next() * 0x800000)) >>> 0;
    else if (r < 0.6) bits[i] = (0x7f800000 | (rng.next() < 0.5 ? 0x80000000 : 0) | (1 + Math.floor(rng.next() * 0x7fffff))) >>> 0;  // NaN payloads
    else bits[i] = Math.floor(rng.next() * 4294967296) >>> 0;
  }
  return new Float32Array(bits.buffer);
}

function hex(n: number): string { return '0x' + n.toString(16).padStart(4, '0'); }

for (const isa of PATHS) {
  for (const dtype of ['float16', 'bfloat16'] as const) {
    test.serial(`narrow_row on ${isa}, ${dtype}: bit-identical to the scalar rounding`, (t) => {
      native()._setCpuIsa(isa);
      const code = codes().dtype[dtype];
      const rng = new Rng(777 + isa.length + code);
      let compared = 0;
      for (const length of [0, 1, 7, 8, 9, 15, 17, 1000, 300007]) {
        const x = inputs(rng, length);
        const expected = native().fromFloat32(x, code);
        const got = native()._cpuNarrowRow(x, code);
        const bad: string[] = [];
        const xBits = new Uint32Array(x.buffer);
        for (let i = 0; i < length; i++)
          if (got[i] !== expected[i]) bad.push(`0x${xBits[i].toString(16)} (${f32(xBits[i])}) -> ${hex(got[i])}, scalar ${hex(expected[i])}`);
        t.deepEqual(bad.slice(0, 5), [], `length ${length}: ${bad.length} lanes differ`);
        t.is(got.length, length);
        compared += length;
      }
      t.log(`${isa} ${dtype}: ${compared} values compared`);
    });
  }
}

test('the scalar rounding itself: ties to even, overflow, NaN canonicalization', (t) => {
  const half = codes().dtype.float16;
  const cases: [number, number][] = [
    [0x3f801000, 0x3c00], [0x3f803000, 0x3c02], [0x477fefff, 0x7bff], [0x477ff000, 0x7c00], [0x33000000, 0x0000],
    [0x33000001, 0x0001], [0x33c00000, 0x0002], [0x7f800001, 0x7e00], [0xffc12345, 0xfe00], [0x80000001, 0x8000],
  ];
  const x = new Float32Array(new Uint32Array(cases.map((c) => c[0])).buffer);
  for (const isa of PATHS) {
    native()._setCpuIsa(isa);
    t.deepEqual(Array.from(native()._cpuNarrowRow(x, half)).map(hex), cases.map((c) => hex(c[1])), isa);
  }
  t.deepEqual(Array.from(native().fromFloat32(x, half)).map(hex), cases.map((c) => hex(c[1])));
});

test('_cpuNarrowRow rejects bad arguments', (t) => {
  t.throws(() => native()._cpuNarrowRow([1, 2] as unknown as Float32Array, codes().dtype.float16), { instanceOf: TypeError, message: /values: expected a Float32Array/ });
  t.throws(() => native()._cpuNarrowRow(Float32Array.of(1), codes().dtype.float32), { instanceOf: RangeError, message: /dtype/ });
  t.throws(() => native()._cpuNarrowRow(Float32Array.of(1), undefined as unknown as number), { instanceOf: TypeError, message: /dtype/ });
});

test.after.always(() => native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]));
