// Backward ops (SPEC §9): the reference gradients against central finite differences in float64,
// and every backend against the reference on randomized jagged layouts (empty sequences, length 1,
// tile edges, every preset, custom rules, GQA, Dv != D, cross attention, silu, float16 / bfloat16).
import test from 'ava';
import { backends, indexerScores, indexerScoresBackward, maskedAttention, maskedAttentionBackward, reference, sparseAttention, sparseAttentionBackward, tensor } from '../lib/index';
import type { DType, Device, MaskRule, PresetName } from '../lib/index';
import { cudaSkipReason, makeInput, parityDevices, randomLayout, randomRule, Rng } from './helpers';

const GRAD_TOLERANCE: Record<string, number> = { float32: 1e-4, float16: 5e-3, bfloat16: 4e-2 };
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];

/** SPEC §9: max |g - ref| <= tol · (1 + max |ref|); '' when within. */
function compareGrad(got: ArrayLike<number>, ref: ArrayLike<number>, dtype: string, what: string): string {
  if (got.length !== ref.length) return `${what}: length ${got.length} != reference ${ref.length}`;
  let maxRef = 0, maxErr = 0, at = -1;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return `${what}[${i}]: got ${got[i]}, reference ${ref[i]}`;
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
    const e = Math.abs(got[i] - ref[i]);
    if (e > maxErr) { maxErr = e; at = i; }
  }
  const tol = GRAD_TOLERANCE[dtype] * (1 + maxRef);
  return maxErr <= tol ? '' : `${what}: max error ${maxErr} at ${at} (got ${got[at]}, reference ${ref[at]}) exceeds ${tol}`;
}

type LayoutKind = PresetName | 'mixed';

// ------------------------------------------------------------------ reference vs finite differences

/** Central differences of L = Σ dOut · f(x) in float64 at `samples` coordinates of each input. */
function checkFiniteDifferences(t: import('ava').ExecutionContext, name: string, inputs: Record<string, Float64Array>,
  loss: (inputs: Record<string, Float64Array>) => number, grads: Record<string, ArrayLike<number>>, rng: Rng, samples = 12) {
  const h = 1e-6;
  for (const key of Object.keys(inputs)) {
    const x = inputs[key];
    for (let n = 0; n < Math.min(samples, x.length); n++) {
      const i = rng.int(0, x.length - 1);
      const keep = x[i];
      x[i] = keep + h; const up = loss(inputs);
      x[i] = keep - h; const down = loss(inputs);
      x[i] = keep;
      const numeric = (up - down) / (2 * h);
      const analytic = grads[key][i];
      t.true(Math.abs(numeric - analytic) <= 1e-6 * (1 + Math.abs(numeric)), `${name}: d${key}[${i}] analytic ${analytic} vs numeric ${numeric}`);
    }
  }
}

const f64 = (rng: Rng, n: number, amp = 1) => Float64Array.from(rng.floats(n, amp));

const FD_CASES: { name: string; rule: MaskRule | PresetName; kind: LayoutKind; heads: number; kvHeads: number; D: number; Dv: number; silu?: boolean; cross?: boolean }[] = [
  { name: 'causal softmax, GQA', rule: 'causal', kind: 'mixed', heads: 4, kvHeads: 2, D: 8, Dv: 4 },
  { name: 'persrec softmax', rule: 'persrec', kind: 'persrec', heads: 2, kvHeads: 1, D: 4, Dv: 6 },
  { name: 'rec2pm-update silu', rule: 'rec2pm-update', kind: 'rec2pm-update', heads: 2, kvHeads: 2, D: 4, Dv: 4, silu: true },
  { name: 'full softmax, cross attention', rule: 'full', kind: 'mixed', heads: 2, kvHeads: 1, D: 4, Dv: 8, cross: true },
  { name: 'custom rule softmax', rule: { item: { item: { seg: 'same-or-earlier', causal: true }, memory: { seg: 'self', causal: false } }, memory: { item: { seg: 'any', causal: false } } }, kind: 'mixed', heads: 1, kvHeads: 1, D: 4, Dv: 4 },
];

