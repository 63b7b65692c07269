// multiStreamAttention (SPEC §12) against its reference on every backend, and the reference against
// the composition of the single-stream reference ops: randomized jagged batches with empty users,
// single queries, absent streams, per-stream queries, GQA and Dv != D, in every dtype.
import test from 'ava';
import { multiStreamAttention, reference, tensor, DType, Device, Tensor } from '../lib/index';
import type { MultiStreams } from '../lib/index';
import { compare, parityDevices, Rng } from './helpers';

type Name = 'recent' | 'midTerm' | 'lifecycle';
const NAMES: Name[] = ['recent', 'midTerm', 'lifecycle'];

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

/** Multiples of 1/4 in [-1, 1]: exact in every dtype, so indexer scores (and thus the top-k) are exact everywhere. */
function quarters(rng: Rng, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => rng.int(-4, 4) / 4);
}

interface Arr { data: Float32Array; shape: number[] }
interface CaseStream { q?: Arr; k: Arr; v: Arr; kvLengths: number[]; indexer?: { q: Arr; k: Arr; w: Arr }; topK?: number }
interface Case { q: Arr; qLengths: number[]; streams: Partial<Record<Name, CaseStream>>; Dv: number }

/** A random batch: users with 0 ... 12 candidates, each stream present or not, per-stream kv heads and head sizes. */
function randomCase(rng: Rng, device: Device): Case {
  const B = rng.int(1, 5);
  const qLengths = Array.from({ length: B }, () => rng.pick([0, 1, 1, rng.int(2, 12)]));
  const Nq = qLengths.reduce((a, b) => a + b, 0);
  const H = rng.pick([1, 2, 4, 8]);
  const sizes = device === 'cuda' ? [8, 16, 32] : [8, 12, 16, 32];
  const D = rng.pick(sizes), Dv = rng.pick(sizes);
  const arr = (shape: number[], amp = 1): Arr => ({ data: rng.floats(shape.reduce((a, b) => a * b, 1), amp), shape });
  let present = NAMES.filter(() => rng.bool(0.7));
  if (present.length === 0) present = [rng.pick(NAMES)];
  const streams: Case['streams'] = {};
  for (const name of present) {
    const maxKeys = name === 'recent' ? 80 : name === 'midTerm' ? 400 : 8;
    const kvLengths = qLengths.map(() => rng.pick([0, 1, rng.int(2, maxKeys), rng.int(1, maxKeys)]));
    const Tk = kvLengths.reduce((a, b) => a + b, 0);
    const ownQ = rng.bool(0.5);
    const sD = ownQ ? rng.pick(sizes) : D;
    const kvHeads = rng.pick([1, 2, 4, 8].filter((g) => H % g === 0));
    const s: CaseStream = { k: arr([Tk, kvHeads, sD]), v: arr([Tk, kvHeads, Dv]), kvLengths };
    if (ownQ) s.q = arr([Nq, H, sD]);
    if (name === 'midTerm') {
      const Hi = rng.pick([1, 2]), Di = rng.pick([4, 8, 16]);
      s.indexer = { q: { data: quarters(rng, Nq * Hi * Di), shape: [Nq, Hi, Di] }, k: { data: quarters(rng, Tk * Di), shape: [Tk, Di] },
        w: { data: quarters(rng, Nq * Hi), shape: [Nq, Hi] } };
      s.topK = rng.pick([1, 3, 16, 64]);
    }
    streams[name] = s;
  }
  return { q: arr([Nq, H, D]), qLengths, streams, Dv };
}

