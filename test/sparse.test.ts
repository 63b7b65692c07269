// Indexer-selected sparse cross attention (SPEC §5) against the reference, on every backend:
// randomized jagged batches, adversarial top-k rows, index sets compared with the tie rule.
import test from 'ava';
import { indexedCrossAttention, indexerScores, reference, sparseAttention, tensor, topK, DType, Device, Tensor } from '../lib/index';
import { compare, parityDevices, Rng } from './helpers';

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

/** Index sets equal except among values tied with the k-th (SPEC §7), and order by value. */
function sameSelection(got: Int32Array, gotValues: Float32Array, want: Int32Array, wantValues: ArrayLike<number>, k: number, rows: number): string {
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < k; i++) {
      const g = got[r * k + i], w = want[r * k + i];
      if (g === w) continue;
      const gv = gotValues[r * k + i], wv = wantValues[r * k + i];
      if (gv === wv && g >= 0 && w >= 0) continue;  // a tie resolved the same way in value
      return `row ${r} slot ${i}: index ${g} (value ${gv}) vs reference ${w} (value ${wv})`;
    }
  }
  return '';
}

async function input(rng: Rng, shape: number[], dtype: DType, device: Device, amp = 1): Promise<{ t: Tensor; exact: Float32Array }> {
  const t = tensor(rng.floats(shape.reduce((a, b) => a * b, 1), amp), shape, { dtype, device });
  return { t, exact: await t.float32() };
}