for (const [ci, c] of FD_CASES.entries()) {
  test(`reference maskedAttentionBackward = central differences: ${c.name}`, (t) => {
    const rng = new Rng(900 + ci);
    const ql = randomLayout(rng, c.kind, 3, 6);
    const kl = c.cross ? randomLayout(rng, c.kind, 3, 6) : ql;
    const tq = ql.offsets[3], tk = kl.offsets[3];
    const inputs = { q: f64(rng, tq * c.heads * c.D), k: f64(rng, tk * c.kvHeads * c.D), v: f64(rng, tk * c.kvHeads * c.Dv) };
    const dOut = f64(rng, tq * c.heads * c.Dv);
    const options = { q: ql, kv: c.cross ? kl : undefined, rule: c.rule, normalize: c.silu ? 'silu' as const : 'softmax' as const };
    const loss = (x: Record<string, Float64Array>) => {
      const o = reference.maskedAttention({ data: x.q, shape: [tq, c.heads, c.D] }, { data: x.k, shape: [tk, c.kvHeads, c.D] }, { data: x.v, shape: [tk, c.kvHeads, c.Dv] }, options).output.data;
      let s = 0;
      for (let i = 0; i < o.length; i++) s += o[i] * dOut[i];
      return s;
    };
    const g = reference.maskedAttentionBackward({ q: { data: inputs.q, shape: [tq, c.heads, c.D] }, k: { data: inputs.k, shape: [tk, c.kvHeads, c.D] },
      v: { data: inputs.v, shape: [tk, c.kvHeads, c.Dv] }, dOutput: { data: dOut, shape: [tq, c.heads, c.Dv] } }, options);
    checkFiniteDifferences(t, c.name, inputs, loss, { q: g.dq.data, k: g.dk.data, v: g.dv.data }, rng);
  });
}

test('reference sparseAttentionBackward = central differences (duplicates, -1)', (t) => {
  const rng = new Rng(77);
  const qOffsets = new Int32Array([0, 3, 3, 7]), kOffsets = new Int32Array([0, 5, 9, 12]);
  const nq = 7, tk = 12, H = 2, Hkv = 1, D = 4, Dv = 3, K = 4;
  const idx = new Int32Array(nq * K);
  for (let i = 0; i < nq; i++) {
    const b = i < 3 ? 0 : 2, L = kOffsets[b + 1] - kOffsets[b];
    for (let n = 0; n < K; n++) idx[i * K + n] = n === 3 ? -1 : rng.int(0, L - 1);
    idx[i * K + 1] = idx[i * K]; // a duplicate in every row
  }
  const inputs = { q: f64(rng, nq * H * D), k: f64(rng, tk * Hkv * D), v: f64(rng, tk * Hkv * Dv) };
  const dOut = f64(rng, nq * H * Dv);
  const opts = { qOffsets, kOffsets };
  const indices = { data: idx, shape: [nq, K] };
  const loss = (x: Record<string, Float64Array>) => {
    const o = reference.sparseAttention({ data: x.q, shape: [nq, H, D] }, { data: x.k, shape: [tk, Hkv, D] }, { data: x.v, shape: [tk, Hkv, Dv] }, indices, opts).output.data;
    return o.reduce((s, y, i) => s + y * dOut[i], 0);
  };
  const g = reference.sparseAttentionBackward({ q: { data: inputs.q, shape: [nq, H, D] }, k: { data: inputs.k, shape: [tk, Hkv, D] },
    v: { data: inputs.v, shape: [tk, Hkv, Dv] }, indices, dOutput: { data: dOut, shape: [nq, H, Dv] } }, opts);
  checkFiniteDifferences(t, 'sparse', inputs, loss, { q: g.dq.data, k: g.dk.data, v: g.dv.data }, rng, 20);
});