/** The case's values as stored in `dtype` (what both the op and the reference then see). */
async function materialize(c: Case, dtype: DType, device: Device) {
  const made: Tensor[] = [];
  const put = async (a: Arr) => {
    const t = tensor(a.data, a.shape, { dtype, device });
    made.push(t);
    return { t, ref: { data: await t.float32(), shape: a.shape } };
  };
  const q = await put(c.q);
  const streams: MultiStreams = {};
  const refStreams: reference.RefMultiStreams = {};
  for (const name of NAMES) {
    const s = c.streams[name];
    if (!s) continue;
    const kv = { offsets: offsetsOf(s.kvLengths) };
    const k = await put(s.k), v = await put(s.v), sq = s.q ? await put(s.q) : undefined;
    if (name === 'midTerm') {
      const iq = await put(s.indexer!.q), ik = await put(s.indexer!.k), iw = await put(s.indexer!.w);
      streams.midTerm = { q: sq?.t, k: k.t, v: v.t, kv, indexer: { q: iq.t, k: ik.t, w: iw.t }, topK: s.topK! };
      refStreams.midTerm = { q: sq?.ref, k: k.ref, v: v.ref, kv, indexer: { q: iq.ref, k: ik.ref, w: iw.ref }, topK: s.topK! };
    } else {
      streams[name] = { q: sq?.t, k: k.t, v: v.t, kv };
      refStreams[name] = { q: sq?.ref, k: k.ref, v: v.ref, kv };
    }
  }
  return { q, streams, refStreams, layout: { offsets: offsetsOf(c.qLengths) }, dispose: () => { for (const t of made) t.dispose(); } };
}

const dtypesOf = (device: Device): DType[] => (device === 'cuda' ? ['float32', 'float16', 'bfloat16'] : ['float32', 'float16', 'bfloat16']);

for (const device of parityDevices()) {
  for (const dtype of dtypesOf(device)) {
    for (const fusion of ['sum', 'union'] as const) {
      test(`multiStreamAttention ${device} ${dtype} fusion '${fusion}' = reference on random jagged batches`, async (t) => {
        const rng = new Rng(7919 * (dtype.length + 1) + (fusion === 'sum' ? 1 : 2) + (device === 'cuda' ? 100 : 0));
        for (let round = 0; round < 6; round++) {
          const c = randomCase(rng, device);
          const m = await materialize(c, dtype, device);
          const scale = round === 5 ? 0.3 : undefined;
          const got = await multiStreamAttention(m.q.t, m.streams, { q: m.layout, fusion, scale });
          const want = reference.multiStreamAttention(m.q.ref, m.refStreams, { q: m.layout, fusion, scale });
          const what = `round ${round}: streams ${Object.keys(c.streams).join('+')}, users ${c.qLengths.join('/')}, q [${c.q.shape}]`;
          t.deepEqual(got.output.shape, want.output.shape, what);
          t.is(compare(await got.output.float32(), want.output.data, dtype, 'output'), '', what);
          if (fusion === 'union') {
            t.truthy(got.lse, 'union returns lse');
            t.is(compare(await got.lse!.float32(), want.lse!.data, dtype, 'lse'), '', what);
          } else {
            t.is(got.lse, undefined, 'sum returns no lse');
          }
          got.output.dispose();
          got.lse?.dispose();
          m.dispose();
        }
      });
    }
  }
}

/** The single-stream reference ops, composed: each stream alone, then summed or merged by LSE. */
function composed(c: Case, fusion: 'sum' | 'union', scale?: number) {
  const qOffsets = offsetsOf(c.qLengths);
  const parts: { out: Float64Array; lse: Float64Array }[] = [];
  for (const name of NAMES) {
    const s = c.streams[name];
    if (!s) continue;
    const q = s.q ?? c.q, kOffsets = offsetsOf(s.kvLengths);
    if (name === 'midTerm') {
      const ix = s.indexer!;
      const scores = reference.indexerScores(ix.q, ix.k, ix.w, { qOffsets, kOffsets });
      const chosen = reference.topK(scores, s.topK!);
      const r = reference.sparseAttention(q, s.k, s.v, chosen.indices, { qOffsets, kOffsets, scale, returnLse: true });
      parts.push({ out: r.output.data, lse: r.lse!.data });
    } else {
      const r = reference.maskedAttention(q, s.k, s.v, { q: { offsets: qOffsets }, kv: { offsets: kOffsets }, rule: 'full', scale, returnLse: true });
      parts.push({ out: r.output.data, lse: r.lse!.data });
    }
  }
  const rows = c.q.shape[0] * c.q.shape[1], Dv = c.Dv;
  const out = new Float64Array(rows * Dv), lse = new Float64Array(rows).fill(-Infinity);
  for (let r = 0; r < rows; r++) {
    let weights = parts.map(() => 1);
    if (fusion === 'union') {
      const m = Math.max(...parts.map((p) => p.lse[r]));
      if (m === -Infinity) weights = parts.map(() => 0);
      else {
        const e = parts.map((p) => Math.exp(p.lse[r] - m)), total = e.reduce((a, b) => a + b, 0);
        weights = e.map((x) => x / total);
        lse[r] = m + Math.log(total);
      }
    }
    for (let c2 = 0; c2 < Dv; c2++) out[r * Dv + c2] = parts.reduce((acc, p, i) => acc + weights[i] * p.out[r * Dv + c2], 0);
  }
  return { out, lse };
}

