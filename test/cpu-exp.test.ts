// The CPU kernels' exp (native/cpu/simd.h exp8: the softmax weights of the forward, backward, sparse
// and heads-major kernels) on every ISA path this CPU runs, against Math.exp: relative error within
// 2.5e-7 over the whole range that yields normal floats (a weight error eps moves an output by at most
// ~eps * max|V|, far inside SPEC §7's 1e-5), and the softmax's IEEE semantics exactly: NaN -> NaN,
// -inf and anything at or below -88 -> +0, exp(0) = 1 (the row maximum weighs exactly 1), large
// inputs saturate at a finite value. Random values over the range, random bit patterns (every
// exponent, subnormals, NaN payloads) and the range reduction's edges (half-integer multiples of ln2).
// On AVX-512 the entry runs the 16-lane exp_vec (the tiled softmax's width there), elsewhere 8 lanes.
import test from 'ava';
import { backends } from '../lib/index';
import { native } from '../lib/native';
import { Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const LOWEST_NORMAL_INPUT = -87.3;  // exp(-87.3) ~ 1.2e-38 is near the smallest normal float
const ZERO_AT_OR_BELOW = -88;
const SATURATES_ABOVE = Math.fround(88.3762626647949);
const MAX_RELATIVE_ERROR = 2.5e-7;
const SMALLEST_NORMAL = 1.1754943508222875e-38;

function inputs(rng: Rng): Float32Array {
  const xs: number[] = [-Infinity, Infinity, NaN, -NaN, 0, -0, ZERO_AT_OR_BELOW, SATURATES_ABOVE, -87.68, -87.33, 1e-30, -1e-30,
    -1e30, 1e30, -3.4e38, 3.4e38, 1.4e-45, -1.4e-45];
  for (let k = -127; k <= 127; k++) for (const d of [-1e-6, 0, 1e-6]) xs.push((k + 0.5) * Math.LN2 + d, k * Math.LN2 + d);
  for (let i = 0; i < 200000; i++) xs.push(-88.5 + rng.next() * 177);  // the whole range and past both clamps
  for (let i = 0; i < 100000; i++) xs.push(-rng.next() * 30);  // where softmax weights live
  const bits = new Uint32Array(100000);
  for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(rng.next() * 4294967296) >>> 0;
  return Float32Array.from([...xs, ...new Float32Array(bits.buffer)]);
}

for (const isa of PATHS) {
  test.serial(`cpu exp on ${isa}: relative error, NaN / Inf / underflow semantics`, (t) => {
    native()._setCpuIsa(isa);
    const x = inputs(new Rng(4242 + isa.length));
    const y = native()._cpuExp(x);
    const saturated = native()._cpuExp(Float32Array.of(SATURATES_ABOVE))[0];
    t.true(Number.isFinite(saturated) && saturated > 2.39e38, `exp(${SATURATES_ABOVE}) = ${saturated}`);
    let worst = 0, worstAt = 0;
    const bad: string[] = [];
    for (let i = 0; i < x.length; i++) {
      const xi = x[i], yi = y[i];
      if (Number.isNaN(xi)) { if (!Number.isNaN(yi)) bad.push(`exp(NaN) = ${yi}`); continue; }
      if (xi <= ZERO_AT_OR_BELOW) { if (!Object.is(yi, 0)) bad.push(`exp(${xi}) = ${yi}, expected +0`); continue; }
      if (xi >= SATURATES_ABOVE) { if (yi !== saturated) bad.push(`exp(${xi}) = ${yi}, expected the saturated ${saturated}`); continue; }
      const ref = Math.exp(xi);
      if (xi < LOWEST_NORMAL_INPUT) {  // may flush to 0: absolute error within the smallest normal
        if (!(yi >= 0 && Math.abs(yi - ref) <= SMALLEST_NORMAL)) bad.push(`exp(${xi}) = ${yi}, reference ${ref}`);
        continue;
      }
      const err = Math.abs(yi - ref) / ref;
      if (!(err <= MAX_RELATIVE_ERROR)) bad.push(`exp(${xi}) = ${yi}, reference ${ref}, relative error ${err}`);
      if (err > worst) { worst = err; worstAt = xi; }
    }
    t.is(native()._cpuExp(Float32Array.of(0))[0], 1);
    t.deepEqual(bad.slice(0, 5), [], `${bad.length} values out of bounds`);
    t.log(`${isa}: max relative error ${worst.toExponential(2)} at ${worstAt} over ${x.length} inputs`);
  });
}

// Every lane (16 on AVX-512) and the tail of an array that fills no whole vector compute the same
// function: shifting the array one element at a time moves each value through every lane position.
for (const isa of PATHS) {
  test.serial(`cpu exp on ${isa}: the same result in every lane and in the tail`, (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(77);
    const base = Float32Array.from([-Infinity, Infinity, NaN, 0, -0, ZERO_AT_OR_BELOW, -87.5, 88.5, 1e-30,
      ...Array.from({ length: 39 }, () => -30 + rng.next() * 60)]);
    const whole = native()._cpuExp(base);
    const bad: string[] = [];
    for (let shift = 0; shift < 16; shift++) {
      for (const n of [1, 7, 8, 9, 15, 16, 17, 31, 32]) {
        const y = native()._cpuExp(base.slice(shift, shift + n));
        for (let i = 0; i < n; i++) {
          if (!Object.is(y[i], whole[shift + i])) bad.push(`shift ${shift} n ${n} lane ${i}: exp(${base[shift + i]}) = ${y[i]}, not ${whole[shift + i]}`);
        }
      }
    }
    t.deepEqual(bad.slice(0, 5), [], `${bad.length} lanes differ`);
  });
}

test('_cpuExp rejects a non-Float32Array', (t) => {
  t.throws(() => native()._cpuExp([1, 2] as unknown as Float32Array), { instanceOf: TypeError, message: /values: expected a Float32Array/ });
});

test.after.always(() => native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]));