test('reference indexerScoresBackward = central differences', (t) => {
  const rng = new Rng(78);
  const qOffsets = new Int32Array([0, 2, 5]), kOffsets = new Int32Array([0, 4, 6]);
  const nq = 5, tk = 6, Hi = 3, Di = 4, Lmax = 4;
  const inputs = { qI: f64(rng, nq * Hi * Di), kI: f64(rng, tk * Di), w: f64(rng, nq * Hi) };
  const dS = f64(rng, nq * Lmax);
  const opts = { qOffsets, kOffsets };
  const loss = (x: Record<string, Float64Array>) => {
    const s = reference.indexerScores({ data: x.qI, shape: [nq, Hi, Di] }, { data: x.kI, shape: [tk, Di] }, { data: x.w, shape: [nq, Hi] }, opts).data;
    let acc = 0;
    for (let i = 0; i < s.length; i++) if (s[i] !== -Infinity) acc += s[i] * dS[i];
    return acc;
  };
  const g = reference.indexerScoresBackward({ qI: { data: inputs.qI, shape: [nq, Hi, Di] }, kI: { data: inputs.kI, shape: [tk, Di] },
    w: { data: inputs.w, shape: [nq, Hi] }, dScores: { data: dS, shape: [nq, Lmax] } }, opts);
  checkFiniteDifferences(t, 'indexer', inputs, loss, { qI: g.dqI.data, kI: g.dkI.data, w: g.dw.data }, rng, 20);
});

// ------------------------------------------------------------------ backends vs reference

interface Case { name: string; seed: number; dtype: DType; rule: MaskRule | PresetName; kind: LayoutKind; heads: number; kvHeads: number; D: number; Dv: number; cross?: 'shorter' | 'any'; silu?: boolean; batch?: number; maxItems?: number }

function buildCases(): Case[] {
  const rng = new Rng(20261128);
  const heads = () => { const kv = rng.pick([1, 1, 2]); return { kvHeads: kv, heads: kv * rng.pick([1, 2, 4]) }; };
  const cases: Case[] = [];
  let seed = 1;
  for (const p of PRESETS)
    for (let i = 0; i < 2; i++)
      cases.push({ name: `${p} #${i}`, seed: seed++, dtype: 'float32', rule: p, kind: p === 'causal' || p === 'full' ? 'mixed' : p, ...heads(), D: rng.pick([8, 16, 32]), Dv: rng.pick([8, 16, 64]) });
  for (let i = 0; i < 5; i++)
    cases.push({ name: `custom rule #${i}`, seed: seed++, dtype: 'float32', rule: randomRule(rng), kind: 'mixed', ...heads(), D: rng.pick([8, 16]), Dv: rng.pick([8, 32]) });
  for (const d of [8, 16, 32, 64, 128, 256])
    cases.push({ name: `head size ${d}`, seed: seed++, dtype: 'float32', rule: rng.pick(PRESETS), kind: 'mixed', heads: 2, kvHeads: 1, D: d, Dv: rng.pick([8, 64, 256]), maxItems: 30, batch: 3 });
  cases.push({ name: 'cross attention Lq < Lk', seed: seed++, dtype: 'float32', rule: 'persrec', kind: 'persrec', heads: 4, kvHeads: 2, D: 16, Dv: 32, cross: 'shorter' });
  cases.push({ name: 'cross attention, any lengths', seed: seed++, dtype: 'float32', rule: 'causal', kind: 'mixed', heads: 2, kvHeads: 1, D: 32, Dv: 16, cross: 'any' });
  for (let i = 0; i < 3; i++)
    cases.push({ name: `silu #${i}`, seed: seed++, dtype: 'float32', rule: rng.pick(PRESETS), kind: 'persrec', ...heads(), D: 16, Dv: 8, silu: true });
  cases.push({ name: 'rule allowing nothing (all gradients 0)', seed: seed++, dtype: 'float32', rule: {}, kind: 'mixed', heads: 2, kvHeads: 1, D: 8, Dv: 8 });
  cases.push({ name: 'batch of 6 long sequences', seed: seed++, dtype: 'float32', rule: 'rec2pm-reference', kind: 'rec2pm-reference', heads: 2, kvHeads: 2, D: 16, Dv: 16, batch: 6, maxItems: 70 });
  for (const dtype of ['float16', 'bfloat16'] as DType[]) {
    for (const p of PRESETS)
      cases.push({ name: `${dtype} ${p}`, seed: seed++, dtype, rule: p, kind: p === 'causal' || p === 'full' ? 'mixed' : p, ...heads(), D: rng.pick([16, 64]), Dv: rng.pick([8, 32]) });
    cases.push({ name: `${dtype} custom rule, cross`, seed: seed++, dtype, rule: randomRule(rng), kind: 'mixed', heads: 4, kvHeads: 2, D: 32, Dv: 16, cross: 'any' });
    cases.push({ name: `${dtype} silu`, seed: seed++, dtype, rule: 'persrec', kind: 'persrec', heads: 2, kvHeads: 1, D: 16, Dv: 32, silu: true });
  }
  return cases;
}