test('reference multiStreamAttention = the composition of the single-stream reference ops', (t) => {
  const rng = new Rng(4242);
  for (let round = 0; round < 40; round++) {
    const c = randomCase(rng, 'cpu');
    for (const fusion of ['sum', 'union'] as const) {
      const scale = rng.bool(0.3) ? 0.5 : undefined;
      const refStreams: reference.RefMultiStreams = {};
      for (const name of NAMES) {
        const s = c.streams[name];
        if (!s) continue;
        const kv = { offsets: offsetsOf(s.kvLengths) };
        if (name === 'midTerm') refStreams.midTerm = { q: s.q, k: s.k, v: s.v, kv, indexer: s.indexer!, topK: s.topK! };
        else refStreams[name] = { q: s.q, k: s.k, v: s.v, kv };
      }
      const got = reference.multiStreamAttention(c.q, refStreams, { q: { offsets: offsetsOf(c.qLengths) }, fusion, scale });
      const want = composed(c, fusion, scale);
      const what = `round ${round} ${fusion}: streams ${Object.keys(c.streams).join('+')}`;
      t.is(compare(got.output.data, want.out, 'float32', 'output'), '', what);
      if (fusion === 'union') t.is(compare(got.lse!.data, want.lse, 'float32', 'lse'), '', what);
    }
  }
});

test('multiStreamAttention: a user with no keys in a stream gets 0 from it (sum) and nothing from it (union)', async (t) => {
  // One user, two candidates; recent holds 3 keys, lifecycle none.
  const q = tensor(Float32Array.from({ length: 2 * 8 }, (_, i) => (i % 5) / 5), [2, 1, 8]);
  const k = tensor(Float32Array.from({ length: 3 * 8 }, (_, i) => (i % 3) / 3), [3, 1, 8]);
  const v = tensor(Float32Array.from({ length: 3 * 8 }, (_, i) => i / 24), [3, 1, 8]);
  const emptyK = tensor(new Float32Array(0), [0, 1, 8]), emptyV = tensor(new Float32Array(0), [0, 1, 8]);
  const layout = { offsets: Int32Array.of(0, 2) };
  const recent = { k, v, kv: { offsets: Int32Array.of(0, 3) } };
  const alone = await multiStreamAttention(q, { recent }, { q: layout });
  const lifecycle = { k: emptyK, v: emptyV, kv: { offsets: Int32Array.of(0, 0) } };
  for (const fusion of ['sum', 'union'] as const) {
    const both = await multiStreamAttention(q, { recent, lifecycle }, { q: layout, fusion });
    t.deepEqual(Array.from(await both.output.float32()), Array.from(await alone.output.float32()), fusion);
  }
  const none = await multiStreamAttention(q, { lifecycle }, { q: layout, fusion: 'union' });
  t.deepEqual(Array.from(await none.output.float32()), new Array(16).fill(0));
  t.deepEqual(Array.from(await none.lse!.float32()), [-Infinity, -Infinity]);
});

