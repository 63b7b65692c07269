// The tensor-core attention kernel (cuda/attention/tc_attention_kernel.cuh): float16 / bfloat16
// maskedAttention on CUDA (sm_80+, and the emulator, which reports 9.0) runs it, float32 keeps the
// FP32 kernel. In the emulated build the emulator's counters prove which one ran; the values are
// compared with the reference on every device present (SPEC §3, §7). Serial: the counters are the
// process's, and no other call may run between a test's two readings.
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { DType, Device, MaskRule, PresetName } from '../lib/index';
import { compare, makeInput, pack, parityDevices, Rng, TOLERANCE } from './helpers';
import type { PackedLayout } from './helpers';

const cuda = backends().cuda;
const emulated = cuda.available && cuda.emulated === true;
const why = emulated ? '' : cuda.available
  ? ' (skipped: a real GPU has no execution counters; the value tests below run on it)'
  : ` (skipped: CUDA unavailable: ${cuda.reason ?? 'no reason given'}; run with LIFELONG_CUDA_EMULATE=1 after \`npm run build:emu\`)`;
const devices = parityDevices();
const HALF: DType[] = ['bfloat16', 'float16'];

const layoutOf = (l: PackedLayout) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });

interface Run {
  tq: number; tk: number; H: number; Hkv: number; D: number; Dv: number;
  q: Float32Array; k: Float32Array; v: Float32Array;
  ql: PackedLayout; kl?: PackedLayout;
  rule: MaskRule | PresetName;
}

/** maskedAttention on `device` and the reference on the same (rounded) inputs: output, lse, both. */
async function attend(r: Run, dtype: DType, device: Device) {
  const q = await makeInput(r.q, [r.tq, r.H, r.D], dtype, device);
  const k = await makeInput(r.k, [r.tk, r.Hkv, r.D], dtype, device);
  const v = await makeInput(r.v, [r.tk, r.Hkv, r.Dv], dtype, device);
  const options = { q: layoutOf(r.ql), kv: r.kl ? layoutOf(r.kl) : undefined, rule: r.rule, returnLse: true };
  const got = await maskedAttention(q.t, k.t, v.t, options);
  const ref = reference.maskedAttention({ data: q.exact, shape: [r.tq, r.H, r.D] }, { data: k.exact, shape: [r.tk, r.Hkv, r.D] },
    { data: v.exact, shape: [r.tk, r.Hkv, r.Dv] }, options);
  const out = await got.output.float32(), lse = await got.lse!.float32();
  for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
  return { out, lse, ref };
}

function seqs(lengths: number[], rng: Rng) {
  return pack(lengths.map((n) => {
    const segments: number[] = [], roles: number[] = [];
    for (let i = 0; i < n; i++) { segments.push(Math.floor((4 * i) / Math.max(1, n))); roles.push(rng.pick([0, 0, 0, 1, 2])); }
    return { segments, roles };
  }));
}

(emulated ? test.serial : test.skip)(`float16 / bfloat16 maskedAttention on CUDA runs the tensor-core kernel (mma, ldmatrix, cp.async counters move); float32 does not${why}`, async (t) => {
  const rng = new Rng(80);
  const ql = seqs([3, 70, 0, 17], rng);
  const tq = ql.offsets[4], H = 4, Hkv = 2, D = 64, Dv = 32;
  const run: Run = { tq, tk: tq, H, Hkv, D, Dv, q: rng.floats(tq * H * D, 2), k: rng.floats(tq * Hkv * D, 2), v: rng.floats(tq * Hkv * Dv), ql, rule: 'persrec' };
  for (const dtype of HALF) {
    const before = backends().cuda.emulator!;
    const { out, lse, ref } = await attend(run, dtype, 'cuda');
    const after = backends().cuda.emulator!;
    for (const key of ['launches', 'mma', 'ldmatrix', 'cpAsync'] as const)
      t.true(after[key] > before[key], `${dtype}: ${key} ${before[key]} -> ${after[key]}`);
    t.is(compare(out, ref.output.data, dtype, 'output'), '', dtype);
    t.is(compare(lse, ref.lse!.data, 'float32', 'lse'), '', `${dtype} lse`);
  }
  const before = backends().cuda.emulator!;
  const { out, ref } = await attend(run, 'float32', 'cuda');
  const after = backends().cuda.emulator!;
  t.true(after.launches > before.launches, 'float32 launches kernels');
  for (const key of ['mma', 'ldmatrix', 'cpAsync'] as const) t.is(after[key], before[key], `float32 keeps the FP32 kernel: no ${key}`);
  t.is(compare(out, ref.output.data, 'float32', 'output'), '', 'float32');
});