/** The emulator's tensor-core counters (undefined off the emulator): which CUDA path a call took. */
type TcCounters = { launches: number; mma: number; ldmatrix: number; cpAsync: number };
function tcCounters(): TcCounters | undefined {
  const e = backends().cuda.emulator;
  return e ? { launches: e.launches, mma: e.mma, ldmatrix: e.ldmatrix, cpAsync: e.cpAsync } : undefined;
}

/** `probe` gets the counters before and after the backward call alone (the forward moves them too). */
async function runCase(t: import('ava').ExecutionContext, c: Case, device: Device, probe?: (before?: TcCounters, after?: TcCounters) => void) {
  const rng = new Rng(c.seed * 104729);
  const batch = c.batch ?? rng.int(1, 6);
  const ql = randomLayout(rng, c.kind, batch, c.maxItems ?? 30);
  const kl = c.cross ? randomLayout(rng, c.kind, batch, c.maxItems ?? 30, c.cross === 'shorter' ? ql.lengths.map((l) => l + rng.int(0, 40)) : undefined) : ql;
  const tq = ql.offsets[batch], tk = kl.offsets[batch];
  const q = await makeInput(rng.floats(tq * c.heads * c.D, 2), [tq, c.heads, c.D], c.dtype, device);
  const k = await makeInput(rng.floats(tk * c.kvHeads * c.D, 2), [tk, c.kvHeads, c.D], c.dtype, device);
  const v = await makeInput(rng.floats(tk * c.kvHeads * c.Dv), [tk, c.kvHeads, c.Dv], c.dtype, device);
  const dOut = await makeInput(rng.floats(tq * c.heads * c.Dv), [tq, c.heads, c.Dv], c.dtype, device);
  const layout = (l: typeof ql) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });
  const options = { q: layout(ql), kv: c.cross ? layout(kl) : undefined, rule: c.rule, normalize: c.silu ? 'silu' as const : 'softmax' as const };
  const fwd = await maskedAttention(q.t, k.t, v.t, { ...options, returnLse: !c.silu });
  const before = tcCounters();
  const got = await maskedAttentionBackward({ q: q.t, k: k.t, v: v.t, output: fwd.output, lse: fwd.lse, dOutput: dOut.t }, options);
  probe?.(before, tcCounters());
  const ref = reference.maskedAttentionBackward({ q: { data: q.exact, shape: [tq, c.heads, c.D] }, k: { data: k.exact, shape: [tk, c.kvHeads, c.D] },
    v: { data: v.exact, shape: [tk, c.kvHeads, c.Dv] }, dOutput: { data: dOut.exact, shape: [tq, c.heads, c.Dv] } }, options);
  const where = `${c.name} on ${device}: B=${batch} Tq=${tq} Tk=${tk} H=${c.heads}/${c.kvHeads} D=${c.D} Dv=${c.Dv}`;
  for (const [name, g, r] of [['dq', got.dq, ref.dq], ['dk', got.dk, ref.dk], ['dv', got.dv, ref.dv]] as const) {
    t.deepEqual(g.shape, r.shape, `${name} shape, ${where}`);
    t.is(g.dtype, c.dtype);
    t.is(g.device, device);
    t.is(compareGrad(await g.float32(), r.data, c.dtype, name), '', where);
  }
  // A key nobody may see: exactly 0 (the reference's sum over no pairs).
  const dk = await got.dk.float32(), dv = await got.dv.float32();
  let unseen = 0;
  for (let j = 0; j < tk; j++) {
    const base = j * c.kvHeads;
    let seen = false;
    for (let x = 0; x < c.kvHeads * c.Dv && !seen; x++) seen = ref.dv.data[base * c.Dv + x] !== 0;
    for (let x = 0; x < c.kvHeads * c.D && !seen; x++) seen = ref.dk.data[base * c.D + x] !== 0;
    if (seen) continue;
    unseen++;
    for (let x = 0; x < c.kvHeads * c.D; x++) if (dk[base * c.D + x] !== 0) t.fail(`dk of unseen key ${j} is ${dk[base * c.D + x]}, ${where}`);
    for (let x = 0; x < c.kvHeads * c.Dv; x++) if (dv[base * c.Dv + x] !== 0) t.fail(`dv of unseen key ${j} is ${dv[base * c.Dv + x]}, ${where}`);
  }
  t.log(`${where}: ${unseen} keys nobody sees`);
  for (const x of [q.t, k.t, v.t, dOut.t, fwd.output, fwd.lse, got.dq, got.dk, got.dv]) x?.dispose();
}