for (const device of parityDevices()) {
  test(`topK ${device}: adversarial rows (ties, NaN, infinities, low-bit differences, short rows)`, async (t) => {
    const cols = 300;
    const rows: number[][] = [
      new Array(cols).fill(1.5),                                                       // all equal
      Array.from({ length: cols }, (_, i) => (i % 7 === 0 ? 2 : i % 3)),               // many ties at the threshold
      Array.from({ length: cols }, (_, i) => 1 + i * 2 ** -23 * ((i * 37) % 5)),       // low bits only
      Array.from({ length: cols }, (_, i) => (i % 4 === 0 ? Number.NaN : i % 4 === 1 ? -Infinity : i % 4 === 2 ? Infinity : -i)),
      Array.from({ length: cols }, (_, i) => (i < 5 ? i : Number.NaN)),                  // fewer candidates than k
      Array.from({ length: cols }, (_, i) => (i % 2 ? -0 : 0)),                          // signed zeros tie
      Array.from({ length: cols }, (_, i) => -1e30 + i),                                 // very negative finite
    ];
    const rng = new Rng(3);
    for (let i = 0; i < 5; i++) rows.push(Array.from({ length: cols }, () => Math.round(rng.next() * 20) / 4));
    const flat = Float32Array.from(rows.flat());
    const scores = tensor(flat, [rows.length, cols], { device });
    for (const k of [1, 7, 64, 299, 300, 512]) {
      const lengths = Int32Array.from(rows, (_, r) => (r % 3 === 0 ? cols : r * 23 % cols));
      for (const opts of [{}, { lengths }]) {
        const got = await topK(scores, k, opts);
        const want = reference.topK({ data: flat, shape: [rows.length, cols] }, k, opts);
        const gi = (await got.indices.data()) as Int32Array, gv = (await got.values.data()) as Float32Array;
        t.is(sameSelection(gi, gv, want.indices.data, want.values.data, k, rows.length), '', `k=${k} ${'lengths' in opts ? 'with lengths' : ''}`);
        t.deepEqual(Array.from(gi), Array.from(want.indices.data), `exact tie order k=${k}`);
        got.indices.dispose(); got.values.dispose();
      }
    }
  });

  test(`topK ${device}: random rows up to 20,000 columns, k up to 2,048`, async (t) => {
    const rng = new Rng(11);
    for (const [rowsN, cols, k] of [[3, 20000, 2048], [5, 4096, 256], [2, 1000, 1000], [4, 17, 32]]) {
      const data = Float32Array.from({ length: rowsN * cols }, () => (rng.bool(0.05) ? 0.5 : rng.next() * 2 - 1));
      const s = tensor(data, [rowsN, cols], { device });
      const got = await topK(s, k);
      const want = reference.topK({ data, shape: [rowsN, cols] }, k);
      t.deepEqual(Array.from((await got.indices.data()) as Int32Array), Array.from(want.indices.data), `rows ${rowsN} cols ${cols} k ${k}`);
      t.deepEqual(Array.from((await got.values.data()) as Float32Array), Array.from(want.values.data, (x) => Math.fround(x)));
    }
  });

  for (const dtype of ['float32', 'float16', 'bfloat16'] as DType[]) {
    test(`indexerScores / sparseAttention / indexedCrossAttention ${device} ${dtype} = reference on jagged batches`, async (t) => {
      const rng = new Rng(dtype.length * 13 + 1);
      for (let round = 0; round < 4; round++) {
        const B = rng.int(1, 5);
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 5, 130, 700, rng.int(1, 2000)]));
        // up to 9 queries per entry: indexer GEMMs of <= 8, <= 16 and wider columns (queries x heads)
        const qLens = Array.from({ length: B }, () => rng.int(0, rng.pick([4, 9])));
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        // head counts past a multiple of 8 and (on the CPU, which takes any head size) widths off its
        // 8 / 64-float vector blocks reach every tail; CUDA takes head sizes 8 ... 256, powers of two
        const Hi = rng.pick([1, 2, 4]), Di = rng.pick([8, 20, 32, 64]);
        const kvHeads = rng.pick([1, 2, 3]), heads = kvHeads * rng.pick([1, 4, 5]);
        const D = rng.pick(device === 'cpu' ? [16, 20, 64, 72] : [16, 64]), Dv = rng.pick(device === 'cpu' ? [8, 36, 72, 128] : [8, 32, 128]);
        const k = rng.pick([1, 16, 37, 256]);
        const qI = await input(rng, [Nq, Hi, Di], dtype, device), kI = await input(rng, [Tk, Di], dtype, device), w = await input(rng, [Nq, Hi], dtype, device);
        const q = await input(rng, [Nq, heads, D], dtype, device), kk = await input(rng, [Tk, kvHeads, D], dtype, device), v = await input(rng, [Tk, kvHeads, Dv], dtype, device);
        const layout = { qOffsets, kOffsets };
        const ref = (x: { exact: Float32Array }, shape: number[]) => ({ data: x.exact, shape });

        const scores = await indexerScores(qI.t, kI.t, w.t, layout);
        const refScores = reference.indexerScores(ref(qI, [Nq, Hi, Di]), ref(kI, [Tk, Di]), ref(w, [Nq, Hi]), layout);
        t.deepEqual(scores.shape, refScores.shape);
        t.is(compare(await scores.float32(), refScores.data, 'float32', 'scores'), '', `scores B=${B} Nq=${Nq} Tk=${Tk}`);

        const chosen = await topK(scores, k);
        const idx = (await chosen.indices.data()) as Int32Array;
        const got = await sparseAttention(q.t, kk.t, v.t, chosen.indices, { ...layout, returnLse: true });
        const refSparse = reference.sparseAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]),
          { data: idx, shape: [Nq, k] }, { ...layout, returnLse: true });
        t.is(compare(await got.output.float32(), refSparse.output.data, dtype, 'sparse output'), '');
        t.is(compare(await got.lse!.float32(), refSparse.lse!.data, dtype === 'float32' ? 'float32' : dtype, 'sparse lse'), '');

        const fused = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: k, ...layout });
        const refFused = reference.indexedCrossAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]),
          { indexer: { q: ref(qI, [Nq, Hi, Di]), k: ref(kI, [Tk, Di]), w: ref(w, [Nq, Hi]) }, topK: k, ...layout });
        const fi = (await fused.indices.data()) as Int32Array;
        const fv = (await fused.values.data()) as Float32Array;
        // Indices agree with the reference's up to ties, which float rounding of near-equal scores can flip.
        const refVals = Array.from(refFused.indices.data, (j, n) => (j >= 0 ? refScores.data[Math.floor(n / k) * refScores.shape[1] + j] : -Infinity));
        let mismatched = 0;
        for (let n = 0; n < fi.length; n++) if (fi[n] !== refFused.indices.data[n] && Math.abs(fv[n] - refVals[n]) > 1e-4 * (1 + Math.abs(refVals[n]))) mismatched++;
        t.is(mismatched, 0, 'fused selection');
        // Output: the reference attention over the keys the fused op chose (the reference's own set unless near ties).
        const refOverChosen = reference.sparseAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]), { data: fi, shape: [Nq, k] }, layout);
        t.is(compare(await fused.output.float32(), refOverChosen.output.data, dtype, 'fused output'), '');
        for (const x of [qI.t, kI.t, w.t, q.t, kk.t, v.t, scores, chosen.indices, chosen.values, got.output, got.lse!, fused.output, fused.indices, fused.values]) x.dispose();
      }
    });
  }

  // Long rows: on CUDA a batch whose longest row has <= 16,384 keys runs the fused kernel (the score
  // row in dynamic shared memory, above the 48 KiB default), a longer one the unfused kernels.
  test(`indexedCrossAttention ${device}: rows of 9,000 to 20,000 keys = reference`, async (t) => {
    const rng = new Rng(2026);
    for (const keyLens of [[12000, 1, 9000], [16384, 3], [20000, 700]]) {
      const qLens = keyLens.map(() => 2);
      const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
      const Nq = qOffsets[qLens.length], Tk = kOffsets[keyLens.length];
      const Hi = 2, Di = 32, heads = 4, kvHeads = 2, D = 16, Dv = 32, k = 300;
      const qI = await input(rng, [Nq, Hi, Di], 'float32', device), kI = await input(rng, [Tk, Di], 'float32', device), w = await input(rng, [Nq, Hi], 'float32', device);
      const q = await input(rng, [Nq, heads, D], 'float32', device), kk = await input(rng, [Tk, kvHeads, D], 'float32', device), v = await input(rng, [Tk, kvHeads, Dv], 'float32', device);
      const ref = (x: { exact: Float32Array }, shape: number[]) => ({ data: x.exact, shape });
      const layout = { qOffsets, kOffsets };
      const got = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: k, ...layout });
      const want = reference.indexedCrossAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]),
        { indexer: { q: ref(qI, [Nq, Hi, Di]), k: ref(kI, [Tk, Di]), w: ref(w, [Nq, Hi]) }, topK: k, ...layout });
      const gi = (await got.indices.data()) as Int32Array, gv = (await got.values.data()) as Float32Array;
      // Slots may differ only where the two scores are within rounding of each other (near ties).
      const nearTie = (n: number) => Math.abs(gv[n] - want.values.data[n]) <= 1e-4 * (1 + Math.abs(want.values.data[n]));
      t.true(Array.from(gi).every((x, n) => x === want.indices.data[n] || nearTie(n)), `keys ${keyLens}: selection`);
      const wantOut = reference.sparseAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]), { data: gi, shape: [Nq, k] }, layout);
      t.is(compare(await got.output.float32(), wantOut.output.data, 'float32', 'output'), '', `keys ${keyLens}`);
      for (const x of [qI.t, kI.t, w.t, q.t, kk.t, v.t, got.output, got.indices, got.values]) x.dispose();
    }
  });

  // Index sets no top-k produces: duplicates (attended once per occurrence), -1 anywhere, a user's
  // queries sharing most of their keys, rows with nothing selected, up to 19 queries per user.
  test(`sparseAttention ${device}: duplicates, -1 and key sets shared between a user's queries = reference`, async (t) => {
    const rng = new Rng(808);
    for (let round = 0; round < 6; round++) {
      const B = rng.int(1, 4);
      const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 3, 40, 333]));
      const qLens = Array.from({ length: B }, () => rng.pick([1, 3, 8, 9, 19]));
      const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
      const Nq = qOffsets[B], Tk = kOffsets[B];
      const K = rng.pick([1, 5, 64]), kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 3]);
      const D = 16, Dv = rng.pick(device === 'cpu' ? [8, 64, 72] : [8, 64]);
      const idx = new Int32Array(Nq * K).fill(-1);
      for (let b = 0; b < B; b++) {
        const len = keyLens[b];
        const shared = Array.from({ length: K }, () => (len ? rng.int(0, len - 1) : -1));  // the user's common picks
        for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++)
          for (let s = 0; s < K; s++) {
            const u = rng.next();
            idx[i * K + s] = len === 0 || u < 0.15 ? -1 : u < 0.7 ? shared[s] : rng.int(0, len - 1);
          }
      }
      const q = await input(rng, [Nq, heads, D], 'float32', device), kk = await input(rng, [Tk, kvHeads, D], 'float32', device), v = await input(rng, [Tk, kvHeads, Dv], 'float32', device);
      const layout = { qOffsets, kOffsets };
      const got = await sparseAttention(q.t, kk.t, v.t, tensor(idx, [Nq, K], { device }), { ...layout, returnLse: true });
      const want = reference.sparseAttention({ data: q.exact, shape: [Nq, heads, D] }, { data: kk.exact, shape: [Tk, kvHeads, D] },
        { data: v.exact, shape: [Tk, kvHeads, Dv] }, { data: idx, shape: [Nq, K] }, { ...layout, returnLse: true });
      const what = `round ${round}: keys ${keyLens} queries ${qLens} K=${K}`;
      t.is(compare(await got.output.float32(), want.output.data, 'float32', 'output'), '', what);
      t.is(compare(await got.lse!.float32(), want.lse!.data, 'float32', 'lse'), '', what);
      for (const x of [q.t, kk.t, v.t, got.output, got.lse!]) x.dispose();
    }
  });

  // The papers' extremes: a DSA-sized indexer (64 heads x 128) with 64 beam queries, and a GEMs-sized
  // one (2 x 32) over a 100,000-key history with k = 2,048 (on CUDA both take the unfused kernels).
  test(`indexer shapes from the papers on ${device}: 64 x 128 heads with 64 queries, 100,000 keys with k = 2,048`, async (t) => {
    const rng = new Rng(64);
    for (const c of [
      { qLens: [64, 3], keyLens: [256, 1000], Hi: 64, Di: 128, k: 256 },
      { qLens: [2, 1], keyLens: [100000, 300], Hi: 2, Di: 32, k: 2048 },
    ]) {
      const qOffsets = offsetsOf(c.qLens), kOffsets = offsetsOf(c.keyLens);
      const Nq = qOffsets[c.qLens.length], Tk = kOffsets[c.keyLens.length];
      const heads = 2, kvHeads = 1, D = 16, Dv = 8;
      const qI = await input(rng, [Nq, c.Hi, c.Di], 'float32', device), kI = await input(rng, [Tk, c.Di], 'float32', device), w = await input(rng, [Nq, c.Hi], 'float32', device);
      const q = await input(rng, [Nq, heads, D], 'float32', device), kk = await input(rng, [Tk, kvHeads, D], 'float32', device), v = await input(rng, [Tk, kvHeads, Dv], 'float32', device);
      const ref = (x: { exact: Float32Array }, shape: number[]) => ({ data: x.exact, shape });
      const layout = { qOffsets, kOffsets };
      const what = `Hi=${c.Hi} Di=${c.Di} keys ${c.keyLens}`;
      const scores = await indexerScores(qI.t, kI.t, w.t, layout);
      const refScores = reference.indexerScores(ref(qI, [Nq, c.Hi, c.Di]), ref(kI, [Tk, c.Di]), ref(w, [Nq, c.Hi]), layout);
      const gotScores = await scores.float32();
      t.is(compare(gotScores, refScores.data, 'float32', 'scores'), '', what);
      // Top-k of these very scores: exact, tie rule included.
      const chosen = await topK(scores, c.k);
      const refChosen = reference.topK({ data: gotScores, shape: scores.shape }, c.k);
      t.deepEqual(Array.from((await chosen.indices.data()) as Int32Array), Array.from(refChosen.indices.data), `${what}: top-k`);
      const got = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: c.k, ...layout });
      const want = reference.indexedCrossAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]),
        { indexer: { q: ref(qI, [Nq, c.Hi, c.Di]), k: ref(kI, [Tk, c.Di]), w: ref(w, [Nq, c.Hi]) }, topK: c.k, ...layout });
      const gi = (await got.indices.data()) as Int32Array, gv = (await got.values.data()) as Float32Array;
      const nearTie = (n: number) => Math.abs(gv[n] - want.values.data[n]) <= 1e-4 * (1 + Math.abs(want.values.data[n]));
      t.true(Array.from(gi).every((x, n) => x === want.indices.data[n] || nearTie(n)), `${what}: fused selection`);
      // The output is the reference attention over the keys the fused op chose (equal sets unless near ties).
      const wantOut = reference.sparseAttention(ref(q, [Nq, heads, D]), ref(kk, [Tk, kvHeads, D]), ref(v, [Tk, kvHeads, Dv]), { data: gi, shape: [Nq, c.k] }, layout);
      t.is(compare(await got.output.float32(), wantOut.output.data, 'float32', 'output'), '', what);
      for (const x of [qI.t, kI.t, w.t, q.t, kk.t, v.t, scores, chosen.indices, chosen.values, got.output, got.indices, got.values]) x.dispose();
    }
  });

  test(`sparse ops on ${device} reject bad input before any kernel runs`, async (t) => {
    const q = tensor(new Float32Array(2 * 2 * 8), [2, 2, 8], { device });
    const k = tensor(new Float32Array(5 * 1 * 8), [5, 1, 8], { device });
    const v = tensor(new Float32Array(5 * 1 * 8), [5, 1, 8], { device });
    const layout = { qOffsets: new Int32Array([0, 1, 2]), kOffsets: new Int32Array([0, 3, 5]) };
    const idx = (rows: number[]) => tensor(new Int32Array(rows), [2, rows.length / 2], { device });
    await t.throwsAsync(() => sparseAttention(q, k, v, idx([0, 3, 0, 1]), layout), { instanceOf: RangeError, message: /^indices: entry \[0, 1\] = 3 is outside \[-1, 3\)/ });
    await t.throwsAsync(() => sparseAttention(q, k, v, idx([0, -2, 0, 1]), layout), { instanceOf: RangeError, message: /^indices: entry \[0, 1\] = -2/ });
    await t.throwsAsync(() => sparseAttention(q, k, v, idx([0, 1, 0, 2]), layout), { instanceOf: RangeError, message: /^indices: entry \[1, 1\] = 2 is outside \[-1, 2\)/ });
    await t.throwsAsync(() => sparseAttention(q, k, v, new Int32Array(4) as never, layout), { instanceOf: TypeError, message: /^indices:/ });
    await t.throwsAsync(() => sparseAttention(q, k, v, idx([0, 1, 0, 1]), { qOffsets: new Int32Array([0, 2]), kOffsets: layout.kOffsets }), { instanceOf: RangeError, message: /^options\.kOffsets: batch 2 differs/ });
    await t.throwsAsync(() => sparseAttention(q, k, v, idx([0, 1, 0, 1]), { ...layout, kOffsets: new Int32Array([0, 3, 4]) }), { instanceOf: RangeError, message: /^options\.kOffsets: the last offset/ });
    const s = tensor(new Float32Array(6), [2, 3], { device });
    await t.throwsAsync(() => topK(s, 0), { instanceOf: RangeError, message: /^k:/ });
    await t.throwsAsync(() => topK(s, 1.5), { instanceOf: TypeError, message: /^k:/ });
    await t.throwsAsync(() => topK(s, 2, { lengths: new Int32Array([1]) }), { instanceOf: RangeError, message: /^options\.lengths: expected 2 entries/ });
    await t.throwsAsync(() => topK(s, 2, { lengths: new Int32Array([1, 4]) }), { instanceOf: RangeError, message: /^options\.lengths: entry 1 = 4/ });
    await t.throwsAsync(() => topK(tensor(new Int32Array(6), [2, 3], { device }), 2), { instanceOf: TypeError, message: /^scores: expected dtype float32/ });
    const qI = tensor(new Float32Array(2 * 2 * 4), [2, 2, 4], { device });
    await t.throwsAsync(() => indexerScores(qI, tensor(new Float32Array(5 * 3), [5, 3], { device }), tensor(new Float32Array(4), [2, 2], { device }), layout), { instanceOf: RangeError, message: /^kI: dim 3 differs/ });
    await t.throwsAsync(() => indexerScores(qI, tensor(new Float32Array(5 * 4), [5, 4], { device }), tensor(new Float32Array(2), [2, 1], { device }), layout), { instanceOf: RangeError, message: /^w: expected shape \[2, 2\]/ });
    await t.throwsAsync(() => indexedCrossAttention(q, k, v, { indexer: { q: qI, k: tensor(new Float32Array(4 * 4), [4, 4], { device }), w: tensor(new Float32Array(4), [2, 2], { device }) }, topK: 2, ...layout }),
      { instanceOf: RangeError, message: /^options\.indexer\.k: 4 rows for 5 keys/ });
  });
}
