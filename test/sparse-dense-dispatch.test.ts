// The CPU sparse ops' dense dispatch (native/cpu/sparse_cpu.cc): when every query takes each of its
// user's keys exactly once, indexedCrossAttention / sparseAttention run as dense `full` attention
// (every dtype: the dense kernels widen float16 / bfloat16 as they load them).
// Forced onto every instruction-set path this CPU runs (or LK_CPU_ISA's alone) and compared with the
// reference on randomized jagged batches (empty and 1-key users, users without queries, GQA, Dv != D,
// head sizes off the vector widths, float32 / float16 / bfloat16). The native dispatch counter proves
// which path ran: +1 when all rows qualify; +0 when one row has a NaN indexer score, k < its length,
// a duplicated or missing index, and then the sparse path must still match the reference.
import test from 'ava';
import { backends, indexedCrossAttention, reference, sparseAttention, tensor, DType, Tensor } from '../lib/index';
import { native } from '../lib/native';
import { compare, Rng } from './helpers';

const PATHS = process.env.LK_CPU_ISA ? [process.env.LK_CPU_ISA] : backends().cpu.isaPaths;
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];
const dispatches = () => native()._cpuSparseDenseDispatches();

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

type Input = { t: Tensor; exact: Float32Array; shape: number[] };
async function input(data: Float32Array, shape: number[], dtype: DType): Promise<Input> {
  const t = tensor(data, shape, { dtype, device: 'cpu' });
  return { t, exact: await t.float32(), shape };
}
const ref = (x: Input) => ({ data: x.exact, shape: x.shape });

/** A random batch: key lengths include 0 and 1, some users have no queries. */
function randomBatch(rng: Rng) {
  const B = rng.int(1, 5);
  const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 2, 7, 37, 130, rng.int(1, 400)]));
  const qLens = Array.from({ length: B }, () => rng.pick([0, 1, rng.int(1, 9), 8, 17]));
  const kvHeads = rng.pick([1, 2, 3]), heads = kvHeads * rng.pick([1, 2, 4]);
  const D = rng.pick([8, 16, 20, 64]), Dv = rng.pick([8, 36, 64, 128].filter((x) => x !== D));
  return { keyLens, qLens, qOffsets: offsetsOf(qLens), kOffsets: offsetsOf(keyLens), heads, kvHeads, D, Dv, Hi: rng.pick([1, 2]), Di: rng.pick([8, 32]) };
}

/** Each query's indices: a shuffled permutation of its user's keys, -1 in the other slots (anywhere). */
function permutations(rng: Rng, qLens: number[], keyLens: number[], k: number): Int32Array {
  const out = new Int32Array(qLens.reduce((a, b) => a + b, 0) * k).fill(-1);
  let row = 0;
  qLens.forEach((n, b) => {
    for (let i = 0; i < n; i++, row++) {
      const slots = Array.from({ length: k }, (_, s) => s);
      for (let s = k - 1; s > 0; s--) { const j = rng.int(0, s); [slots[s], slots[j]] = [slots[j], slots[s]]; }
      for (let j = 0; j < keyLens[b]; j++) out[row * k + slots[j]] = j;
    }
  });
  return out;
}