const devices = parityDevices();
for (const c of buildCases())
  for (const device of devices) test(`maskedAttentionBackward ${device} = reference: ${c.name}`, (t) => runCase(t, c, device));

// The tensor-core backward (cuda/attention/tc_attention_backward_kernel.cuh): float16 / bfloat16 on the
// emulator (which reports sm 9.0) must take it — the emulator's mma / ldmatrix / cp.async counters move
// during the backward call — and float32 must not; every case against the reference gradients.
// Serial: the counters are the process's.
const cudaEmu = backends().cuda;
const emulated = cudaEmu.available && cudaEmu.emulated === true;
function tensorCoreCases(): Case[] {
  const rng = new Rng(31337);
  const cases: Case[] = [];
  let seed = 5000;
  const dims = () => { const D = rng.pick([8, 16, 32, 64, 128]); let Dv = rng.pick([8, 16, 32, 64, 128]); if (Dv === D) Dv = D === 8 ? 32 : D / 2; return { D, Dv }; };
  for (const dtype of ['float16', 'bfloat16'] as DType[]) {
    for (const p of PRESETS)
      cases.push({ name: `tensor cores ${dtype} ${p}, GQA`, seed: seed++, dtype, rule: p, kind: p === 'causal' || p === 'full' ? 'mixed' : p, heads: 4, kvHeads: 2, ...dims(), maxItems: 90, batch: rng.int(1, 4) });
    cases.push({ name: `tensor cores ${dtype} custom rule, cross`, seed: seed++, dtype, rule: randomRule(rng), kind: 'mixed', heads: 2, kvHeads: 1, ...dims(), cross: 'any', maxItems: 80 });
    cases.push({ name: `tensor cores ${dtype} cross Lq < Lk`, seed: seed++, dtype, rule: 'persrec', kind: 'persrec', heads: 2, kvHeads: 2, ...dims(), cross: 'shorter', maxItems: 60 });
    cases.push({ name: `tensor cores ${dtype} silu`, seed: seed++, dtype, rule: rng.pick(PRESETS), kind: 'rec2pm-update', heads: 4, kvHeads: 1, ...dims(), silu: true, maxItems: 80 });
  }
  cases.push({ name: 'float32 keeps the scalar kernels', seed: seed++, dtype: 'float32', rule: 'causal', kind: 'mixed', heads: 2, kvHeads: 1, D: 16, Dv: 32, maxItems: 40, batch: 4 });
  return cases;
}
(emulated ? test.serial : test.skip)(`maskedAttentionBackward cuda: float16 / bfloat16 run the tensor-core backward (counters move) = reference; float32 does not${emulated ? '' : ' (skipped: needs the emulated build, LIFELONG_CUDA_EMULATE=1 after `npm run build:emu`)'}`, async (t) => {
  let tensorCoreRuns = 0;
  for (const c of tensorCoreCases()) {
    await runCase(t, c, 'cuda', (before, after) => {
      if (!before || !after) { t.fail('emulator counters missing'); return; }
      const moved = after.mma > before.mma && after.ldmatrix > before.ldmatrix && after.cpAsync > before.cpAsync;
      if (c.dtype === 'float32') t.true(after.launches > before.launches && after.mma === before.mma && after.ldmatrix === before.ldmatrix, `${c.name}: kernels ran, no tensor-core work`);
      else if (moved) tensorCoreRuns++;
      else t.fail(`${c.name}: tensor-core counters did not move (mma ${before.mma} -> ${after.mma})`);
    });
  }
  t.true(tensorCoreRuns >= 16, `${tensorCoreRuns} tensor-core backward calls`);
});