test('multiStreamAttention: bad arguments reject with TypeError / RangeError naming the argument', async (t) => {
  const q = tensor(new Float32Array(2 * 2 * 8), [2, 2, 8]);
  const k = tensor(new Float32Array(3 * 1 * 8), [3, 1, 8]);
  const v = tensor(new Float32Array(3 * 1 * 16), [3, 1, 16]);
  const v8 = tensor(new Float32Array(3 * 1 * 8), [3, 1, 8]);
  const k16 = tensor(new Float32Array(3 * 8), [3, 1, 8], { dtype: 'float16' });
  const layout = { q: { offsets: Int32Array.of(0, 1, 2) } };
  const kv = { offsets: Int32Array.of(0, 1, 3) };
  const ix = { q: tensor(new Float32Array(2 * 4), [2, 1, 4]), k: tensor(new Float32Array(3 * 4), [3, 4]), w: tensor(new Float32Array(2), [2, 1]) };
  const cases: [string, () => Promise<unknown>, typeof TypeError | typeof RangeError, RegExp][] = [
    ['no stream', () => multiStreamAttention(q, {}, layout), RangeError, /streams: expected at least one/],
    ['unknown stream', () => multiStreamAttention(q, { recnet: { k, v, kv } } as unknown as MultiStreams, layout), RangeError, /streams: unknown stream 'recnet'/],
    ['inherited name', () => multiStreamAttention(q, Object.create({ recent: { k, v, kv } }), layout), RangeError, /at least one/],
    ['streams not an object', () => multiStreamAttention(q, null as unknown as MultiStreams, layout), TypeError, /streams:/],
    ['k missing', () => multiStreamAttention(q, { recent: { v, kv } as never }, layout), TypeError, /streams\.recent\.k: expected a Tensor/],
    ['k dtype', () => multiStreamAttention(q, { recent: { k: k16, v, kv } }, layout), TypeError, /streams\.recent\.k: dtype float16/],
    ['kv batch', () => multiStreamAttention(q, { recent: { k, v, kv: { offsets: Int32Array.of(0, 3) } } }, layout), RangeError, /streams\.recent\.kv: batch 1/],
    ['kv offsets', () => multiStreamAttention(q, { lifecycle: { k, v, kv: { offsets: Int32Array.of(0, 1, 4) } } }, layout), RangeError, /streams\.lifecycle\.kv\.offsets/],
    ['Dv differs', () => multiStreamAttention(q, { recent: { k, v, kv }, lifecycle: { k, v: v8, kv } }, layout), RangeError, /streams\.lifecycle\.v: value size 8/],
    ['fusion', () => multiStreamAttention(q, { recent: { k, v, kv } }, { ...layout, fusion: 'toString' as never }), RangeError, /options\.fusion/],
    ['scale', () => multiStreamAttention(q, { recent: { k, v, kv } }, { ...layout, scale: Number.NaN }), TypeError, /options\.scale/],
    ['own q rows', () => multiStreamAttention(q, { recent: { q: tensor(new Float32Array(16), [1, 2, 8]), k, v, kv } }, layout), RangeError, /streams\.recent\.q: expected 2 queries/],
    ['topK', () => multiStreamAttention(q, { midTerm: { k, v, kv, indexer: ix, topK: 0 } }, layout), RangeError, /streams\.midTerm\.topK/],
    ['indexer missing', () => multiStreamAttention(q, { midTerm: { k, v, kv, topK: 2 } as never }, layout), TypeError, /streams\.midTerm\.indexer/],
    ['indexer rows', () => multiStreamAttention(q, { midTerm: { k, v, kv, topK: 2, indexer: { ...ix, k: tensor(new Float32Array(8), [2, 4]) } } }, layout), RangeError, /streams\.midTerm\.indexer\.k: 2 rows for 3 keys/],
  ];
  for (const [what, call, type, message] of cases) {
    const p = call();
    t.true(p instanceof Promise, `${what}: returns a promise`);
    const err = await t.throwsAsync(p as Promise<unknown>, { instanceOf: type }, what);
    t.regex(err?.message ?? '', message, what);
  }
});