for (const isa of PATHS) {
  for (const dtype of DTYPES) {
    test.serial(`${isa} ${dtype}: k >= every row length runs dense attention, = reference (fused and caller's indices)`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 101 + dtype.length * 7);
      for (let round = 0; round < 6; round++) {
        const s = randomBatch(rng);
        const Nq = s.qOffsets[s.qLens.length], Tk = s.kOffsets[s.keyLens.length];
        const k = Math.max(1, ...s.keyLens) + rng.pick([0, 0, 1, 50]);
        const qI = await input(rng.floats(Nq * s.Hi * s.Di), [Nq, s.Hi, s.Di], dtype), kI = await input(rng.floats(Tk * s.Di), [Tk, s.Di], dtype);
        const w = await input(rng.floats(Nq * s.Hi), [Nq, s.Hi], dtype);
        const q = await input(rng.floats(Nq * s.heads * s.D, 2), [Nq, s.heads, s.D], dtype);
        const kk = await input(rng.floats(Tk * s.kvHeads * s.D, 2), [Tk, s.kvHeads, s.D], dtype);
        const v = await input(rng.floats(Tk * s.kvHeads * s.Dv), [Tk, s.kvHeads, s.Dv], dtype);
        const layout = { qOffsets: s.qOffsets, kOffsets: s.kOffsets };
        const what = `round ${round}: keys ${s.keyLens} queries ${s.qLens} k ${k} H ${s.heads}/${s.kvHeads} D ${s.D} Dv ${s.Dv}`;

        const before = dispatches();
        const fused = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: k, ...layout, returnLse: true });
        t.is(dispatches() - before, 1, `fused call dispatched to dense attention, ${what}`);
        const fi = (await fused.indices.data()) as Int32Array;
        const want = reference.indexedCrossAttention(ref(q), ref(kk), ref(v), { indexer: { q: ref(qI), k: ref(kI), w: ref(w) }, topK: k, ...layout });
        // every query selected all of its user's keys: the index sets are exact, whatever the ties
        for (let r = 0; r < Nq; r++) {
          const got = Array.from(fi.subarray(r * k, (r + 1) * k)).filter((j) => j >= 0).sort((a, b) => a - b);
          const exp = Array.from(want.indices.data.subarray(r * k, (r + 1) * k)).filter((j) => j >= 0).sort((a, b) => a - b);
          t.deepEqual(got, exp, `row ${r} key set, ${what}`);
        }
        // the op's own order: values descending, equal values by lower index (radix-sorted rows)
        const fv = (await fused.values.data()) as Float32Array;
        let disorder = '';
        for (let r = 0; r < Nq && !disorder; r++)
          for (let i = r * k; i + 1 < (r + 1) * k && fi[i + 1] >= 0; i++)
            if (fv[i] < fv[i + 1] || (fv[i] === fv[i + 1] && fi[i] >= fi[i + 1])) { disorder = `row ${r} slot ${i - r * k}: (${fv[i]}, ${fi[i]}) before (${fv[i + 1]}, ${fi[i + 1]})`; break; }
        t.is(disorder, '', what);
        t.is(compare(await fused.output.float32(), want.output.data, dtype, 'fused output'), '', what);
        const refWithLse = reference.sparseAttention(ref(q), ref(kk), ref(v), { data: want.indices.data, shape: [Nq, k] }, { ...layout, returnLse: true });
        t.is(compare(await fused.lse!.float32(), refWithLse.lse!.data, dtype, 'fused lse'), '', what);

        const perm = permutations(rng, s.qLens, s.keyLens, k);
        const indices = tensor(perm, [Nq, k], { dtype: 'int32', device: 'cpu' });
        const mid = dispatches();
        const got = await sparseAttention(q.t, kk.t, v.t, indices, { ...layout, returnLse: true });
        t.is(dispatches() - mid, 1, `sparseAttention over permutations dispatched, ${what}`);
        const wantSparse = reference.sparseAttention(ref(q), ref(kk), ref(v), { data: perm, shape: [Nq, k] }, { ...layout, returnLse: true });
        t.is(compare(await got.output.float32(), wantSparse.output.data, dtype, 'sparse output'), '', what);
        t.is(compare(await got.lse!.float32(), wantSparse.lse!.data, dtype, 'sparse lse'), '', what);
        for (const x of [qI.t, kI.t, w.t, q.t, kk.t, v.t, fused.output, fused.indices, fused.values, fused.lse!, indices, got.output, got.lse!]) x.dispose();
      }
    });

    test.serial(`${isa} ${dtype}: one row short of its keys (NaN score, k < length, duplicate or missing index) stays sparse, = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 211 + dtype.length * 13);
      for (let round = 0; round < 8; round++) {
        const s = randomBatch(rng);
        // one user with queries and >= 2 keys breaks the dispatch
        const target = rng.int(0, s.keyLens.length - 1);
        s.keyLens[target] = Math.max(2, s.keyLens[target]);
        s.qLens[target] = Math.max(1, s.qLens[target]);
        s.qOffsets = offsetsOf(s.qLens); s.kOffsets = offsetsOf(s.keyLens);
        const Nq = s.qOffsets[s.qLens.length], Tk = s.kOffsets[s.keyLens.length];
        const breakBy = (['nan', 'short-k'] as const)[round % 2];
        const longest = Math.max(...s.keyLens);
        const k = breakBy === 'short-k' ? s.keyLens[target] - 1 : longest + rng.pick([0, 3]);
        const kIData = rng.floats(Tk * s.Di);
        if (breakBy === 'nan') kIData[(s.kOffsets[target] + rng.int(0, s.keyLens[target] - 1)) * s.Di + rng.int(0, s.Di - 1)] = Number.NaN;
        const qI = await input(rng.floats(Nq * s.Hi * s.Di), [Nq, s.Hi, s.Di], dtype), kI = await input(kIData, [Tk, s.Di], dtype);
        const w = await input(rng.floats(Nq * s.Hi), [Nq, s.Hi], dtype);
        const q = await input(rng.floats(Nq * s.heads * s.D, 2), [Nq, s.heads, s.D], dtype);
        const kk = await input(rng.floats(Tk * s.kvHeads * s.D, 2), [Tk, s.kvHeads, s.D], dtype);
        const v = await input(rng.floats(Tk * s.kvHeads * s.Dv), [Tk, s.kvHeads, s.Dv], dtype);
        const layout = { qOffsets: s.qOffsets, kOffsets: s.kOffsets };
        const what = `round ${round} (${breakBy}): keys ${s.keyLens} queries ${s.qLens} k ${k}`;

        const before = dispatches();
        const fused = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: k, ...layout, returnLse: true });
        t.is(dispatches() - before, 0, `fused call stayed sparse, ${what}`);
        const fi = (await fused.indices.data()) as Int32Array;
        // the output over the keys the op chose (near ties may pick differently from the reference)
        const want = reference.sparseAttention(ref(q), ref(kk), ref(v), { data: fi, shape: [Nq, k] }, { ...layout, returnLse: true });
        t.is(compare(await fused.output.float32(), want.output.data, dtype, 'fused output'), '', what);
        t.is(compare(await fused.lse!.float32(), want.lse!.data, dtype, 'fused lse'), '', what);
        if (breakBy === 'nan') {
          const row = s.qOffsets[target];
          t.is(Array.from(fi.subarray(row * k, (row + 1) * k)).filter((j) => j >= 0).length, s.keyLens[target] - 1, `the NaN key is not selected, ${what}`);
        }

        // caller's indices: permutations, then one row gets a duplicate or loses a key
        const kAll = longest + 1;
        const perm = permutations(rng, s.qLens, s.keyLens, kAll);
        const row = s.qOffsets[target] + rng.int(0, s.qLens[target] - 1);
        const slots = Array.from({ length: kAll }, (_, i) => i).filter((i) => perm[row * kAll + i] >= 0);
        const victim = row * kAll + slots[rng.int(0, slots.length - 1)];
        const duplicate = round % 4 < 2;
        perm[victim] = duplicate ? (perm[victim] + 1) % s.keyLens[target] : -1;
        const indices = tensor(perm, [Nq, kAll], { dtype: 'int32', device: 'cpu' });
        const mid = dispatches();
        const got = await sparseAttention(q.t, kk.t, v.t, indices, { ...layout, returnLse: true });
        t.is(dispatches() - mid, 0, `sparseAttention with a ${duplicate ? 'duplicate' : 'missing'} index stayed sparse, ${what}`);
        const wantSparse = reference.sparseAttention(ref(q), ref(kk), ref(v), { data: perm, shape: [Nq, kAll] }, { ...layout, returnLse: true });
        t.is(compare(await got.output.float32(), wantSparse.output.data, dtype, 'sparse output'), '', what);
        t.is(compare(await got.lse!.float32(), wantSparse.lse!.data, dtype, 'sparse lse'), '', what);
        for (const x of [qI.t, kI.t, w.t, q.t, kk.t, v.t, fused.output, fused.indices, fused.values, fused.lse!, indices, got.output, got.lse!]) x.dispose();
      }
    });
  }
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