const cudaReason = cudaSkipReason();
if (cudaReason) test.skip(`backward cuda = reference (skipped: ${cudaReason}; set LIFELONG_CUDA_EMULATE=1 or use a GPU)`, () => {});

test('keys nobody may see get exactly 0, even holding NaN / Inf, and dq stays finite', async (t) => {
  // item queries see items causally; memory keys are seen by nobody and hold NaN / Inf.
  const rule: MaskRule = { item: { item: { seg: 'any', causal: true } } };
  const roles = new Uint8Array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0]);
  const T = roles.length, H = 2, D = 8, Dv = 8;
  const rng = new Rng(5);
  const kv = rng.floats(T * D), vv = rng.floats(T * Dv), qv = rng.floats(T * H * D), refDOut = rng.floats(T * H * Dv);
  // Memory rows hold NaN / Inf in k and v (keys nobody sees) and in q (queries that see nothing).
  for (let j = 0; j < T; j++) if (roles[j] === 1) { kv[j * D] = NaN; vv[j * Dv + 1] = Infinity; qv[j * H * D + 3] = NaN; }
  for (const [device, dtype] of devices.flatMap((d) => (['float32', 'float16', 'bfloat16'] as DType[]).map((x) => [d, x] as const))) {
    // 16-bit inputs (on CUDA: the tensor-core backward's exact path for tiles holding NaN / Inf)
    // against the reference on the values they hold.
    const qi = await makeInput(qv, [T, H, D], dtype, device), ki = await makeInput(kv, [T, 1, D], dtype, device);
    const vi = await makeInput(vv, [T, 1, Dv], dtype, device), di = await makeInput(refDOut, [T, H, Dv], dtype, device);
    const q = qi.t, k = ki.t, v = vi.t, dOutput = di.t;
    const refGrads = reference.maskedAttentionBackward({ q: { data: qi.exact, shape: [T, H, D] }, k: { data: ki.exact, shape: [T, 1, D] },
      v: { data: vi.exact, shape: [T, 1, Dv] }, dOutput: { data: di.exact, shape: [T, H, Dv] } }, { q: { offsets: new Int32Array([0, T]), roles }, rule });
    const options = { q: { offsets: new Int32Array([0, T]), roles }, rule };
    const fwd = await maskedAttention(q, k, v, { ...options, returnLse: true });
    const g = await maskedAttentionBackward({ q, k, v, output: fwd.output, lse: fwd.lse, dOutput }, options);
    const dk = await g.dk.float32(), dv = await g.dv.float32(), dq = await g.dq.float32();
    for (let j = 0; j < T; j++) {
      if (roles[j] !== 1) continue;
      t.true(dk.slice(j * D, (j + 1) * D).every((x) => x === 0), `${device} ${dtype}: dk of unseen key ${j}`);
      t.true(dv.slice(j * Dv, (j + 1) * Dv).every((x) => x === 0), `${device} ${dtype}: dv of unseen key ${j}`);
    }
    for (let i = 0; i < T; i++) if (roles[i] === 0) t.true(dq.slice(i * H * D, (i + 1) * H * D).every(Number.isFinite), `${device} ${dtype}: dq row ${i} finite`);
    // Every gradient of the visible part equals the reference's (the NaN rows add nothing to it).
    const visible = (a: ArrayLike<number>, width: number) => Array.from(a).filter((_, x) => roles[Math.floor(x / width)] === 0);
    t.is(compareGrad(visible(dk, D), visible(refGrads.dk.data, D), dtype, 'dk'), '', `${device} ${dtype}`);
    t.is(compareGrad(visible(dv, Dv), visible(refGrads.dv.data, Dv), dtype, 'dv'), '', `${device} ${dtype}`);
    t.is(compareGrad(visible(dq, H * D), visible(refGrads.dq.data, H * D), dtype, 'dq'), '', `${device} ${dtype}`);
  }
});

