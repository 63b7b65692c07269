// Group 'sparse': indexerScores, topK, sparseAttention, indexedCrossAttention (SPEC §5).
import { indexedCrossAttention, indexerScores, reference, sparseAttention, Tensor, topK } from '../../lib/index';
import type { DType } from '../../lib/index';
import { compare, Rng } from '../helpers';
import { CaseSpec, describe, DISPOSED, Mut, OK, R, Scope, T } from './harness';
import { batchMismatch, collectArrays, FLOAT_DTYPES, mutateInteger, mutateOffsets, mutateScale, mutateTensor } from './common';
import { notAnObject, notATensor, notInt32Array, randLayout } from './values';

function divisors(n: number): number[] { return Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0); }

interface Setup {
  dtype: DType; B: number; qOff: Int32Array; kOff: Int32Array; Nq: number; Tk: number; kLen: number[]; entry: number[];
  H: number; Hkv: number; D: number; Dv: number; Hi: number; Di: number;
}

function setup(rng: Rng): Setup {
  const B = rng.int(1, 3);
  const ql = randLayout(rng, B, 3), kl = randLayout(rng, B, 8);
  const entry: number[] = [];
  for (let b = 0; b < B; b++) for (let i = ql.offsets[b]; i < ql.offsets[b + 1]; i++) entry.push(b);
  const H = rng.pick([1, 2, 4]);
  return {
    dtype: rng.pick<DType>(['float32', 'float32', 'float32', 'float16', 'bfloat16']), B, qOff: ql.offsets, kOff: kl.offsets, Nq: ql.T, Tk: kl.T,
    kLen: kl.lengths, entry, H, Hkv: rng.pick(divisors(H)), D: rng.pick([8, 16]), Dv: rng.pick([8, 16]), Hi: rng.int(1, 2), Di: rng.pick([4, 8]),
  };
}

function layouts(rng: Rng, u: Setup, allowLong: boolean): Record<string, unknown> {
  if (allowLong && rng.bool(0.15)) return { q: { offsets: u.qOff.slice() }, kv: { offsets: u.kOff.slice() } };
  return { qOffsets: u.qOff.slice(), kOffsets: u.kOff.slice() };
}
const isLong = (o: Record<string, unknown>) => 'q' in o;
const longNote = (o: Record<string, unknown>) => (isLong(o) ? ' ({ q: { offsets }, kv: { offsets } } layouts)' : '');

function offsetsMutation(rng: Rng, u: Setup, options: Record<string, unknown>): Mut {
  const r = rng.next();
  if (r < 0.45) return mutateOffsets(rng, 'options.qOffsets', u.qOff, u.Nq, (x) => { options.qOffsets = x; });
  if (r < 0.9) return mutateOffsets(rng, 'options.kOffsets', u.kOff, u.Tk, (x) => { options.kOffsets = x; });
  return batchMismatch(rng, 'options.kOffsets', u.kOff, u.Tk, (x) => { options.kOffsets = x; }, ['options.kOffsets', 'options.qOffsets']);
}

function randomScores(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.bool(0.25) ? rng.pick([NaN, Infinity, -Infinity, 1, 0.5, 2]) : Math.round((rng.next() * 2 - 1) * 8) / 4;
  return a;
}

function sameIndexResult(got: { indices: Int32Array; values: Float32Array }, want: { indices: ArrayLike<number>; values: ArrayLike<number> }): string | undefined {
  for (let i = 0; i < want.indices.length; i++) {
    if (got.indices[i] !== want.indices[i]) return `indices[${i}] = ${got.indices[i]}, reference ${want.indices[i]}`;
    if (!Object.is(got.values[i], want.values[i]) && got.values[i] !== want.values[i]) return `values[${i}] = ${got.values[i]}, reference ${want.values[i]}`;
  }
  return undefined;
}

// ------------------------------------------------------------------------------------------------

