// The tensor-core attention kernel (cuda/attention/tc_attention_kernel.cuh): float16 / bfloat16
// maskedAttention on CUDA (sm_80+, and the emulator, which reports 9.0) runs it, float32 keeps the
// FP32 kernel. In the emulated build the emulator's counters prove which one ran; the values are
// compared with the reference on every device present (SPEC §3, §7). Serial: the counters are the
// process's, and no other call may run between a test's two readings.
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { DType, Device, MaskRule, PresetName } from '../lib/index';
import { compare, makeInput, pack, parityDevices, randomRule, randomSequence, Rng, TOLERANCE } from './helpers';
import type { PackedLayout, Seq } from './helpers';

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
  silu?: boolean;
}

/** maskedAttention on `device` and the reference on the same (rounded) inputs: output, lse, both. */
async function attend(r: Run, dtype: DType, device: Device) {
  const q = await makeInput(r.q, [r.tq, r.H, r.D], dtype, device);
  const k = await makeInput(r.k, [r.tk, r.Hkv, r.D], dtype, device);
  const v = await makeInput(r.v, [r.tk, r.Hkv, r.Dv], dtype, device);
  const options = r.silu
    ? { q: layoutOf(r.ql), kv: r.kl ? layoutOf(r.kl) : undefined, rule: r.rule, normalize: 'silu' as const }
    : { q: layoutOf(r.ql), kv: r.kl ? layoutOf(r.kl) : undefined, rule: r.rule, returnLse: true };
  const got = await maskedAttention(q.t, k.t, v.t, options);
  const ref = reference.maskedAttention({ data: q.exact, shape: [r.tq, r.H, r.D] }, { data: k.exact, shape: [r.tk, r.Hkv, r.D] },
    { data: v.exact, shape: [r.tk, r.Hkv, r.Dv] }, options);
  const out = await got.output.float32(), lse = got.lse ? await got.lse.float32() : undefined;
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
    t.is(compare(lse!, ref.lse!.data, 'float32', 'lse'), '', `${dtype} lse`);
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
        t.is(compare(lse!, ref.lse!.data, 'float32', 'lse'), '', `${name} lse`);
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
          if (l.segments[i] === 0) t.true(lse!.subarray(i * H, (i + 1) * H).every((x) => x === -Infinity), `${name}: lse of row ${i} (no allowed key)`);
      }
  }
});

// Small heads (D, Dv <= 32) are packed several per block (tc_traits.cuh, tc_head_pack): 4 heads of
// capacity 16, 2 of capacity 32, when the head count divides. A block copies each distinct kv head of
// its pack once per visited key tile, so the emulator's cp.async count (one per 16-byte chunk copied
// from global memory) tells a packed launch from one block per head. For one sequence of L tokens
// under the full rule, every query tile visits every key tile: Q chunks L * H * D/8, K and V chunks
// (query tiles) * (sum over packs of the pack's distinct kv heads) * L * (D or Dv)/8.
function expectedCopies(L: number, H: number, Hkv: number, D: number, Dv: number, pack: number) {
  const qTiles = Math.ceil(L / 64), group = H / Hkv;
  let slots = 0;
  for (let h0 = 0; h0 < H; h0 += pack) slots += Math.floor((h0 + pack - 1) / group) - Math.floor(h0 / group) + 1;
  return L * H * (D / 8) + qTiles * slots * L * (D / 8 + Dv / 8);
}

(emulated ? test.serial : test.skip)(`small heads run packed several per block: cp.async counts of packed launches (and of one head per block when H does not divide)${why}`, async (t) => {
  const rng = new Rng(1616);
  const L = 100;
  const ql = pack([{ segments: new Array(L).fill(0), roles: new Array(L).fill(0) }]);
  // [H, Hkv, D, Dv, heads per block]
  const cases: [number, number, number, number, number][] = [
    [4, 1, 16, 16, 4], [8, 2, 8, 8, 4], [8, 8, 16, 8, 4], [4, 2, 8, 16, 4],
    [6, 3, 32, 16, 2], [6, 2, 16, 32, 2], [2, 1, 32, 32, 2],
    [3, 1, 16, 16, 1], [5, 5, 32, 8, 1], [4, 1, 64, 64, 1],
  ];
  for (const [H, Hkv, D, Dv, packed] of cases)
    for (const dtype of HALF) {
      const run: Run = { tq: L, tk: L, H, Hkv, D, Dv, q: rng.floats(L * H * D, 2), k: rng.floats(L * Hkv * D, 2), v: rng.floats(L * Hkv * Dv), ql, rule: 'full' };
      const before = backends().cuda.emulator!;
      const { out, lse, ref } = await attend(run, dtype, 'cuda');
      const copies = backends().cuda.emulator!.cpAsync - before.cpAsync;
      const name = `${dtype} H=${H} Hkv=${Hkv} D=${D} Dv=${Dv}`;
      t.is(copies, expectedCopies(L, H, Hkv, D, Dv, packed), `${name}: ${packed} head(s) per block`);
      if (packed > 1 && Hkv < H) t.true(copies < expectedCopies(L, H, Hkv, D, Dv, 1), `${name}: fewer copies than one head per block`);
      t.is(compare(out, ref.output.data, dtype, 'output'), '', name);
      t.is(compare(lse!, ref.lse!.data, 'float32', 'lse'), '', `${name} lse`);
    }
});

