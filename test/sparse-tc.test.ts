// The sparse path's tensor-core / vectorized kernels (issue #11) against the reference, on CUDA (a
// GPU or the emulator: LIFELONG_CUDA_EMULATE=1 after `npm run build:emu`). On the emulator the
// execution counters (backends().cuda.emulator) prove which path ran: the float16 / bfloat16
// indexer issues mma / ldmatrix / cp.async, float32 keeps the exact kernel (no mma).
import test from 'ava';
import { backends, indexedCrossAttention, indexerScores, reference, sparseAttention, tensor, topK, DType, Tensor } from '../lib/index';
import { compare, cudaSkipReason, Rng } from './helpers';

const reason = cudaSkipReason();
const emulated = backends().cuda.emulated === true;

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

type Counters = { mma: number; ldmatrix: number; cpAsync: number };
function counters(): Counters | undefined {
  const e = backends().cuda.emulator;
  return e ? { mma: e.mma, ldmatrix: e.ldmatrix, cpAsync: e.cpAsync } : undefined;
}

/** Scores equal the reference within §7; NaN and ±Infinity exactly where the reference has them. */
function compareScores(got: ArrayLike<number>, want: ArrayLike<number>, dtype: DType, what = 'scores'): string {
  const finiteGot: number[] = [], finiteWant: number[] = [];
  for (let i = 0; i < want.length; i++) {
    if (!Number.isFinite(want[i]) || !Number.isFinite(got[i])) {
      if (!Object.is(want[i], got[i])) return `${what}[${i}]: got ${got[i]}, reference ${want[i]}`;
      continue;
    }
    finiteGot.push(got[i]); finiteWant.push(want[i]);
  }
  return compare(finiteGot, finiteWant, dtype, what);
}

/** The reference's indexer scores and their top-k, from the CUDA tensors' (rounded) values. */
async function referenceSelection(qI: Tensor, kI: Tensor, w: Tensor, k: number, layout: { qOffsets: Int32Array; kOffsets: Int32Array }) {
  const exact = async (x: Tensor) => ({ data: await x.float32(), shape: [...x.shape] });
  const scores = reference.indexerScores(await exact(qI), await exact(kI), await exact(w), layout);
  return { scores, top: reference.topK(scores, k) };
}

/** One indexedCrossAttention call, the emulator launches it took, and the reference's selection from the same indexer tensors. */
async function indexedWithReference(q: Tensor, kk: Tensor, v: Tensor, indexer: { q: Tensor; k: Tensor; w: Tensor }, k: number,
  layout: { qOffsets: Int32Array; kOffsets: Int32Array }) {
  const launches0 = backends().cuda.emulator?.launches;
  const got = await indexedCrossAttention(q, kk, v, { indexer, topK: k, ...layout });
  const launches1 = backends().cuda.emulator?.launches;
  const launches = launches0 !== undefined && launches1 !== undefined ? launches1 - launches0 : undefined;
  const want = (await referenceSelection(indexer.q, indexer.k, indexer.w, k, layout)).top;
  return { got, launches, want, gi: (await got.indices.data()) as Int32Array };
}