async function genIndexer(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const u = setup(rng);
  const { dtype } = u;
  const qI = s.rand([u.Nq, u.Hi, u.Di], { dtype }), kI = s.rand([u.Tk, u.Di], { dtype }), w = s.rand([u.Nq, u.Hi], { dtype });
  const options = layouts(rng, u, valid);
  const args: Record<string, unknown> = { qI, kI, w, options };
  const call = () => indexerScores(args.qI as never, args.kI as never, args.w as never, args.options as never);
  if (valid) {
    const ex = { qI: await qI.float32(), kI: await kI.float32(), w: await w.float32() };
    const Lmax = Math.max(0, ...u.kLen);
    for (const a of collectArrays(options)) s.arr(a);
    return {
      fn: 'indexerScores', family: `valid${longNote(options)}`, expect: OK, call,
      check: async (sc: Tensor) => {
        if (!(sc instanceof Tensor) || sc.dtype !== 'float32' || sc.shape.join() !== [u.Nq, Lmax].join()) return `got ${describe(sc)}, expected float32 [${u.Nq}, ${Lmax}]`;
        const ref = reference.indexerScores({ data: ex.qI, shape: qI.shape }, { data: ex.kI, shape: kI.shape }, { data: ex.w, shape: w.shape }, { qOffsets: u.qOff, kOffsets: u.kOff });
        return compare(await sc.float32(), ref.data, dtype, 'scores') || undefined;
      },
    };
  }
  let m: Mut;
  switch (rng.int(0, 5)) {
    case 0: case 1: {
      const slot = rng.pick(['qI', 'kI', 'w'] as const);
      const shape = slot === 'qI' ? [u.Nq, u.Hi, u.Di] : slot === 'kI' ? [u.Tk, u.Di] : [u.Nq, u.Hi];
      m = mutateTensor(rng, s, { name: slot, shape, dtype, allowed: FLOAT_DTYPES, peers: ['qI', 'kI', 'w'].filter((x) => x !== slot), matchDtype: slot !== 'qI' }, (x) => { args[slot] = x; });
      break;
    }
    case 2: {
      const kind = rng.int(0, 4);
      if (kind === 0) { args.kI = s.z([u.Tk, u.Di + 1], { dtype }); m = { family: 'kI: dim differs from qI', expect: R('kI', 'qI') }; }
      else if (kind === 1) { args.w = s.z(rng.bool() ? [u.Nq + 1, u.Hi] : [u.Nq, u.Hi + 1], { dtype }); m = { family: 'w: shape is not [Nq, Hi]', expect: R('w') }; }
      else if (kind === 2) { args.qI = s.z([u.Nq, 0, u.Di], { dtype }); args.w = s.z([u.Nq, 0], { dtype }); m = { family: 'qI: zero heads', expect: R('qI') }; }
      else if (kind === 3) { args.qI = s.z([u.Nq, u.Hi, 0], { dtype }); args.kI = s.z([u.Tk, 0], { dtype }); m = { family: 'qI: zero dim', expect: R('qI', 'kI') }; }
      else if (s.device === 'cuda') { args.qI = s.z([u.Nq, 2, 4097], { dtype }); args.kI = s.z([u.Tk, 4097], { dtype }); args.w = s.z([u.Nq, 2], { dtype }); m = { family: 'CUDA: indexer heads x dim > 8192', expect: R('qI') }; }
      else { args.kI = s.z([u.Tk + 1, u.Di], { dtype }); m = { family: 'kI: rows != last kOffset', expect: R('options.kOffsets', 'kI') }; }
      break;
    }
    case 3: { const x = rng.bool(0.2) ? undefined : notAnObject(rng); args.options = x; m = { family: 'options: not an object', detail: describe(x), expect: T('options') }; break; }
    default: m = offsetsMutation(rng, u, options);
  }
  for (const a of collectArrays(args.options)) s.arr(a);
  return { fn: 'indexerScores', ...m, call };
}