test('softmax backward without output / lse is a TypeError naming it; silu needs neither', async (t) => {
  const T = 4, q = tensor(new Float32Array(T * 8).fill(0.1), [T, 1, 8]);
  const options = { q: { offsets: new Int32Array([0, T]) } };
  const fwd = await maskedAttention(q, q, q, { ...options, returnLse: true });
  await t.throwsAsync(maskedAttentionBackward({ q, k: q, v: q, dOutput: q, output: fwd.output }, options), { instanceOf: TypeError, message: /lse/ });
  await t.throwsAsync(maskedAttentionBackward({ q, k: q, v: q, dOutput: q, lse: fwd.lse }, options), { instanceOf: TypeError, message: /output/ });
  await t.throwsAsync(maskedAttentionBackward({ q, k: q, v: q, dOutput: tensor(new Float32Array(T * 4), [T, 1, 4]), output: fwd.output, lse: fwd.lse }, options),
    { instanceOf: RangeError, message: /dOutput/ });
  const g = await maskedAttentionBackward({ q, k: q, v: q, dOutput: q }, { ...options, normalize: 'silu' });
  t.deepEqual(g.dq.shape, [T, 1, 8]);
});

// ------------------------------------------------------------------ sparse / indexer backends

for (const dtype of ['float32', 'float16', 'bfloat16'] as DType[]) {
  for (const device of devices) {
    test(`sparseAttentionBackward ${device} = reference (${dtype}, duplicates, -1, GQA, Dv != D)`, async (t) => {
      for (let trial = 0; trial < 3; trial++) {
        const rng = new Rng(300 + trial);
        const batch = rng.int(1, 5);
        const qLen = Array.from({ length: batch }, () => rng.pick([0, 1, rng.int(1, 20)]));
        const kLen = Array.from({ length: batch }, () => rng.pick([0, 1, rng.int(1, 70)]));
        const qOffsets = new Int32Array(batch + 1), kOffsets = new Int32Array(batch + 1);
        for (let b = 0; b < batch; b++) { qOffsets[b + 1] = qOffsets[b] + qLen[b]; kOffsets[b + 1] = kOffsets[b] + kLen[b]; }
        const nq = qOffsets[batch], tk = kOffsets[batch];
        const Hkv = rng.pick([1, 2]), H = Hkv * rng.pick([1, 2]), D = rng.pick([8, 16, 64]), Dv = rng.pick([8, 32]), K = rng.pick([1, 4, 16]);
        const idx = new Int32Array(nq * K);
        for (let b = 0; b < batch; b++)
          for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++)
            for (let n = 0; n < K; n++) idx[i * K + n] = kLen[b] === 0 || rng.bool(0.15) ? -1 : rng.int(0, kLen[b] - 1);
        const q = await makeInput(rng.floats(nq * H * D, 2), [nq, H, D], dtype, device);
        const k = await makeInput(rng.floats(tk * Hkv * D, 2), [tk, Hkv, D], dtype, device);
        const v = await makeInput(rng.floats(tk * Hkv * Dv), [tk, Hkv, Dv], dtype, device);
        const dOut = await makeInput(rng.floats(nq * H * Dv), [nq, H, Dv], dtype, device);
        const indices = tensor(idx, [nq, K], { dtype: 'int32', device });
        const opts = { qOffsets, kOffsets };
        const fwd = await sparseAttention(q.t, k.t, v.t, indices, { ...opts, returnLse: true });
        const got = await sparseAttentionBackward({ q: q.t, k: k.t, v: v.t, indices, output: fwd.output, lse: fwd.lse!, dOutput: dOut.t }, opts);
        const ref = reference.sparseAttentionBackward({ q: { data: q.exact, shape: [nq, H, D] }, k: { data: k.exact, shape: [tk, Hkv, D] },
          v: { data: v.exact, shape: [tk, Hkv, Dv] }, indices: { data: idx, shape: [nq, K] }, dOutput: { data: dOut.exact, shape: [nq, H, Dv] } }, opts);
        for (const [name, g, r] of [['dq', got.dq, ref.dq], ['dk', got.dk, ref.dk], ['dv', got.dv, ref.dv]] as const) {
          t.deepEqual(g.shape, r.shape);
          t.is(compareGrad(await g.float32(), r.data, dtype, name), '', `trial ${trial}: B=${batch} nq=${nq} tk=${tk} H=${H}/${Hkv} D=${D} Dv=${Dv} K=${K}`);
        }
      }
    });

    test(`indexerScoresBackward ${device} = reference (${dtype})`, async (t) => {
      for (let trial = 0; trial < 3; trial++) {
        const rng = new Rng(400 + trial);
        const batch = rng.int(1, 4);
        const qOffsets = new Int32Array(batch + 1), kOffsets = new Int32Array(batch + 1);
        for (let b = 0; b < batch; b++) { qOffsets[b + 1] = qOffsets[b] + rng.pick([0, 1, rng.int(1, 12)]); kOffsets[b + 1] = kOffsets[b] + rng.pick([0, 1, rng.int(1, 80)]); }
        const nq = qOffsets[batch], tk = kOffsets[batch];
        let lmax = 0;
        for (let b = 0; b < batch; b++) lmax = Math.max(lmax, kOffsets[b + 1] - kOffsets[b]);
        const Hi = rng.pick([1, 4, 8]), Di = rng.pick([8, 32, 64]);
        const qI = await makeInput(rng.floats(nq * Hi * Di), [nq, Hi, Di], dtype, device);
        const kI = await makeInput(rng.floats(tk * Di), [tk, Di], dtype, device);
        const w = await makeInput(rng.floats(nq * Hi), [nq, Hi], dtype, device);
        const dS = rng.floats(nq * lmax);
        const opts = { qOffsets, kOffsets };
        const scores = await indexerScores(qI.t, kI.t, w.t, opts);
        t.deepEqual(scores.shape, [nq, lmax]);
        const got = await indexerScoresBackward({ qI: qI.t, kI: kI.t, w: w.t, dScores: tensor(dS, [nq, lmax], { device }) }, opts);
        const ref = reference.indexerScoresBackward({ qI: { data: qI.exact, shape: [nq, Hi, Di] }, kI: { data: kI.exact, shape: [tk, Di] },
          w: { data: w.exact, shape: [nq, Hi] }, dScores: { data: dS, shape: [nq, lmax] } }, opts);
        for (const [name, g, r] of [['dqI', got.dqI, ref.dqI], ['dkI', got.dkI, ref.dkI], ['dw', got.dw, ref.dw]] as const) {
          t.deepEqual(g.shape, r.shape);
          t.is(compareGrad(await g.float32(), r.data, dtype, name), '', `trial ${trial}: B=${batch} nq=${nq} tk=${tk} Hi=${Hi} Di=${Di}`);
        }
      }
    });
  }
}