if (reason) {
  test.skip(`sparse path on tensor cores (skipped: ${reason}; set LIFELONG_CUDA_EMULATE=1 or use a GPU)`, () => {});
} else {
  for (const dtype of ['float16', 'bfloat16', 'float32'] as DType[]) {
    // serial: the counters are process-wide, a concurrent test would move them too
    test.serial(`indexerScores cuda ${dtype}: (query, head) x key tiles = reference on jagged batches`, async (t) => {
      const rng = new Rng(dtype.length * 101 + 7);
      let tensorCoreCalls = 0;
      for (let round = 0; round < 6; round++) {
        const B = rng.int(1, 4);
        // key chunks of 1,024 (512 at Di = 128) keys per block: lengths across one and several chunks
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 31, 64, 65, 1025, rng.int(1, 2200)]));
        const qLens = Array.from({ length: B }, () => rng.pick([0, 1, 3, rng.int(1, 40)]));
        const Hi = rng.pick([1, 2, 3, 5, 8, 64]), Di = rng.pick([8, 16, 24, 32, 64, 128]);
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        const qI = tensor(rng.floats(Nq * Hi * Di), [Nq, Hi, Di], { dtype, device: 'cuda' });
        const kIData = rng.floats(Tk * Di);
        // Non-finite keys in some rounds: relu keeps NaN, w · relu(-inf) is 0 (SPEC §5)
        if (round % 3 === 2 && Tk > 4) { kIData[0] = Infinity; kIData[Di * 2 + 1] = -Infinity; kIData[Di * 3] = Number.NaN; }
        const kI = tensor(kIData, [Tk, Di], { dtype, device: 'cuda' });
        const w = tensor(rng.floats(Nq * Hi), [Nq, Hi], { dtype, device: 'cuda' });
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        const before = counters();
        const scores = await indexerScores(qI, kI, w, { qOffsets, kOffsets });
        const after = counters();
        const want = reference.indexerScores(await exact(qI, [Nq, Hi, Di]), await exact(kI, [Tk, Di]), await exact(w, [Nq, Hi]), { qOffsets, kOffsets });
        t.deepEqual(scores.shape, want.shape);
        t.is(compareScores(await scores.float32(), want.data, dtype), '', `B=${B} Nq=${Nq} Tk=${Tk} Hi=${Hi} Di=${Di}`);
        if (before && after && Nq > 0 && Tk > 0) {
          const moved = after.mma > before.mma && after.ldmatrix > before.ldmatrix && after.cpAsync > before.cpAsync;
          if (dtype === 'float32') t.is(after.mma, before.mma, 'float32 keeps the exact kernel');
          else { t.true(moved, `tensor-core indexer ran (mma ${before.mma} -> ${after.mma})`); tensorCoreCalls++; }
        }
        for (const x of [qI, kI, w, scores]) x.dispose();
      }
      if (emulated && dtype !== 'float32') t.true(tensorCoreCalls > 0, 'some round had queries and keys');
    });
  }

  test('indexerScores cuda bfloat16: the DeepSeek-shaped indexer (64 heads x 128) over 3,000 keys = reference', async (t) => {
    const rng = new Rng(64128);
    const qOffsets = offsetsOf([3, 2]), kOffsets = offsetsOf([3000, 777]);
    const Nq = 5, Hi = 64, Di = 128, Tk = kOffsets[2];
    const qI = tensor(rng.floats(Nq * Hi * Di), [Nq, Hi, Di], { dtype: 'bfloat16', device: 'cuda' });
    const kI = tensor(rng.floats(Tk * Di), [Tk, Di], { dtype: 'bfloat16', device: 'cuda' });
    const w = tensor(rng.floats(Nq * Hi), [Nq, Hi], { dtype: 'bfloat16', device: 'cuda' });
    const scores = await indexerScores(qI, kI, w, { qOffsets, kOffsets });
    const want = reference.indexerScores({ data: await qI.float32(), shape: [Nq, Hi, Di] }, { data: await kI.float32(), shape: [Tk, Di] },
      { data: await w.float32(), shape: [Nq, Hi] }, { qOffsets, kOffsets });
    t.is(compareScores(await scores.float32(), want.data, 'bfloat16'), '');
    // The selection from these scores equals the reference's up to ties.
    const got = await topK(scores, 256);
    const ref = reference.topK(want, 256);
    const gv = (await got.values.data()) as Float32Array;
    let far = 0;
    for (let i = 0; i < gv.length; i++) if (Math.abs(gv[i] - ref.values.data[i]) > 1.6e-2 * (1 + Math.abs(ref.values.data[i]))) far++;
    t.is(far, 0, 'top-256 values');
    for (const x of [qI, kI, w, scores, got.indices, got.values]) x.dispose();
  });

  // The radix select: one histogram pass, refinement of the threshold bucket only, the sorted
  // gather; the fallback for a threshold key tied more than 4,096 times. Indices must equal the
  // reference exactly (the tie rule is exact), values bit for bit.
  test('topK cuda: radix select = reference on adversarial and long rows (ties, relu zeros, NaN / -Infinity, k > row, empty rows)', async (t) => {
    const rng = new Rng(4096);
    const kinds: Array<[string, (n: number) => Float32Array]> = [
      ['uniform', (n) => rng.floats(n)],
      ['narrow: one exponent, low mantissa bits', (n) => Float32Array.from({ length: n }, () => 1 + Math.floor(rng.next() * 5000) * 2 ** -23)],
      ['relu zeros (70 %)', (n) => Float32Array.from({ length: n }, () => (rng.bool(0.7) ? 0 : rng.next() * 3))],
      ['all equal (threshold tied past the gather)', (n) => new Float32Array(n).fill(0.25)],
      ['ties on a coarse grid', (n) => Float32Array.from({ length: n }, () => Math.round(rng.next() * 40) / 8 - 2)],
      ['NaN / -Infinity / +Infinity / -0', (n) => Float32Array.from({ length: n }, () => rng.pick([Number.NaN, -Infinity, Infinity, -0, 0, rng.next() - 0.5]))],
      ['no candidate (NaN and -Infinity only)', (n) => Float32Array.from({ length: n }, () => (rng.bool() ? Number.NaN : -Infinity))],
    ];
    for (const [kind, [name, make]] of kinds.entries()) {
      // rows of 128k keys (one block per row) for the value distributions; the emulator is slow
      const shapes = kind < 3 ? [[2, 131072, 2048], [4, 9000, 256], [5, 300, 2048]] : [[4, 9000, 256], [5, 300, 2048], [2, 5000, 1]];
      for (const [rows, cols, k] of shapes) {
        const data = new Float32Array(rows * cols);
        for (let r = 0; r < rows; r++) data.set(make(cols), r * cols);
        const lengths = Int32Array.from({ length: rows }, (_, r) => (r === 0 ? cols : r === 1 ? 0 : rng.int(1, cols)));
        const scores = tensor(data, [rows, cols], { device: 'cuda' });
        for (const opts of [{}, { lengths }]) {
          const got = await topK(scores, k, opts);
          const want = reference.topK({ data, shape: [rows, cols] }, k, opts);
          const what = `${name}: ${rows} x ${cols}, k ${k}${'lengths' in opts ? ', lengths' : ''}`;
          t.deepEqual(Array.from((await got.indices.data()) as Int32Array), Array.from(want.indices.data), what);
          t.deepEqual(Array.from((await got.values.data()) as Float32Array), Array.from(want.values.data, (x) => Math.fround(x)), what);
          got.indices.dispose(); got.values.dispose();
        }
        scores.dispose();
      }
    }
  });

  // Rows past 131,072 keys go in slices of 65,536 across blocks (each slice's top k, positions
  // ascending), then one merge block per row: two launches, against one for shorter rows. Winners
  // spread over every slice, ties across slice borders, a tied threshold past the radix gather in
  // both steps (the multi-pass fallback), NaN / -Infinity only, lengths ending inside a slice.
  test.serial('topK cuda: rows beyond 131,072 keys split across blocks = reference (ties across slices, NaN / -Infinity, lengths)', async (t) => {
    const rng = new Rng(140000);
    const cols = 140000;  // three slices, the last one short
    const kinds: Array<[string, number, (n: number) => Float32Array]> = [
      ['uniform', 2048, (n) => rng.floats(n)],
      ['ties on a coarse grid', 700, (n) => Float32Array.from({ length: n }, () => Math.round(rng.next() * 40) / 8 - 2)],
      ['all equal', 2048, (n) => new Float32Array(n).fill(0.25)],
      ['NaN / -Infinity / +Infinity / -0', 1000, (n) => Float32Array.from({ length: n }, () => rng.pick([Number.NaN, -Infinity, Infinity, -0, 0, rng.next() - 0.5]))],
      ['no candidate (NaN and -Infinity only)', 5, (n) => Float32Array.from({ length: n }, () => (rng.bool() ? Number.NaN : -Infinity))],
    ];
    for (const [name, k, make] of kinds) {
      const rows = 2;
      const data = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) data.set(make(cols), r * cols);
      // the winners of the uniform rows sit in the last slice too
      if (name === 'uniform') for (let j = 0; j < 50; j++) data[cols - 1 - 37 * j] = 2 + j;
      const scores = tensor(data, [rows, cols], { device: 'cuda' });
      const optionSets: Array<{ lengths?: Int32Array }> = [{}, { lengths: Int32Array.of(rng.int(65537, 131071), cols) }, { lengths: Int32Array.of(0, 70000) }];
      for (const opts of optionSets) {
        const before = backends().cuda.emulator?.launches;
        const got = await topK(scores, k, opts);
        const after = backends().cuda.emulator?.launches;
        const want = reference.topK({ data, shape: [rows, cols] }, k, opts);
        const what = `${name}: ${rows} x ${cols}, k ${k}${opts.lengths ? `, lengths ${Array.from(opts.lengths)}` : ''}`;
        t.deepEqual(Array.from((await got.indices.data()) as Int32Array), Array.from(want.indices.data), what);
        t.deepEqual(Array.from((await got.values.data()) as Float32Array), Array.from(want.values.data, (x) => Math.fround(x)), what);
        if (before !== undefined && after !== undefined) t.is(after - before, 2, 'slice and merge launches');
        got.indices.dispose(); got.values.dispose();
      }
      scores.dispose();
    }
    if (emulated) {
      // a row of 131,072 keys stays one block
      const scores = tensor(rng.floats(131072), [1, 131072], { device: 'cuda' });
      const before = backends().cuda.emulator!.launches;
      const got = await topK(scores, 16);
      t.is(backends().cuda.emulator!.launches - before, 1, 'one launch up to 131,072 keys');
      for (const x of [scores, got.indices, got.values]) x.dispose();
    }
  });

  for (const dtype of ['float16', 'bfloat16', 'float32'] as DType[]) {
    test.serial(`sparseAttention cuda ${dtype}: head-batched gathers (GQA groups up to 16) = reference`, async (t) => {
      const rng = new Rng(dtype.length * 31 + 5);
      let tensorCoreCalls = 0;
      // every group size meets every slot count: several slot tiles per warp (online rescaling) and
      // the second 8 rows of the m16 tile (groups of 16) both happen
      for (let round = 0; round < 16; round++) {
        const B = rng.int(1, 4);
        const keyLens = Array.from({ length: B }, () => rng.pick([1, 7, 40, rng.int(1, 300)]));
        if (round % 5 === 4) keyLens[0] = 0;
        const qLens = Array.from({ length: B }, () => rng.int(1, 5));
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        const kvHeads = rng.pick([1, 2, 3]), group = [1, 3, 8, 16][round % 4], H = kvHeads * group;
        const D = rng.pick([8, 16, 64, 128]), Dv = rng.pick([8, 16, 32, 128]);
        const K = [1, 17, 100, 200][(round >> 2) % 4];
        // indices: random keys of the query's own sequence, duplicates, -1; some rows all -1
        const indices = new Int32Array(Nq * K);
        for (let b = 0; b < B; b++)
          for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++) {
            const none = keyLens[b] === 0 || rng.bool(0.15);
            for (let j = 0; j < K; j++) indices[i * K + j] = none || rng.bool(0.2) ? -1 : rng.int(0, keyLens[b] - 1);
          }
        const kData = rng.floats(Tk * kvHeads * D), vData = rng.floats(Tk * kvHeads * Dv);
        // Non-finite rows in some rounds: a -inf score weighs 0, +inf or NaN makes the row NaN.
        if (round % 4 === 3 && Tk > 2) { kData.fill(-Infinity, 0, D); vData[Dv * kvHeads + 1] = Number.NaN; kData[2 * kvHeads * D] = Infinity; }
        const q = tensor(rng.floats(Nq * H * D), [Nq, H, D], { dtype, device: 'cuda' });
        const k = tensor(kData, [Tk, kvHeads, D], { dtype, device: 'cuda' });
        const v = tensor(vData, [Tk, kvHeads, Dv], { dtype, device: 'cuda' });
        const idx = tensor(indices, [Nq, K], { dtype: 'int32', device: 'cuda' });
        const before = counters();
        const got = await sparseAttention(q, k, v, idx, { qOffsets, kOffsets, returnLse: true });
        const after = counters();
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        const want = reference.sparseAttention(await exact(q, [Nq, H, D]), await exact(k, [Tk, kvHeads, D]), await exact(v, [Tk, kvHeads, Dv]),
          { data: indices, shape: [Nq, K] }, { qOffsets, kOffsets, returnLse: true });
        const what = `B=${B} Nq=${Nq} Tk=${Tk} H=${H} Hkv=${kvHeads} D=${D} Dv=${Dv} K=${K}`;
        t.is(compareScores(await got.output.float32(), want.output.data, dtype, 'output'), '', what);
        t.is(compareScores(await got.lse!.float32(), want.lse!.data, dtype, 'lse'), '', what);
        if (before && after && Nq > 0) {
          if (dtype === 'float32') t.is(after.mma, before.mma, 'float32 keeps the exact kernel');
          else { t.true(after.mma > before.mma && after.ldmatrix > before.ldmatrix, `tensor-core sparse attention ran (${what})`); tensorCoreCalls++; }
          if (dtype !== 'float32' && indices.some((x) => x >= 0)) t.true(after.cpAsync > before.cpAsync, 'K / V rows gathered by cp.async');
        }
        for (const x of [q, k, v, idx, got.output, got.lse!]) x.dispose();
      }
      if (emulated && dtype !== 'float32') t.true(tensorCoreCalls > 0, 'some round had queries');
    });
  }

  // The fused path: one launch per call (the score row never leaves shared memory); float16 /
  // bfloat16 score the keys and attend over the chosen ones on tensor cores (mma, ldmatrix and
  // cp.async move), float32 keeps the exact FP32 fused kernel. Selection equal to the reference's
  // up to near ties (the scores are rounded differently), the output equal to the reference's
  // attention over the chosen keys.
  for (const dtype of ['float16', 'bfloat16', 'float32'] as DType[]) {
    test.serial(`indexedCrossAttention cuda ${dtype}: the fused kernel (tensor cores for 16-bit) = reference`, async (t) => {
      const rng = new Rng(dtype.length * 977 + 3);
      let tensorCoreCalls = 0;
      for (let round = 0; round < 8; round++) {
        const B = rng.int(1, 3);
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 17, 33, 300, rng.int(1, 1500)]));
        const qLens = Array.from({ length: B }, () => rng.int(0, 3));
        if (!qLens.some((x) => x > 0)) qLens[0] = 1;
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        // indexer heads up to 64 (the m16 tiles of one query), widths 8 .. 128; GQA groups, Dv != D
        const Hi = [1, 2, 8, 64][round % 4], Di = rng.pick([8, 16, 24, 64, 128].filter((d) => Hi * d <= 1024));
        const kvHeads = rng.pick([1, 2]), H = kvHeads * rng.pick([1, 3, 8]);
        const D = rng.pick([16, 64, 128]), Dv = rng.pick([8, 32, 64, 128]);
        const k = rng.pick([1, 16, 100, 512]);
        const make = (shape: number[], amp = 1) => tensor(rng.floats(shape.reduce((a, b) => a * b, 1), amp), shape, { dtype, device: 'cuda' });
        const qI = make([Nq, Hi, Di]), kI = make([Tk, Di]), w = make([Nq, Hi]);
        const q = make([Nq, H, D]), kk = make([Tk, kvHeads, D]), v = make([Tk, kvHeads, Dv]);
        const before = counters(), launches0 = backends().cuda.emulator?.launches;
        const got = await indexedCrossAttention(q, kk, v, { indexer: { q: qI, k: kI, w }, topK: k, qOffsets, kOffsets });
        const after = counters(), launches1 = backends().cuda.emulator?.launches;
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        const rq = await exact(q, [Nq, H, D]), rk = await exact(kk, [Tk, kvHeads, D]), rv = await exact(v, [Tk, kvHeads, Dv]);
        const refScores = reference.indexerScores(await exact(qI, [Nq, Hi, Di]), await exact(kI, [Tk, Di]), await exact(w, [Nq, Hi]), { qOffsets, kOffsets });
        const want = reference.topK(refScores, k);
        const gi = (await got.indices.data()) as Int32Array, gv = (await got.values.data()) as Float32Array;
        const what = `B=${B} Nq=${Nq} Tk=${Tk} Hi=${Hi} Di=${Di} H=${H} Hkv=${kvHeads} D=${D} Dv=${Dv} k=${k}`;
        const tol = dtype === 'float32' ? 1e-5 : 2e-3;  // float32 scores of 16-bit inputs: only the summation order differs
        let far = 0;
        for (let n = 0; n < gi.length; n++) {
          const wv = want.values.data[n];
          if (gi[n] !== want.indices.data[n] && !(Number.isFinite(wv) && Math.abs(gv[n] - wv) <= tol * (1 + Math.abs(wv)))) far++;
          if ((gi[n] < 0) !== (want.indices.data[n] < 0)) far++;
          const row = Math.floor(n / k), own = gi[n] >= 0 ? refScores.data[row * refScores.shape[1] + gi[n]] : -Infinity;
          if (gi[n] >= 0 ? !(Math.abs(gv[n] - own) <= tol * (1 + Math.abs(own))) : gv[n] !== -Infinity) far++;
        }
        t.is(far, 0, `selection (${what})`);
        const wantOut = reference.sparseAttention(rq, rk, rv, { data: gi, shape: [Nq, k] }, { qOffsets, kOffsets });
        t.is(compareScores(await got.output.float32(), wantOut.output.data, dtype, 'output'), '', what);
        if (before && after && launches0 !== undefined && launches1 !== undefined) {
          t.is(launches1 - launches0, 1, `one fused launch (${what})`);
          if (dtype === 'float32') t.is(after.mma, before.mma, 'float32 keeps the exact fused kernel');
          else if (qLens.some((n, b) => n > 0 && keyLens[b] > 0)) {
            t.true(after.mma > before.mma && after.ldmatrix > before.ldmatrix && after.cpAsync > before.cpAsync, `tensor-core fused kernel ran (${what})`);
            tensorCoreCalls++;
          }
        }
        for (const x of [qI, kI, w, q, kk, v, got.output, got.indices, got.values]) x.dispose();
      }
      if (emulated && dtype !== 'float32') t.true(tensorCoreCalls > 0, 'some round had keys');
    });
  }

  // Query tiles of the fused kernel: the queries of one user share a block (64 / Hi of them, at most
  // 16, fewer when their score rows would not fit shared memory), so each key tile is copied once for
  // all of them. Jagged layouts with users without queries or keys, 1-query users and users with more
  // queries than a tile; non-finite indexer keys (NaN / ±Infinity scores); in coarse-grid rounds every
  // input is a multiple of 1/4, every score exact in float32, so the indices must equal the
  // reference's exactly (SPEC §5 tie rule: larger first, then lower index).
  for (const dtype of ['float16', 'bfloat16'] as DType[]) {
    test.serial(`indexedCrossAttention cuda ${dtype}: fused query tiles (users with 0, 1 and more queries than a tile) = reference`, async (t) => {
      const rng = new Rng(dtype.length * 4243 + 11);
      for (let round = 0; round < 10; round++) {
        const coarse = round % 2 === 1;
        const B = rng.int(2, 4);
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 40, 65, rng.int(1, 700)]));
        const qLens = Array.from({ length: B }, () => rng.pick([0, 1, 4, rng.int(5, 20)]));
        if (!qLens.some((x) => x > 0)) qLens[0] = 17;
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        const Hi = [1, 4, 8, 16, 64][round % 5], Di = rng.pick([8, 16, 32, 64].filter((d) => Hi * d <= 1024));
        const kvHeads = rng.pick([1, 2]), H = kvHeads * rng.pick([1, 4]);
        const D = rng.pick([16, 64]), Dv = rng.pick([8, 32, 64]);
        const k = rng.pick([1, 7, 64, 300]);
        const values = (n: number) => (coarse ? Float32Array.from({ length: n }, () => rng.int(-8, 8) / 4) : rng.floats(n));
        const kIData = values(Tk * Di);
        if (round % 3 === 2 && Tk > 3) { kIData[0] = Infinity; kIData[Di + 1] = -Infinity; kIData[2 * Di] = Number.NaN; }
        const make = (data: Float32Array, shape: number[]) => tensor(data, shape, { dtype, device: 'cuda' });
        const qI = make(values(Nq * Hi * Di), [Nq, Hi, Di]), kI = make(kIData, [Tk, Di]), w = make(values(Nq * Hi), [Nq, Hi]);
        const q = make(rng.floats(Nq * H * D), [Nq, H, D]), kk = make(rng.floats(Tk * kvHeads * D), [Tk, kvHeads, D]);
        const v = make(rng.floats(Tk * kvHeads * Dv), [Tk, kvHeads, Dv]);
        const launches0 = backends().cuda.emulator?.launches;
        const got = await indexedCrossAttention(q, kk, v, { indexer: { q: qI, k: kI, w }, topK: k, qOffsets, kOffsets });
        const launches1 = backends().cuda.emulator?.launches;
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        const want = (await referenceSelection(qI, kI, w, k, { qOffsets, kOffsets })).top;
        const gi = (await got.indices.data()) as Int32Array, gv = (await got.values.data()) as Float32Array;
        const what = `${coarse ? 'coarse ' : ''}qLens=${qLens} keyLens=${keyLens} Hi=${Hi} Di=${Di} H=${H} Hkv=${kvHeads} D=${D} Dv=${Dv} k=${k}`;
        if (coarse) {
          t.deepEqual(Array.from(gi), Array.from(want.indices.data), `indices (${what})`);
          t.deepEqual(Array.from(gv), Array.from(want.values.data, (x) => Math.fround(x)), `values (${what})`);
        } else {
          let far = 0;
          for (let n = 0; n < gi.length; n++) {
            const wv = want.values.data[n];
            if (gi[n] !== want.indices.data[n] && !(Number.isFinite(wv) && Math.abs(gv[n] - wv) <= 2e-3 * (1 + Math.abs(wv)))) far++;
            if ((gi[n] < 0) !== (want.indices.data[n] < 0)) far++;
          }
          t.is(far, 0, `selection (${what})`);
        }
        const wantOut = reference.sparseAttention(await exact(q, [Nq, H, D]), await exact(kk, [Tk, kvHeads, D]), await exact(v, [Tk, kvHeads, Dv]),
          { data: gi, shape: [Nq, k] }, { qOffsets, kOffsets, returnLse: false });
        t.is(compareScores(await got.output.float32(), wantOut.output.data, dtype, 'output'), '', what);
        if (launches0 !== undefined && launches1 !== undefined) t.is(launches1 - launches0, 1, `one fused launch (${what})`);
        for (const x of [qI, kI, w, q, kk, v, got.output, got.indices, got.values]) x.dispose();
      }
    });
  }

  // The point of the tiles, counted: 8 queries of one user with 8 indexer heads are one 64-row tile,
  // so the 2,000 keys' rows (8 chunks of 16 bytes at Di = 64) are copied once (16,000 cp.async) plus
  // the queries' rows and the few gathered K / V rows; a block per query would copy them 8 times. Rows
  // of 15,000 keys (60 KB of scores each) fit only 3 to a block: more tiles, the same result.
  (emulated ? test.serial : test.skip)(`indexedCrossAttention cuda bfloat16: a query tile copies each key tile once for all its queries${emulated ? '' : ' (skipped: the cp.async count needs the emulator)'}`, async (t) => {
    const rng = new Rng(8008);
    for (const [len, maxCopies] of [[2000, 2 * 2000 * 8], [15000, 4 * 15000 * 8]] as Array<[number, number]>) {
      const Nq = 8, Hi = 8, Di = 64, H = 1, D = 16, k = 2;
      const qOffsets = offsetsOf([0, Nq]), kOffsets = offsetsOf([0, len]);
      const make = (shape: number[]) => tensor(rng.floats(shape.reduce((a, b) => a * b, 1)), shape, { dtype: 'bfloat16', device: 'cuda' });
      const qI = make([Nq, Hi, Di]), kI = make([len, Di]), w = make([Nq, Hi]);
      const q = make([Nq, H, D]), kk = make([len, 1, D]), v = make([len, 1, D]);
      const before = counters()!;
      const got = await indexedCrossAttention(q, kk, v, { indexer: { q: qI, k: kI, w }, topK: k, qOffsets, kOffsets });
      const copies = counters()!.cpAsync - before.cpAsync;
      t.true(copies >= len * 8 && copies <= maxCopies, `${len} keys: ${copies} cp.async (keys once: ${len * 8}; once per query: ${Nq * len * 8})`);
      const gv = (await got.values.data()) as Float32Array, want = (await referenceSelection(qI, kI, w, k, { qOffsets, kOffsets })).top;
      t.true(gv.every((x, n) => Math.abs(x - want.values.data[n]) <= 2e-3 * (1 + Math.abs(want.values.data[n]))), `top-${k} values (${len} keys)`);
      for (const x of [qI, kI, w, q, kk, v, got.output, got.indices, got.values]) x.dispose();
    }
  });

  // Shared gathers in the fused kernel: 16 / G queries of a tile are the rows of one m16 attention
  // tile over the union of their selections, each row masked to its own query's keys. The overlap
  // of the tile's selections is steered through the indexer: 'identical' (every query of a user has
  // the same indexer row: one selection), 'partial' (a shared part plus a per-query part),
  // 'disjoint' (query ql scores only keys j = ql mod 8, one-hot on a grid: exact scores, so the
  // indices must equal the reference's). G = 1, 2, 8, 16 through H / Hkv; Dv != D; k past some rows;
  // users without queries or keys, of 1 query and of more queries than a tile; non-finite K / V rows
  // and a user whose every key scores -Infinity (NaN output, as the reference).
  type Overlap = 'identical' | 'partial' | 'disjoint';
  /** Indexer inputs whose selections overlap as `overlap` says, for Hi = 1 and Di = 8. */
  function steeredIndexer(rng: Rng, overlap: Overlap, qLens: number[], keyLens: number[]) {
    const Di = 8, Nq = qLens.reduce((a, b) => a + b, 0), Tk = keyLens.reduce((a, b) => a + b, 0);
    const qI = new Float32Array(Nq * Di), kI = new Float32Array(Tk * Di), w = new Float32Array(Nq).fill(1);
    let row = 0, key = 0;
    for (let b = 0; b < qLens.length; b++) {
      const shared = Float32Array.from({ length: Di }, () => rng.int(-4, 4) / 4);
      for (let ql = 0; ql < qLens[b]; ql++, row++)
        for (let d = 0; d < Di; d++) {
          qI[row * Di + d] = overlap === 'identical' ? shared[d]
            : overlap === 'partial' ? (d < 6 ? shared[d] : rng.int(-4, 4) / 4)
            : d === ql % Di ? 1 : 0;
        }
      for (let j = 0; j < keyLens[b]; j++, key++)
        for (let d = 0; d < Di; d++) kI[key * Di + d] = overlap === 'disjoint' ? (d === j % Di ? 1 + (j % 5) / 4 : 0) : rng.int(-4, 4) / 4;
    }
    return { qI, kI, w, Di };
  }

  for (const dtype of ['float16', 'bfloat16'] as DType[]) {
    test.serial(`indexedCrossAttention cuda ${dtype}: queries of a tile share K / V gathers (identical, partial, disjoint selections; G 1 / 2 / 8 / 16) = reference`, async (t) => {
      const rng = new Rng(dtype.length * 7919 + 13);
      const overlaps: Overlap[] = ['identical', 'partial', 'disjoint'];
      for (let round = 0; round < 12; round++) {
        const overlap = overlaps[round % 3];
        const B = rng.int(2, 4);
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 9, 40, 65, rng.int(1, 400)]));
        const qLens = Array.from({ length: B }, () => rng.pick([0, 1, 3, 8, rng.int(9, 20)]));
        if (!qLens.some((x) => x > 0)) qLens[0] = 16;
        keyLens[qLens.findIndex((x) => x > 0)] = rng.int(20, 300);  // one user with queries and keys at least
        const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
        const Nq = qOffsets[B], Tk = kOffsets[B];
        const G = [1, 2, 8, 16][round % 4], kvHeads = rng.pick([1, 2]), H = G * kvHeads;
        const D = rng.pick([16, 64]), Dv = rng.pick([8, 32, 128].filter((x) => x !== D));
        const k = rng.pick([1, 5, 32, 100]);
        const ind = steeredIndexer(rng, overlap, qLens, keyLens);
        const kData = rng.floats(Tk * kvHeads * D), vData = rng.floats(Tk * kvHeads * Dv);
        if (round % 4 === 3) {
          // a key row of -Infinity, a NaN value, and a 1-key user whose only key scores -Infinity
          if (Tk > 2) { kData.fill(-Infinity, 0, D); vData[Dv * kvHeads + 1] = Number.NaN; }
          const one = keyLens.findIndex((l, b) => l === 1 && qLens[b] > 0);
          if (one >= 0) kData.fill(-Infinity, kOffsets[one] * kvHeads * D, (kOffsets[one] + 1) * kvHeads * D);
        }
        const make = (data: Float32Array, shape: number[]) => tensor(data, shape, { dtype, device: 'cuda' });
        const qI = make(ind.qI, [Nq, 1, ind.Di]), kI = make(ind.kI, [Tk, ind.Di]), w = make(ind.w, [Nq, 1]);
        // positive queries keep -Infinity keys' scores -Infinity (not NaN)
        const q = make(rng.floats(Nq * H * D).map((x) => Math.abs(x) + 0.01), [Nq, H, D]);
        const kk = make(kData, [Tk, kvHeads, D]), v = make(vData, [Tk, kvHeads, Dv]);
        const { got, launches, want, gi } = await indexedWithReference(q, kk, v, { q: qI, k: kI, w }, k, { qOffsets, kOffsets });
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        const what = `${overlap} qLens=${qLens} keyLens=${keyLens} H=${H} Hkv=${kvHeads} D=${D} Dv=${Dv} k=${k}`;
        // every indexer input is on a grid of 1/4: the scores are exact, the indices the reference's
        t.deepEqual(Array.from(gi), Array.from(want.indices.data), `indices (${what})`);
        const wantOut = reference.sparseAttention(await exact(q, [Nq, H, D]), await exact(kk, [Tk, kvHeads, D]), await exact(v, [Tk, kvHeads, Dv]),
          { data: gi, shape: [Nq, k] }, { qOffsets, kOffsets, returnLse: false });
        const out = await got.output.float32();
        t.is(compareScores(out, wantOut.output.data, dtype, 'output'), '', what);
        if (round % 4 === 3 && keyLens.some((l, b) => l === 1 && qLens[b] > 0)) t.true(out.some((x) => Number.isNaN(x)), `a row over -Infinity scores only is NaN (${what})`);
        if (launches !== undefined) t.is(launches, 1, `one fused launch (${what})`);
        for (const x of [qI, kI, w, q, kk, v, got.output, got.indices, got.values]) x.dispose();
      }
    });
  }

  // The sharing, counted: one user of 8 queries (Hi = 8: one tile), the same indexer inputs attended
  // twice, with D = Dv = 128 and with D = Dv = 16. The indexer's copies are equal in both calls, so
  // the difference of their cp.async counts is the attention's alone: per kv group, the Q rows (16 or
  // 2 chunks each) and every key of each query group's union once (K and V rows, 32 or 4 chunks) —
  // exactly, from the returned indices. Identical selections with G = 1 gather 1/8 of a gather per
  // query; a bound that a kernel gathering per query fails.
  (emulated ? test.serial : test.skip)(`indexedCrossAttention cuda bfloat16: a tile's queries gather each chosen K / V row once${emulated ? '' : ' (skipped: the cp.async count needs the emulator)'}`, async (t) => {
    const rng = new Rng(1608);
    for (const [overlap, G, kvHeads] of [['identical', 1, 1], ['identical', 2, 2], ['partial', 1, 1], ['partial', 8, 1], ['disjoint', 1, 2], ['identical', 16, 1]] as Array<[Overlap, number, number]>) {
      const Nq = 8, len = 600, k = 64, H = G * kvHeads, Hi = 8;
      const qOffsets = offsetsOf([0, Nq]), kOffsets = offsetsOf([0, len]);
      const ind = steeredIndexer(rng, overlap, [0, Nq], [0, len]);
      // Hi = 8 copies of the steered head: 64 / Hi = 8 queries per tile, the same selection as one head
      const qIData = new Float32Array(Nq * Hi * ind.Di);
      for (let n = 0; n < Nq; n++) for (let h = 0; h < Hi; h++) qIData.set(ind.qI.subarray(n * ind.Di, (n + 1) * ind.Di), (n * Hi + h) * ind.Di);
      const make = (data: Float32Array, shape: number[]) => tensor(data, shape, { dtype: 'bfloat16', device: 'cuda' });
      const qI = make(qIData, [Nq, Hi, ind.Di]), kI = make(ind.kI, [len, ind.Di]), w = make(new Float32Array(Nq * Hi).fill(1), [Nq, Hi]);
      const copies: number[] = [];
      let indices: Int32Array<ArrayBufferLike> = new Int32Array(0);
      for (const D of [128, 16]) {
        const q = make(rng.floats(Nq * H * D), [Nq, H, D]), kk = make(rng.floats(len * kvHeads * D), [len, kvHeads, D]);
        const v = make(rng.floats(len * kvHeads * D), [len, kvHeads, D]);
        const before = counters()!.cpAsync;
        const got = await indexedCrossAttention(q, kk, v, { indexer: { q: qI, k: kI, w }, topK: k, qOffsets, kOffsets });
        copies.push(counters()!.cpAsync - before);
        indices = (await got.indices.data()) as Int32Array;
        const wantOut = reference.sparseAttention({ data: await q.float32(), shape: [Nq, H, D] }, { data: await kk.float32(), shape: [len, kvHeads, D] },
          { data: await v.float32(), shape: [len, kvHeads, D] }, { data: indices, shape: [Nq, k] }, { qOffsets, kOffsets, returnLse: false });
        t.is(compareScores(await got.output.float32(), wantOut.output.data, 'bfloat16', 'output'), '', `${overlap} G=${G} D=${D}`);
        for (const x of [q, kk, v, got.output, got.indices, got.values]) x.dispose();
      }
      // the query groups of the m16 tile and their unions
      const perTile = G <= 8 ? 16 / G : 1;
      let unionRows = 0, ownRows = 0;
      for (let first = 0; first < Nq; first += perTile) {
        const keys = new Set<number>();
        for (let n = first; n < Math.min(Nq, first + perTile); n++)
          for (let i = 0; i < k; i++) if (indices[n * k + i] >= 0) { keys.add(indices[n * k + i]); ownRows++; }
        unionRows += keys.size;
      }
      const chunks = (D: number) => kvHeads * (unionRows * 2 * (D / 8) + Nq * G * (D / 8));
      const what = `${overlap}, G = ${G}, Hkv = ${kvHeads}: ${unionRows} union rows of ${ownRows} selected`;
      t.is(copies[0] - copies[1], chunks(128) - chunks(16), `attention cp.async = Q rows + union K / V rows once (${what})`);
      if (overlap === 'identical' && G === 1) t.true(unionRows * 8 === ownRows && unionRows > 0, `8 identical queries: each row gathered once (${what})`);
      if (overlap === 'disjoint') t.is(unionRows, ownRows, `disjoint selections: nothing to share (${what})`);
      if (overlap === 'partial') t.true(unionRows < ownRows, `partially overlapping selections share some rows (${what})`);
      for (const x of [qI, kI, w]) x.dispose();
    }
  });

  // The unfused path past 131,072 keys: rows longer than the fused kernels' 16,384 go indexer ->
  // top-k (split into 65,536-key slices and a merge: one launch more than a one-block row) -> sparse
  // attention. Inputs on a grid of 1/4 keep every score exact, so the indices equal the reference's
  // exactly: relu zeros tie by the hundred thousand, +Infinity / NaN keys and a negative head weight
  // give +Infinity, -Infinity and NaN scores (never selected but +Infinity); an empty user and one of
  // 20,000 keys beside the long one.
  for (const dtype of ['float32', 'bfloat16'] as DType[]) {
    test.serial(`indexedCrossAttention cuda ${dtype}: unfused path over 140,000 keys (split top-k) = reference`, async (t) => {
      const rng = new Rng(140001 + dtype.length);
      const keyLens = [140000, 0, 20000], qLens = [2, 1, 1];
      const qOffsets = offsetsOf(qLens), kOffsets = offsetsOf(keyLens);
      const Nq = qOffsets[3], Tk = kOffsets[3], Hi = 1, Di = 8, H = 2, D = 8;
      const grid = (n: number) => Float32Array.from({ length: n }, () => rng.int(-4, 4) / 4);
      const kIData = grid(Tk * Di);
      for (const j of [5, 70000, 139999]) kIData[j * Di] = Infinity;
      for (const j of [6, 131073]) kIData[j * Di + 2] = Number.NaN;
      const qIData = grid(Nq * Hi * Di).map((x, i) => (i % Di === 0 ? 1 : x));  // +Infinity keys score ±Infinity
      const wData = Float32Array.of(0.5, -0.25, 1, 0.75);  // query 1 turns +Infinity into -Infinity
      const make = (data: Float32Array, shape: number[]) => tensor(data, shape, { dtype, device: 'cuda' });
      const qI = make(qIData, [Nq, Hi, Di]), kI = make(kIData, [Tk, Di]), w = make(wData, [Nq, Hi]);
      const q = make(rng.floats(Nq * H * D), [Nq, H, D]), kk = make(rng.floats(Tk * D), [Tk, 1, D]), v = make(rng.floats(Tk * D), [Tk, 1, D]);
      for (const k of [300, 2048]) {
        const { got, launches, want, gi } = await indexedWithReference(q, kk, v, { q: qI, k: kI, w }, k, { qOffsets, kOffsets });
        const exact = async (x: Tensor, shape: number[]) => ({ data: await x.float32(), shape });
        t.deepEqual(Array.from(gi), Array.from(want.indices.data), `indices, k ${k}`);
        t.deepEqual(Array.from((await got.values.data()) as Float32Array), Array.from(want.values.data, (x) => Math.fround(x)), `values, k ${k}`);
        const wantOut = reference.sparseAttention(await exact(q, [Nq, H, D]), await exact(kk, [Tk, 1, D]), await exact(v, [Tk, 1, D]),
          { data: gi, shape: [Nq, k] }, { qOffsets, kOffsets, returnLse: false });
        t.is(compareScores(await got.output.float32(), wantOut.output.data, dtype, 'output'), '', `output, k ${k}`);
        // indexer, top-k slices, top-k merge, sparse attention
        if (launches !== undefined) t.is(launches, 4, `split top-k launches, k ${k}`);
        for (const x of [got.output, got.indices, got.values]) x.dispose();
      }
      for (const x of [qI, kI, w, q, kk, v]) x.dispose();
    });
  }

  // Past grid.y: with 64 indexer heads a query tile is one query, so 70,000 queries are 70,000 tiles
  // (the host launches them in slices of 65,535). About a minute of CPU on the plain emulator; the
  // race-detecting (LK_EMU_SEED) and AddressSanitizer runs, many times slower, leave it to that run:
  // the grid slicing is host logic, the same under every build.
  const slow = /libasan/.test(process.env.LD_PRELOAD ?? '') || process.env.LK_EMU_SEED !== undefined;
  (slow ? test.skip : test.serial)(`indexerScores cuda bfloat16 on tensor cores: 70,000 queries (70,000 query tiles) = cpu${slow ? ' (skipped under ASan / the race detector: the plain emulated run and a GPU run it)' : ''}`, async (t) => {
    const rng = new Rng(70001);
    const NQ = 70000, Hi = 64, Di = 8;
    const qOffsets = offsetsOf([30000, 0, 40000]), kOffsets = offsetsOf([5, 3, 9]), Tk = kOffsets[3];
    const qI = rng.floats(NQ * Hi * Di), kI = rng.floats(Tk * Di), w = rng.floats(NQ * Hi);
    const run = async (device: 'cpu' | 'cuda') => {
      const s = await indexerScores(tensor(qI, [NQ, Hi, Di], { dtype: 'bfloat16', device }), tensor(kI, [Tk, Di], { dtype: 'bfloat16', device }),
        tensor(w, [NQ, Hi], { dtype: 'bfloat16', device }), { qOffsets, kOffsets });
      t.deepEqual(s.shape, [NQ, 9]);
      const out = await s.float32();
      s.dispose();
      return out;
    };
    const cpu = await run('cpu');
    const before = counters();
    const cuda = await run('cuda');
    const after = counters();
    if (before && after) t.true(after.mma - before.mma >= NQ, 'at least one mma per query tile');
    t.is(compareScores(cuda, cpu, 'bfloat16'), '');
    t.true(Number.isFinite(cuda[65535 * 9]) && Number.isFinite(cuda[(NQ - 1) * 9]), 'rows past 65,535 scored');
  });
}