test.serial('cross attention: 4 queries over 2,000 keys (bottom-right causal, full, a segment / role rule) = reference in float16 / bfloat16', async (t) => {
  const rng = new Rng(2000);
  const Lq = 4, Lk = 2000, H = 2, Hkv = 1, D = 16, Dv = 8;
  const kl = pack([{ segments: Array.from({ length: Lk }, (_, j) => Math.floor(j / 200)), roles: Array.from({ length: Lk }, (_, j) => (j % 50 === 49 ? 1 : 0)) }]);
  const ql = pack([{ segments: new Array(Lq).fill(9), roles: [0, 0, 1, 2] }]);
  const run = { tq: Lq, tk: Lk, H, Hkv, D, Dv, q: rng.floats(Lq * H * D, 2), k: rng.floats(Lk * Hkv * D, 2), v: rng.floats(Lk * Hkv * Dv), ql, kl };
  const custom: MaskRule = {
    item: { item: { seg: 'earlier', causal: true }, memory: { seg: 'any', causal: true } },
    memory: { memory: { seg: 'same-or-earlier', causal: false } },
    target: { item: { seg: 'same', causal: true }, target: { seg: 'self', causal: false } },
  };
  for (const device of devices)
    for (const dtype of HALF)
      for (const rule of ['causal', 'full', custom] as (MaskRule | PresetName)[]) {
        const before = emulated ? backends().cuda.emulator! : undefined;
        const { out, lse, ref } = await attend({ ...run, rule }, dtype, device);
        const name = `${device} ${dtype} ${typeof rule === 'string' ? rule : 'custom rule'}`;
        t.is(compare(out, ref.output.data, dtype, 'output'), '', name);
        t.is(compare(lse, ref.lse!.data, 'float32', 'lse'), '', `${name} lse`);
        if (device === 'cuda' && before) t.true(backends().cuda.emulator!.mma > before.mma, `${name}: the tensor-core kernel ran`);
      }
});

test.serial('float16 / bfloat16: Inf / NaN in masked keys never reach an output; in allowed keys they give what the reference gives', async (t) => {
  // Items see items of earlier segments only (segment 0 sees nothing). Keys of segments 1 and 2
  // hold NaN / ±Inf in k and v: rows of segments 0 and 1 share tiles with them but may not see
  // them (exact rows, finite), rows of segment 2 see segment 1's and turn NaN as the reference's.
  const rule: MaskRule = { item: { item: { seg: 'earlier', causal: true } } };
  const rng = new Rng(7);
  for (const [lengths, H, D] of [[[70, 0, 1, 130], 2, 16], [[33, 65], 1, 64], [[90], 1, 256]] as [number[], number, number][]) {
    const l = pack(lengths.map((n) => ({ segments: Array.from({ length: n }, (_, i) => Math.floor((3 * i) / n)), roles: new Array(n).fill(0) })));
    const T = l.offsets[lengths.length];
    const q = rng.floats(T * H * D, 2), k = rng.floats(T * H * D, 2), v = rng.floats(T * H * D);
    for (let i = 0; i < T; i++) {
      if (l.segments[i] === 0) continue;
      for (let x = 0; x < H * D; x++) {
        k[i * H * D + x] = [Number.NaN, Infinity, 1][x % 3];
        v[i * H * D + x] = [Number.NaN, -Infinity, Infinity][x % 3];
      }
    }
    for (const device of devices)
      for (const dtype of HALF) {
        const { out, lse, ref } = await attend({ tq: T, tk: T, H, Hkv: H, D, Dv: D, q, k, v, ql: l, rule }, dtype, device);
        const name = `${device} ${dtype} lengths ${lengths} D=${D}`;
        let bad = '';
        let maxRef = 0;
        for (let i = 0; i < ref.output.data.length; i++) if (Number.isFinite(ref.output.data[i])) maxRef = Math.max(maxRef, Math.abs(ref.output.data[i]));
        for (let i = 0; i < T && !bad; i++)
          for (let x = i * H * D; x < (i + 1) * H * D && !bad; x++) {
            const o = out[x], r = ref.output.data[x];
            if (l.segments[i] < 2 && !Number.isFinite(o)) bad = `row ${i} (segment ${l.segments[i]}): ${o}`;
            else if (Number.isNaN(r) !== Number.isNaN(o)) bad = `row ${i}: got ${o}, reference ${r}`;
            else if (!Number.isNaN(r) && !(Math.abs(o - r) <= TOLERANCE[dtype] * (1 + maxRef))) bad = `row ${i}: got ${o}, reference ${r}`;
          }
        t.is(bad, '', name);
        for (let i = 0; i < T; i++)
          if (l.segments[i] === 0) t.true(lse.subarray(i * H, (i + 1) * H).every((x) => x === -Infinity), `${name}: lse of row ${i} (no allowed key)`);
      }
  }
});