test('sparseAttentionBackward captures its arguments at the call (inputs disposed right after)', async (t) => {
  for (const device of devices) {
    const rng = new Rng(11);
    const qOffsets = new Int32Array([0, 3]), kOffsets = new Int32Array([0, 5]);
    const idx = new Int32Array([0, 4, 4, -1, 2, 1]);
    const q = tensor(rng.floats(3 * 8), [3, 1, 8], { device }), k = tensor(rng.floats(5 * 8), [5, 1, 8], { device }), v = tensor(rng.floats(5 * 8), [5, 1, 8], { device });
    const indices = tensor(idx, [3, 2], { dtype: 'int32', device });
    const fwd = await sparseAttention(q, k, v, indices, { qOffsets, kOffsets, returnLse: true });
    const dOutput = tensor(rng.floats(3 * 8), [3, 1, 8], { device });
    const ref = reference.sparseAttentionBackward({ q: { data: await q.float32(), shape: [3, 1, 8] }, k: { data: await k.float32(), shape: [5, 1, 8] },
      v: { data: await v.float32(), shape: [5, 1, 8] }, indices: { data: idx, shape: [3, 2] }, dOutput: { data: await dOutput.float32(), shape: [3, 1, 8] } }, { qOffsets, kOffsets });
    const pending = sparseAttentionBackward({ q, k, v, indices, output: fwd.output, lse: fwd.lse!, dOutput }, { qOffsets, kOffsets });
    for (const x of [q, k, v, indices, fwd.output, fwd.lse!, dOutput]) x.dispose();
    qOffsets[1] = 0; kOffsets[1] = 0;
    const got = await pending;
    t.is(compareGrad(await got.dk.float32(), ref.dk.data, 'float32', 'dk'), '', device);
    t.is(compareGrad(await got.dq.float32(), ref.dq.data, 'float32', 'dq'), '', device);
  }
});