async function genTopK(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const N = rng.int(0, 5), M = rng.int(0, 9);
  const data = randomScores(rng, N * M);
  const scores = s.t(data, [N, M]);
  let k: unknown = rng.int(1, M + 2);
  const lengths = rng.bool(0.4) ? Int32Array.from({ length: N }, () => rng.int(0, M)) : undefined;
  let options: unknown = lengths ? { lengths } : rng.bool(0.5) ? undefined : {};
  let sc: unknown = scores;
  const call = () => topK(sc as never, k as never, options as never);
  if (valid) {
    const want = reference.topK({ data, shape: [N, M] }, k as number, lengths ? { lengths: lengths.slice() } : {});
    const check = async (r: { indices: Tensor; values: Tensor }) => {
      if (!(r?.indices instanceof Tensor) || r.indices.dtype !== 'int32' || r.indices.shape.join() !== [N, k].join()) return `indices ${describe(r?.indices)}`;
      if (!(r.values instanceof Tensor) || r.values.dtype !== 'float32' || r.values.shape.join() !== [N, k].join()) return `values ${describe(r.values)}`;
      return sameIndexResult({ indices: (await r.indices.data()) as Int32Array, values: await r.values.float32() }, { indices: want.indices.data, values: want.values.data });
    };
    const p = rng.next();
    if (lengths && p < 0.25) {
      return { fn: 'topK', family: 'valid: options.lengths overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => lengths.fill(rng.pick([-5, 2 ** 31 - 1, M + 1])) };
    }
    if (p < 0.4) return { fn: 'topK', family: 'valid: scores disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => scores.dispose() };
    if (lengths) s.arr(lengths);
    return { fn: 'topK', family: 'valid', detail: `[${N}, ${M}] k=${k}${lengths ? ' lengths' : ''}`, expect: OK, call, check };
  }
  let m: Mut;
  let post: (() => void) | undefined;
  switch (rng.int(0, 6)) {
    case 0: m = mutateTensor(rng, s, { name: 'scores', shape: [N, M], dtype: 'float32', allowed: ['float32'] }, (x) => { sc = x; }); break;
    case 1: m = mutateInteger(rng, 'k', 1, (x) => { k = x; }); break;
    case 2: {
      // SPEC §6: sizes are checked before anything is allocated (issue #8: topK(zeros([64, 2]), 2**28)).
      const rows = rng.pick([64, 64, 1, 1000]);
      sc = s.z([rows, 2]);
      options = undefined;
      k = rows === 1 ? rng.pick([2 ** 40, 2 ** 53]) : rng.pick([2 ** 28, 2 ** 31, 2 ** 40]);
      m = { family: 'k: huge (output would not fit in memory)', detail: `zeros([${rows}, 2]), k = ${describe(k)}`, expect: R('k') };
      break;
    }
    case 3: {
      if (s.device === 'cuda') { k = rng.pick([2049, 4096, 65536]); m = { family: 'CUDA: k > 2048', detail: String(k), expect: R('k') }; break; }
      const x = notAnObject(rng); options = x; m = { family: 'options: not an object', detail: describe(x), expect: T('options') };
      break;
    }
    case 4: {
      const v = notInt32Array(rng, N, lengths);
      options = { lengths: v };
      m = { family: 'options.lengths: not an Int32Array', detail: describe(v), expect: T('options.lengths') };
      break;
    }
    case 5: {
      const l = Int32Array.from({ length: rng.bool(0.3) ? N + 1 : N }, () => rng.int(0, M));
      if (l.length === N) { if (N === 0) { options = { lengths: new Int32Array(2) }; m = { family: 'options.lengths: wrong length', detail: '2 for 0 rows', expect: R('options.lengths') }; break; } l[rng.int(0, N - 1)] = rng.pick([-1, M + 1, 2 ** 31 - 1, -(2 ** 31)]); }
      options = { lengths: l };
      m = { family: l.length === N ? 'options.lengths: entry outside [0, cols]' : 'options.lengths: wrong length', detail: describe(l), expect: R('options.lengths') };
      break;
    }
    default: {
      // The call is bad when made; fixing the array afterwards must not make it succeed.
      if (N === 0) { k = 0; m = { family: 'k: below the minimum', detail: '0', expect: R('k') }; break; }
      const l = Int32Array.from({ length: N }, () => rng.int(0, M));
      const at = rng.int(0, N - 1), good = l[at];
      l[at] = -1;
      options = { lengths: l };
      post = () => { l[at] = good; };
      m = { family: 'options.lengths: bad at the call, fixed right after', detail: describe(l), expect: R('options.lengths') };
    }
  }
  for (const a of collectArrays(options)) s.arr(a);
  return { fn: 'topK', ...m, call, post, noInputCheck: post !== undefined };
}

function validIndices(rng: Rng, u: Setup, K: number): Int32Array {
  const idx = new Int32Array(u.Nq * K);
  for (let i = 0; i < u.Nq; i++) {
    const L = u.kLen[u.entry[i]];
    for (let j = 0; j < K; j++) idx[i * K + j] = rng.bool(0.2) || L === 0 ? -1 : rng.int(0, L - 1);
  }
  return idx;
}

function qkvMutation(rng: Rng, s: Scope, u: Setup, args: Record<string, unknown>): Mut {
  if (rng.bool(0.6)) {
    const slot = rng.pick(['q', 'k', 'v'] as const);
    const shape = slot === 'q' ? [u.Nq, u.H, u.D] : slot === 'k' ? [u.Tk, u.Hkv, u.D] : [u.Tk, u.Hkv, u.Dv];
    return mutateTensor(rng, s, { name: slot, shape, dtype: u.dtype, allowed: FLOAT_DTYPES, peers: ['q', 'k', 'v'].filter((x) => x !== slot), matchDtype: slot !== 'q' }, (x) => { args[slot] = x; });
  }
  const dtype = u.dtype;
  const kind = rng.int(0, 5);
  if (kind === 0) { args.k = s.z([u.Tk, u.Hkv, u.D * 2], { dtype }); return { family: 'k: head size differs from q', expect: R('k', 'q') }; }
  if (kind === 1) { args.v = s.z([u.Tk + 1, u.Hkv, u.Dv], { dtype }); return { family: 'v: token count differs from k', expect: R('v', 'k') }; }
  if (kind === 2) { args.q = s.z([u.Nq, 3, u.D], { dtype }); args.k = s.z([u.Tk, 2, u.D], { dtype }); args.v = s.z([u.Tk, 2, u.Dv], { dtype }); return { family: 'kv heads do not divide q heads', expect: R('k', 'q') }; }
  if (kind === 3) { const big = rng.pick([257, 512]); args.q = s.z([u.Nq, u.H, big], { dtype }); args.k = s.z([u.Tk, u.Hkv, big], { dtype }); return { family: 'head size D > 256', detail: String(big), expect: R('q', 'q/v', 'D') }; }
  if (kind === 4 && s.device === 'cuda') { const d = rng.pick([24, 40]); args.q = s.z([u.Nq, u.H, d], { dtype }); args.k = s.z([u.Tk, u.Hkv, d], { dtype }); return { family: 'CUDA: unsupported head size', detail: String(d), expect: R('8, 16, 32, 64, 128, 256') }; }
  args.q = s.z([u.Nq, 0, u.D], { dtype }); args.k = s.z([u.Tk, 0, u.D], { dtype }); args.v = s.z([u.Tk, 0, u.Dv], { dtype });
  return { family: 'zero heads', expect: R('q', 'k', 'v', 'q/k/v') };
}

async function genSparse(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const u = setup(rng);
  const { dtype } = u;
  const q = s.rand([u.Nq, u.H, u.D], { dtype }), k = s.rand([u.Tk, u.Hkv, u.D], { dtype }), v = s.rand([u.Tk, u.Hkv, u.Dv], { dtype });
  const K = rng.int(1, 5);
  const idxData = validIndices(rng, u, K);
  const indices = s.t(idxData, [u.Nq, K], { dtype: 'int32' });
  const options = layouts(rng, u, valid);
  if (rng.bool(0.3)) options.scale = rng.pick([0.5, -1, 0]);
  if (rng.bool(0.3)) options.returnLse = true;
  const args: Record<string, unknown> = { q, k, v, indices, options };
  const call = () => sparseAttention(args.q as never, args.k as never, args.v as never, args.indices as never, args.options as never);
  if (valid) {
    const ex = { q: await q.float32(), k: await k.float32(), v: await v.float32() };
    const refOpts = { qOffsets: u.qOff, kOffsets: u.kOff, scale: options.scale as number | undefined, returnLse: !!options.returnLse };
    const check = async (r: { output: Tensor; lse?: Tensor }) => {
      if (!(r?.output instanceof Tensor) || r.output.dtype !== dtype || r.output.shape.join() !== [u.Nq, u.H, u.Dv].join()) return `output ${describe(r?.output)}`;
      const ref = reference.sparseAttention({ data: ex.q, shape: q.shape }, { data: ex.k, shape: k.shape }, { data: ex.v, shape: v.shape }, { data: idxData, shape: [u.Nq, K] }, refOpts);
      const msg = compare(await r.output.float32(), ref.output.data, dtype, 'output');
      if (msg || !options.returnLse) return msg || undefined;
      if (!(r.lse instanceof Tensor)) return 'lse missing';
      return compare(await r.lse.float32(), ref.lse!.data, dtype, 'lse') || undefined;
    };
    const p = rng.next();
    if (p < 0.15) return { fn: 'sparseAttention', family: 'valid: inputs disposed right after the call', expect: OK, noInputCheck: true, call, check, post: () => { q.dispose(); k.dispose(); v.dispose(); indices.dispose(); } };
    if (p < 0.3 && !isLong(options)) return { fn: 'sparseAttention', family: 'valid: offsets overwritten right after the call', expect: OK, noInputCheck: true, call, check, post: () => { (options.qOffsets as Int32Array).fill(2 ** 31 - 1); (options.kOffsets as Int32Array).fill(-7); } };
    for (const a of collectArrays(options)) s.arr(a);
    return { fn: 'sparseAttention', family: `valid${longNote(options)}`, detail: `${dtype} K=${K}`, expect: OK, call, check };
  }
  let m: Mut;
  switch (rng.int(0, 7)) {
    case 0: case 1: m = qkvMutation(rng, s, u, args); break;
    case 2: {
      const kind = rng.int(0, 6);
      if (kind === 0) { const x = rng.bool(0.5) ? idxData.slice() : notATensor(rng); args.indices = x; m = { family: 'indices: not a Tensor', detail: describe(x), expect: T('indices') }; }
      else if (kind === 1) { args.indices = s.disposed([u.Nq, K], { dtype: 'int32' }); m = { family: 'indices: disposed tensor', expect: DISPOSED }; }
      else if (kind === 2) { args.indices = s.z([u.Nq, K], { dtype: rng.pick(FLOAT_DTYPES) }); m = { family: 'indices: float dtype', expect: T('indices') }; }
      else if (kind === 3) { args.indices = s.t(new Int32Array(u.Nq * K), rng.bool() ? [u.Nq * K] : [u.Nq, K, 1], { dtype: 'int32' }); m = { family: 'indices: wrong rank', expect: R('indices') }; }
      else if (kind === 4) { args.indices = s.z([u.Nq + 1, K], { dtype: 'int32' }); m = { family: 'indices: rows != Nq', expect: R('indices') }; }
      else if (kind === 5) { args.indices = s.z([u.Nq, 0], { dtype: 'int32' }); m = { family: 'indices: zero columns', expect: R('indices') }; }
      else {
        if (u.Nq === 0) { args.indices = s.z([1, K], { dtype: 'int32' }); m = { family: 'indices: rows != Nq', expect: R('indices') }; break; }
        const bad = idxData.slice();
        const i = rng.int(0, u.Nq - 1), j = rng.int(0, K - 1), L = u.kLen[u.entry[i]];
        bad[i * K + j] = rng.pick([-2, -(2 ** 31), L, L + 1, 2 ** 31 - 1]);
        args.indices = s.t(bad, [u.Nq, K], { dtype: 'int32' });
        m = { family: 'indices: entry < -1 or >= the key count', detail: `[${i}, ${j}] = ${bad[i * K + j]} with L = ${L}`, expect: R('indices') };
      }
      break;
    }
    case 3: { const x = rng.bool(0.2) ? undefined : notAnObject(rng); args.options = x; m = { family: 'options: not an object', detail: describe(x), expect: T('options') }; break; }
    case 4: case 5: m = offsetsMutation(rng, u, options); break;
    default: m = mutateScale(rng, 'options.scale', (x) => { options.scale = x; });
  }
  for (const a of collectArrays(args.options)) s.arr(a);
  return { fn: 'sparseAttention', ...m, call };
}

async function genIndexed(rng: Rng, s: Scope, valid: boolean): Promise<CaseSpec> {
  const u = setup(rng);
  const { dtype } = u;
  const q = s.rand([u.Nq, u.H, u.D], { dtype }), k = s.rand([u.Tk, u.Hkv, u.D], { dtype }), v = s.rand([u.Tk, u.Hkv, u.Dv], { dtype });
  const qI = s.rand([u.Nq, u.Hi, u.Di], { dtype }), kI = s.rand([u.Tk, u.Di], { dtype }), w = s.rand([u.Nq, u.Hi], { dtype });
  const indexer: Record<string, unknown> = { q: qI, k: kI, w };
  const options: Record<string, unknown> = { ...layouts(rng, u, valid), indexer, topK: rng.int(1, Math.max(...u.kLen, 0) + 2) };
  if (rng.bool(0.3)) options.scale = rng.pick([0.5, -1]);
  const args: Record<string, unknown> = { q, k, v, options };
  const call = () => indexedCrossAttention(args.q as never, args.k as never, args.v as never, args.options as never);
  if (valid) {
    const ex = { q: await q.float32(), k: await k.float32(), v: await v.float32() };
    const K = options.topK as number;
    for (const a of collectArrays(options)) s.arr(a);
    return {
      fn: 'indexedCrossAttention', family: `valid${longNote(options)}`, detail: `${dtype} topK=${K}`, expect: OK, call,
      check: async (r: { output: Tensor; indices: Tensor }) => {
        if (!(r?.output instanceof Tensor) || r.output.dtype !== dtype || r.output.shape.join() !== [u.Nq, u.H, u.Dv].join()) return `output ${describe(r?.output)}`;
        if (!(r.indices instanceof Tensor) || r.indices.dtype !== 'int32' || r.indices.shape.join() !== [u.Nq, K].join()) return `indices ${describe(r.indices)}`;
        const idx = (await r.indices.data()) as Int32Array;
        for (let i = 0; i < u.Nq; i++) for (let j = 0; j < K; j++) {
          const x = idx[i * K + j], L = u.kLen[u.entry[i]];
          if (x < -1 || x >= L) return `indices[${i}, ${j}] = ${x} outside [-1, ${L})`;
        }
        // Self-consistency: the output is sparse attention over the indices it returned.
        const ref = reference.sparseAttention({ data: ex.q, shape: q.shape }, { data: ex.k, shape: k.shape }, { data: ex.v, shape: v.shape }, { data: idx, shape: [u.Nq, K] }, { qOffsets: u.qOff, kOffsets: u.kOff, scale: options.scale as number | undefined });
        return compare(await r.output.float32(), ref.output.data, dtype, 'output') || undefined;
      },
    };
  }
  let m: Mut;
  switch (rng.int(0, 8)) {
    case 0: m = qkvMutation(rng, s, u, args); break;
    case 1: {
      if (rng.bool(0.4)) { const x = rng.bool(0.2) ? undefined : notAnObject(rng); args.options = x; m = { family: 'options: not an object', detail: describe(x), expect: T('options', 'options.indexer') }; break; }
      const x = rng.bool(0.3) ? undefined : notAnObject(rng);
      options.indexer = x;
      m = { family: 'options.indexer: not an object', detail: describe(x), expect: T('options.indexer') };
      break;
    }
    case 2: case 3: {
      const slot = rng.pick(['q', 'k', 'w'] as const);
      const name = `options.indexer.${slot}`;
      const shape = slot === 'q' ? [u.Nq, u.Hi, u.Di] : slot === 'k' ? [u.Tk, u.Di] : [u.Nq, u.Hi];
      m = mutateTensor(rng, s, { name, shape, dtype, allowed: FLOAT_DTYPES, peers: ['q', 'options.indexer.q', 'options.indexer.k', 'options.indexer.w'].filter((x) => x !== name), matchDtype: true }, (x) => { indexer[slot] = x; });
      break;
    }
    case 4: {
      const kind = rng.int(0, 3);
      if (kind === 0) { indexer.q = s.z([u.Nq + 1, u.Hi, u.Di], { dtype }); indexer.w = s.z([u.Nq + 1, u.Hi], { dtype }); m = { family: 'options.indexer.q: rows != Nq', expect: R('options.indexer.q') }; }
      else if (kind === 1) { indexer.k = s.z([u.Tk + 1, u.Di], { dtype }); m = { family: 'options.indexer.k: rows != Tk', expect: R('options.indexer.k') }; }
      else if (kind === 2) { indexer.k = s.z([u.Tk, u.Di + 1], { dtype }); m = { family: 'options.indexer.k: dim differs from options.indexer.q', expect: R('options.indexer.k', 'options.indexer.q') }; }
      else { indexer.w = s.z([u.Nq, u.Hi + 1], { dtype }); m = { family: 'options.indexer.w: shape is not [Nq, Hi]', expect: R('options.indexer.w') }; }
      break;
    }
    case 5: m = mutateInteger(rng, 'options.topK', 1, (x) => { options.topK = x; }); m.expect.names = ['options.topK', 'topK']; break;
    case 6: {
      if (u.Nq === 0) { m = mutateScale(rng, 'options.scale', (x) => { options.scale = x; }); break; }
      if (s.device === 'cuda' && rng.bool()) { options.topK = rng.pick([2049, 4096]); m = { family: 'CUDA: topK > 2048', detail: String(options.topK), expect: R('options.topK', 'topK') }; break; }
      options.topK = rng.pick([2 ** 28, 2 ** 31, 2 ** 40, 2 ** 53]);
      m = { family: 'options.topK: huge (outputs would not fit in memory)', detail: describe(options.topK), expect: R('options.topK', 'topK') };
      break;
    }
    case 7: m = offsetsMutation(rng, u, options); break;
    default: m = mutateScale(rng, 'options.scale', (x) => { options.scale = x; });
  }
  for (const a of collectArrays(args.options)) s.arr(a);
  return { fn: 'indexedCrossAttention', ...m, call };
}

export async function genSparseGroup(rng: Rng, s: Scope): Promise<CaseSpec> {
  const valid = rng.bool(0.25);
  const r = rng.next();
  if (r < 0.22) return genIndexer(rng, s, valid);
  if (r < 0.5) return genTopK(rng, s, valid);
  if (r < 0.75) return genSparse(rng, s, valid);
  return genIndexed(rng, s, valid);
}

