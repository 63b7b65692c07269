// Layout builders, role names and codes from the addon, gatherRows / globalRows, and the sparse ops'
// `{ q, kv }` layouts (SPEC §5's layout sentence).
import test from 'ava';
import {
  encodeRule, gatherRows, globalRows, indexedCrossAttention, indexerScores, layoutFromLengths, limits, maskedAttention, MemoryBank,
  persrecLayout, presets, rec2pmReferenceLayout, rec2pmUpdateLayout, reference, ROLE, ROLE_NAMES, sparseAttention, tensor, topK,
} from '../lib/index';
import { native } from '../lib/native';
import { compare, parityDevices, Rng } from './helpers';

test('role names and codes: the addon\'s codes, numbered as SPEC §2 (and the reference) number them', (t) => {
  t.deepEqual([...ROLE_NAMES], ['item', 'memory', 'target']);
  t.deepEqual({ ...ROLE }, { ...native().codes().role });
  t.deepEqual({ ...ROLE }, { ...reference.roleCodes });
  t.true(Object.isFrozen(ROLE));
  const c = native().codes();
  t.deepEqual(Object.keys(c.segRelation), [...reference.segRelations]);
  t.deepEqual(c.dtypeBytes, { float32: 4, float16: 2, bfloat16: 2, int32: 4 });
  t.deepEqual(limits(), native().limits());
});

test('encodeRule writes each entry where the addon\'s role and relation codes say', (t) => {
  const c = native().codes(), n = c.roleCount;
  const code = encodeRule(presets.persrec);
  t.is(code.length, 2 * n * n);
  for (const rq of ROLE_NAMES)
    for (const rk of ROLE_NAMES) {
      const entry = reference.referencePresets.persrec[rq]?.[rk];
      t.is(code[c.role[rq] * n + c.role[rk]], c.segRelation[entry?.seg ?? 'none'], `${rq} → ${rk}`);
      t.is(code[n * n + c.role[rq] * n + c.role[rk]], entry?.causal ? 1 : 0);
    }
});

// The tokens a builder should produce, written out token by token (independently of the builders).
type Token = [segment: number, role: number];
function expectLayout(t: import('ava').ExecutionContext, got: { offsets: Int32Array; segments: Int32Array; roles: Uint8Array }, users: Token[][]) {
  t.deepEqual(Array.from(got.offsets), users.reduce((o, u) => [...o, o[o.length - 1] + u.length], [0]));
  t.deepEqual(Array.from(got.segments), users.flat().map(([s]) => s));
  t.deepEqual(Array.from(got.roles), users.flat().map(([, r]) => r));
}
const repeat = (n: number, token: Token): Token[] => Array.from({ length: n }, () => token);

test('layoutFromLengths / persrecLayout / rec2pmReferenceLayout / rec2pmUpdateLayout on random users', (t) => {
  const rng = new Rng(4);
  const I = 0, M = 1, G = 2;
  for (let trial = 0; trial < 30; trial++) {
    const B = rng.int(0, 5);
    const lengths = Array.from({ length: B }, () => rng.int(0, 9));
    t.deepEqual(Array.from(layoutFromLengths(lengths).offsets), lengths.reduce((o, n) => [...o, o[o.length - 1] + n], [0]));
    const pers = Array.from({ length: B }, () => ({ items: Array.from({ length: rng.int(1, 4) }, () => rng.int(0, 5)), memory: rng.int(0, 3), memoryAfterLast: rng.bool(), targets: rng.int(0, 2) }));
    expectLayout(t, persrecLayout(pers), pers.map((u) => [
      ...u.items.flatMap((n, j) => [...repeat(n, [j, I]), ...(j < u.items.length - 1 || u.memoryAfterLast ? repeat(u.memory, [j, M]) : [])]),
      ...repeat(u.targets, [u.items.length - 1, G]),
    ]));
    const ref = Array.from({ length: B }, () => ({ items: Array.from({ length: rng.int(0, 4) }, () => rng.int(0, 5)), queries: rng.int(1, 4) }));
    expectLayout(t, rec2pmReferenceLayout(ref), ref.map((u) => u.items.flatMap((n, j) => [...repeat(n, [j, I]), ...repeat(u.queries, [j, M])])));
    const upd = Array.from({ length: B }, () => ({ memory: rng.int(0, 4), items: rng.int(0, 6), queries: rng.int(1, 4), targets: rng.int(0, 2) }));
    expectLayout(t, rec2pmUpdateLayout(upd), upd.map((u) => [...repeat(u.memory, [0, M]), ...repeat(u.items, [0, I]), ...repeat(u.queries, [0, M]), ...repeat(u.targets, [0, G])]));
  }
  t.throws(() => layoutFromLengths([1, -1]), { instanceOf: RangeError, message: /^lengths\[1\]: expected an integer >= 0/ });
  t.throws(() => layoutFromLengths([1.5]), { instanceOf: TypeError, message: /^lengths\[0\]:/ });
  t.throws(() => persrecLayout([{ items: [], memory: 1 }]), { instanceOf: RangeError, message: /^sequences\[0\]\.items: expected at least one segment/ });
  t.throws(() => rec2pmUpdateLayout([{ memory: 1, items: 2, queries: -1 }]), { instanceOf: RangeError, message: /^sequences\[0\]\.queries:/ });
  t.throws(() => rec2pmReferenceLayout('x' as never), { instanceOf: TypeError, message: /^sequences: expected an array/ });
});