/** A jagged batch for `kind` with an empty and a length-1 sequence among random ones. */
function smallHeadBatch(rng: Rng, kind: PresetName | 'mixed'): Seq[] {
  const seqs: Seq[] = [];
  const n = rng.int(1, 4);
  for (let b = 0; b < n; b++) seqs.push(randomSequence(rng, kind, 24));
  seqs.splice(rng.int(0, seqs.length), 0, { segments: [], roles: [] });
  seqs.splice(rng.int(0, seqs.length), 0, { segments: [0], roles: [rng.pick([0, 1, 2])] });
  return seqs;
}

test.serial('small heads (D, Dv in 8 / 16 / 32, H 2-8, GQA, Dv != D): float16 / bfloat16 = reference on random jagged layouts, every preset, custom rules, cross attention, split-KV, silu', async (t) => {
  const rng = new Rng(Number(process.env.LK_SMALL_HEADS_SEED ?? 32));
  const presets: (PresetName | 'custom')[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update', 'custom'];
  const trials = 3 * presets.length;
  for (let trial = 0; trial < trials; trial++) {
    const preset = presets[trial % presets.length];
    const D = rng.pick([8, 16, 32]);
    const Dv = trial % 3 === 0 ? rng.pick([8, 16, 32].filter((x) => x !== D)) : rng.pick([8, 16, 32]);
    const H = rng.int(2, 8);
    const Hkv = rng.pick([1, 2, 3, 4, 6, 8].filter((x) => x <= H && H % x === 0));
    const kind = preset === 'custom' ? 'mixed' : preset === 'causal' || preset === 'full' ? 'mixed' : preset;
    const qSeqs = smallHeadBatch(rng, kind);
    const ql = pack(qSeqs);
    // Cross attention every third trial: each sequence's keys are its queries plus more items;
    // every other time, sequences of <= 16 queries get over 1,024 keys (split-KV items, mask_plan.h).
    const cross = trial % 3 === 1, split = cross && trial % 2 === 0;
    const kl = cross
      ? pack(qSeqs.map((s) => {
        const extra = split && s.roles.length <= 16 ? rng.int(1030, 1300) : rng.int(0, 40);
        const seg = s.segments.length ? s.segments[s.segments.length - 1] : 0;
        return { segments: s.segments.concat(new Array(extra).fill(seg)), roles: s.roles.concat(new Array(extra).fill(0)) };
      }))
      : undefined;
    const tq = ql.offsets[qSeqs.length], tk = kl ? kl.offsets[qSeqs.length] : tq;
    const rule = preset === 'custom' ? randomRule(rng) : preset;
    const silu = trial % 4 === 3;
    const run: Run = { tq, tk, H, Hkv, D, Dv, q: rng.floats(tq * H * D, 2), k: rng.floats(tk * Hkv * D, 2), v: rng.floats(tk * Hkv * Dv), ql, kl, rule, silu };
    for (const device of devices)
      for (const dtype of HALF) {
        const before = emulated && device === 'cuda' ? backends().cuda.emulator! : undefined;
        const { out, lse, ref } = await attend(run, dtype, device);
        const name = `trial ${trial} ${device} ${dtype} ${preset}${cross ? ' cross' : ''}${split ? ' split-KV' : ''}${silu ? ' silu' : ''} lengths ${ql.lengths} H=${H} Hkv=${Hkv} D=${D} Dv=${Dv}`;
        t.is(compare(out, ref.output.data, dtype, 'output'), '', name);
        if (!silu) t.is(compare(lse!, ref.lse!.data, 'float32', 'lse'), '', `${name} lse`);
        if (before) t.true(backends().cuda.emulator!.mma > before.mma, `${name}: the tensor-core kernel ran`);
      }
  }
});