test('rec2pmUpdateLayout is the layout MemoryBank.assemble builds', async (t) => {
  const rng = new Rng(8);
  const C = 3, width = 8, users = 4;
  const bank = new MemoryBank({ users, slots: C, width, mode: 'overwrite' });
  const ids = new Int32Array([0, 1, 2, 3]);
  await bank.update(new Int32Array([1, 3]), tensor(rng.floats(2 * C * width), [2 * C, width]), new Int32Array([C, C]));
  const items = [2, 0, 5, 1];
  const itemOffsets = layoutFromLengths(items).offsets;
  const { hidden, layout } = await bank.assemble(ids, tensor(rng.floats(8 * width), [8, width]), itemOffsets, tensor(rng.floats(C * width), [C, width]));
  const built = rec2pmUpdateLayout(Array.from(ids, (u, i) => ({ memory: bank.lengths(ids)[i], items: items[i], queries: C })));
  t.deepEqual(built, layout);
  t.is(hidden.shape[0], built.offsets[users]);
});

test('a persrecLayout batch runs through maskedAttention(rule persrec) as the reference says', async (t) => {
  const rng = new Rng(12);
  const layout = persrecLayout([{ items: [5, 7, 3], memory: 2, targets: 1 }, { items: [0], memory: 4 }, { items: [9, 1], memory: 1, memoryAfterLast: true }]);
  const T = layout.offsets[layout.offsets.length - 1], H = 2, D = 8;
  const [q, k, v] = [0, 1, 2].map(() => rng.floats(T * H * D));
  const { output } = await maskedAttention(tensor(q, [T, H, D]), tensor(k, [T, H, D]), tensor(v, [T, H, D]), { q: layout, rule: 'persrec' });
  const ref = reference.maskedAttention({ data: q, shape: [T, H, D] }, { data: k, shape: [T, H, D] }, { data: v, shape: [T, H, D] }, { q: layout, rule: 'persrec' });
  t.is(compare(await output.data(), ref.output.data, 'float32', 'output'), '');
});

for (const device of parityDevices()) {
  test(`gatherRows picks rows of dimension 0, -1 gives zeros, any dtype, on ${device}`, async (t) => {
    const rng = new Rng(31);
    for (const dtype of ['float32', 'float16', 'bfloat16', 'int32'] as const) {
      const n = rng.int(1, 12), a = rng.int(1, 3), b = rng.int(1, 5), width = a * b;
      const values = Int32Array.from({ length: n * width }, () => rng.int(-256, 256));  // exact in every dtype
      const source = tensor(values, [n, a, b], { dtype, device });
      const picks = Int32Array.from({ length: rng.int(0, 20) }, () => rng.int(-1, n - 1));
      const rowsArg = rng.bool() ? picks : tensor(picks, [picks.length], { device });
      const out = await gatherRows(source, rowsArg);
      t.deepEqual(out.shape, [picks.length, a, b]);
      t.is(out.dtype, dtype);
      const got = dtype === 'int32' ? Array.from((await out.data()) as Int32Array) : Array.from(await out.float32());
      const want = Array.from(picks).flatMap((r) => (r < 0 ? new Array(width).fill(0) : Array.from(values.subarray(r * width, (r + 1) * width))));
      t.deepEqual(got, want, dtype);
    }
    const s = tensor(new Float32Array(6), [3, 2], { device });
    await t.throwsAsync(gatherRows(s, new Int32Array([0, 3])), { instanceOf: RangeError, message: /^rows: entry 1 = 3 is outside \[-1, 3\)/ });
    await t.throwsAsync(gatherRows(s, new Int32Array([-2])), { instanceOf: RangeError, message: /^rows: entry 0 = -2/ });
    await t.throwsAsync(gatherRows(s, [0] as never), { instanceOf: TypeError, message: /^rows: expected an Int32Array or an int32 Tensor/ });
    await t.throwsAsync(gatherRows(s, tensor([0], [1], { device })), { instanceOf: TypeError, message: /^rows: expected an int32 Tensor, got float32/ });
  });

  test(`globalRows turns per-user top-k positions into packed key rows (gather = the keys each query chose), on ${device}`, async (t) => {
    const rng = new Rng(41);
    const B = 4, Hi = 2, Di = 8, H = 2, D = 8, K = 5;
    const qLens = [2, 0, 3, 1], kLens = [7, 4, 0, 12];
    const qOffsets = layoutFromLengths(qLens).offsets, kOffsets = layoutFromLengths(kLens).offsets;
    const Nq = qOffsets[B], Tk = kOffsets[B];
    const mk = (shape: number[]) => tensor(rng.floats(shape.reduce((a, b) => a * b, 1)), shape, { device });
    const q = mk([Nq, H, D]), k = mk([Tk, H, D]), v = mk([Tk, H, D]);
    const indexer = { q: mk([Nq, Hi, Di]), k: mk([Tk, Di]), w: mk([Nq, Hi]) };
    const { indices } = await indexedCrossAttention(q, k, v, { indexer, topK: K, q: { offsets: qOffsets }, kv: { offsets: kOffsets } });
    const local = (await indices.data()) as Int32Array;
    const rows = await globalRows(indices, { q: { offsets: qOffsets }, kv: { offsets: kOffsets } });
    t.deepEqual(rows, await globalRows(local, { qOffsets, kOffsets }), 'array and tensor, long and short layouts agree');
    const picked = (await (await gatherRows(k, rows)).data()) as Float32Array;
    const kAll = (await k.data()) as Float32Array;
    const row = H * D;
    for (let b = 0; b < B; b++)
      for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++)
        for (let j = 0; j < K; j++) {
          const x = local[i * K + j];
          const want = x < 0 ? new Array(row).fill(0) : Array.from(kAll.subarray((kOffsets[b] + x) * row, (kOffsets[b] + x + 1) * row));
          t.deepEqual(Array.from(picked.subarray((i * K + j) * row, (i * K + j + 1) * row)), want);
        }
    await t.throwsAsync(globalRows(new Int32Array([0, 7]), { qOffsets: new Int32Array([0, 1]), kOffsets: new Int32Array([0, 7]) }),
      { instanceOf: RangeError, message: /^indices: \[0\]\[1\] = 7 is outside \[-1, 7\)/ });
    await t.throwsAsync(globalRows(new Int32Array(3), { qOffsets: new Int32Array([0, 2]), kOffsets: new Int32Array([0, 7]) }),
      { instanceOf: RangeError, message: /^indices: 3 entries are not K per query for 2 queries/ });
  });

  test(`the sparse ops take { q: { offsets }, kv: { offsets } } as they take { qOffsets, kOffsets }, on ${device}`, async (t) => {
    const rng = new Rng(51);
    const qOffsets = new Int32Array([0, 3, 3, 5]), kOffsets = new Int32Array([0, 9, 11, 11]);
    const Nq = 5, Tk = 11, Hi = 2, Di = 8, H = 2, D = 16, K = 4;
    const mk = (shape: number[]) => tensor(rng.floats(shape.reduce((a, b) => a * b, 1)), shape, { device });
    const q = mk([Nq, H, D]), k = mk([Tk, H, D]), v = mk([Tk, H, D]);
    const qI = mk([Nq, Hi, Di]), kI = mk([Tk, Di]), w = mk([Nq, Hi]);
    const short = { qOffsets, kOffsets }, long = { q: { offsets: qOffsets }, kv: { offsets: kOffsets } };
    const s1 = await indexerScores(qI, kI, w, short), s2 = await indexerScores(qI, kI, w, long);
    t.deepEqual(Array.from(await s2.data()), Array.from(await s1.data()));
    const { indices } = await topK(s1, K);
    const a1 = await sparseAttention(q, k, v, indices, { ...short, returnLse: true });
    const a2 = await sparseAttention(q, k, v, indices, { ...long, returnLse: true });
    t.deepEqual(Array.from(await a2.output.data()), Array.from(await a1.output.data()));
    t.deepEqual(Array.from(await a2.lse.data()), Array.from(await a1.lse.data()));
    const f1 = await indexedCrossAttention(q, k, v, { indexer: { q: qI, k: kI, w }, topK: K, ...short });
    const f2 = await indexedCrossAttention(q, k, v, { indexer: { q: qI, k: kI, w }, topK: K, ...long });
    t.deepEqual(Array.from(await f2.output.data()), Array.from(await f1.output.data()));
    const ref = reference.indexedCrossAttention({ data: await q.float32(), shape: [Nq, H, D] }, { data: await k.float32(), shape: [Tk, H, D] },
      { data: await v.float32(), shape: [Tk, H, D] }, { indexer: { q: { data: await qI.float32(), shape: [Nq, Hi, Di] }, k: { data: await kI.float32(), shape: [Tk, Di] }, w: { data: await w.float32(), shape: [Nq, Hi] } }, topK: K, qOffsets, kOffsets });
    t.is(compare(await f2.output.data(), ref.output.data, 'float32', 'output'), '');
    await t.throwsAsync(indexerScores(qI, kI, w, { q: { offsets: qOffsets }, kv: { offsets: new Int32Array([0, 11]) } }),
      { instanceOf: RangeError, message: /^options\.kv\.offsets: batch 1 differs/ });
  });
}
