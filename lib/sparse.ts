// Indexer-selected sparse cross attention (SPEC §5, GEMs mid-term stream / DeepSeek DSA):
// indexerScores -> topK -> sparseAttention, or all three fused in indexedCrossAttention.
import { limits, native, NativeStorage } from './native';
import { DTYPE_CODE, DType, Device, Tensor, emptyTensors } from './tensor';
import { checkHeads, checkTensor, FLOAT_DTYPES } from './layout';

/** The query / key offsets of a batch of users: the short form, or the layouts maskedAttention takes. */
export type SparseLayout = { qOffsets: Int32Array; kOffsets: Int32Array } | { q: { offsets: Int32Array }; kv: { offsets: Int32Array } };

function checkOffsets(offsets: unknown, rows: number, name: string): { batch: number; maxLength: number; offsets: Int32Array } {
  if (!(offsets instanceof Int32Array)) throw new TypeError(`${name}: expected an Int32Array`);
  if (offsets.length < 1 || offsets[0] !== 0) throw new RangeError(`${name}: expected batch + 1 offsets starting at 0`);
  let maxLength = 0;
  for (let b = 0; b + 1 < offsets.length; b++) {
    if (offsets[b + 1] < offsets[b]) throw new RangeError(`${name}: must be nondecreasing, but ${name}[${b + 1}] = ${offsets[b + 1]} < ${offsets[b]}`);
    maxLength = Math.max(maxLength, offsets[b + 1] - offsets[b]);
  }
  if (offsets[offsets.length - 1] !== rows) throw new RangeError(`${name}: the last offset must equal the row count ${rows}, got ${offsets[offsets.length - 1]}`);
  return { batch: offsets.length - 1, maxLength, offsets };
}

// The query / key offsets, in either form of SPEC §5: `{ qOffsets, kOffsets }` or the layouts
// `{ q: { offsets }, kv: { offsets } }` that maskedAttention takes.
export function checkPair(options: unknown, nq: number, tk: number) {
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { qOffsets, kOffsets, ... } or { q: { offsets }, kv: { offsets }, ... }');
  const o = options as { qOffsets?: unknown; kOffsets?: unknown; q?: { offsets?: unknown }; kv?: { offsets?: unknown } };
  const long = o.qOffsets === undefined && o.kOffsets === undefined && (o.q !== undefined || o.kv !== undefined);
  const qName = long ? 'options.q.offsets' : 'options.qOffsets', kName = long ? 'options.kv.offsets' : 'options.kOffsets';
  const layoutOffsets = (layout: { offsets?: unknown } | undefined, name: string) => {
    if (layout === null || typeof layout !== 'object') throw new TypeError(`${name.slice(0, -'.offsets'.length)}: expected { offsets }`);
    return layout.offsets;
  };
  const q = checkOffsets(long ? layoutOffsets(o.q, qName) : o.qOffsets, nq, qName);
  const k = checkOffsets(long ? layoutOffsets(o.kv, kName) : o.kOffsets, tk, kName);
  if (q.batch !== k.batch) throw new RangeError(`${kName}: batch ${k.batch} differs from ${qName}' ${q.batch}`);
  return { q, k };
}

function sameDevice(tensors: [Tensor, string][]) {
  const [first, firstName] = tensors[0];
  for (const [t, name] of tensors.slice(1)) {
    if (t.dtype !== first.dtype) throw new TypeError(`${name}: dtype ${t.dtype} differs from ${firstName}'s ${first.dtype}`);
    if (t.device !== first.device) throw new TypeError(`${name}: on ${t.device} but ${firstName} is on ${first.device}`);
  }
}

export function checkIndexer(qI: Tensor, kI: Tensor, w: Tensor, [qName, kName, wName]: [string, string, string]) {
  checkTensor(qI, qName, 3, FLOAT_DTYPES);
  checkTensor(kI, kName, 2, FLOAT_DTYPES);
  checkTensor(w, wName, 2, FLOAT_DTYPES);
  sameDevice([[qI, qName], [kI, kName], [w, wName]]);
  const [nq, hi, di] = qI.shape;
  if (kI.shape[1] !== di) throw new RangeError(`${kName}: dim ${kI.shape[1]} differs from ${qName}'s ${di}`);
  if (w.shape[0] !== nq || w.shape[1] !== hi) throw new RangeError(`${wName}: expected shape [${nq}, ${hi}], got [${w.shape.join(', ')}]`);
  if (hi < 1 || di < 1) throw new RangeError(`${qName}: heads and dim must be >= 1`);
  const lim = limits();
  if (hi > lim.maxHeads || di > lim.maxIndexerDim)
    throw new RangeError(`${qName}: at most ${lim.maxHeads} heads of dim <= ${lim.maxIndexerDim}, got [${qI.shape.join(', ')}]`);
  const { indexerMaxElements, indexerMaxHeads } = lim.cuda;
  if (qI.device === 'cuda' && indexerMaxElements !== undefined && indexerMaxHeads !== undefined && (hi * di > indexerMaxElements || hi > indexerMaxHeads))
    throw new RangeError(`${qName}: the CUDA indexer holds heads x dim <= ${indexerMaxElements} and heads <= ${indexerMaxHeads}, got ${hi} x ${di}`);
  return { nq, hi, di, tk: kI.shape[0] };
}

/** scores[i][j] = Σ_h w[i][h] · relu(qI[i][h] · kI[start(i) + j]); -Infinity past each row's length. */
export async function indexerScores(qI: Tensor, kI: Tensor, w: Tensor, options: SparseLayout): Promise<Tensor<'float32'>> {
  const { nq, hi, di, tk } = checkIndexer(qI, kI, w, ['qI', 'kI', 'w']);
  const { q: qo, k } = checkPair(options, nq, tk);
  const [scores] = emptyTensors([['float32', [nq, k.maxLength]]], qI.device);
  try {
    await native().indexerScores({ device: qI.device, dtype: DTYPE_CODE[qI.dtype], nq, tk, indexerHeads: hi, indexerDim: di,
      qOffsets: qo.offsets, kOffsets: k.offsets, qI: qI.storage(), kI: kI.storage(), w: w.storage(), scores: scores.storage() });
  } catch (e) {
    scores.dispose();
    throw e;
  }
  return scores as Tensor<'float32'>;
}

export function checkK(k: unknown, name: string, device: Device): number {
  if (typeof k !== 'number' || !Number.isInteger(k)) throw new TypeError(`${name}: expected an integer, got ${String(k)}`);
  if (k < 1) throw new RangeError(`${name}: expected an integer >= 1, got ${k}`);
  const lim = limits();
  const max = device === 'cuda' ? lim.cuda.maxTopK ?? lim.maxTopK : lim.maxTopK;
  if (k > max) throw new RangeError(`${name}: the ${device === 'cuda' ? 'CUDA' : 'CPU'} top-k supports k <= ${max}, got ${k}`);
  return k;
}

/** Per row the k largest, descending; ties -> lower index first; NaN / -Infinity never; -1 padding. */
export async function topK(scores: Tensor, k: number, options: { lengths?: Int32Array } = {}): Promise<{ indices: Tensor<'int32'>; values: Tensor<'float32'> }> {
  checkTensor(scores, 'scores', 2, ['float32']);
  checkK(k, 'k', scores.device);
  const [rows, cols] = scores.shape;
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { lengths? }');
  const { lengths } = options;
  if (lengths !== undefined) {
    if (!(lengths instanceof Int32Array)) throw new TypeError('options.lengths: expected an Int32Array');
    if (lengths.length !== rows) throw new RangeError(`options.lengths: expected ${rows} entries (one per row), got ${lengths.length}`);
    for (let r = 0; r < rows; r++)
      if (lengths[r] < 0 || lengths[r] > cols) throw new RangeError(`options.lengths: entry ${r} = ${lengths[r]} is outside [0, ${cols}]`);
  }
  const [indices, values] = emptyTensors([['int32', [rows, k]], ['float32', [rows, k]]], scores.device);
  try {
    await native().topK({ device: scores.device, rows, cols, k, scores: scores.storage(), indices: indices.storage(), values: values.storage(), lengths });
  } catch (e) {
    indices.dispose();
    values.dispose();
    throw e;
  }
  return { indices: indices as Tensor<'int32'>, values: values as Tensor<'float32'> };
}

function checkAttention(q: Tensor, k: Tensor, v: Tensor) {
  checkTensor(q, 'q', 3, FLOAT_DTYPES);
  checkTensor(k, 'k', 3, FLOAT_DTYPES);
  checkTensor(v, 'v', 3, FLOAT_DTYPES);
  sameDevice([[q, 'q'], [k, 'k'], [v, 'v']]);
  const [nq, heads, headDim] = q.shape;
  const [tk, kvHeads, keyDim] = k.shape;
  const valueDim = v.shape[2];
  if (keyDim !== headDim) throw new RangeError(`k: head size ${keyDim} differs from q's ${headDim}`);
  if (v.shape[0] !== tk || v.shape[1] !== kvHeads) throw new RangeError(`v: shape [${v.shape.join(', ')}] must match k's tokens and heads [${tk}, ${kvHeads}, Dv]`);
  if (heads < 1 || kvHeads < 1 || headDim < 1 || valueDim < 1) throw new RangeError('q/k/v: heads and head sizes must be >= 1');
  if (heads % kvHeads !== 0) throw new RangeError(`k: kv heads ${kvHeads} must divide q's heads ${heads}`);
  checkHeads(q.device, heads, kvHeads, headDim, valueDim);
  return { nq, heads, headDim, tk, kvHeads, valueDim };
}

function checkScale(scale: unknown, headDim: number): number {
  if (scale === undefined) return 1 / Math.sqrt(headDim);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`options.scale: expected a finite number, got ${String(scale)}`);
  return scale;
}

/**
 * Softmax attention of each query over its selected keys only (SPEC §5); `indices` is an int32
 * Tensor [Nq, K]. Arguments are captured at the call (SPEC §11): the tensors may be disposed and
 * the offsets reused as soon as this returns its promise.
 */
export function sparseAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, indices: Tensor,
  options: SparseLayout & { scale?: number; returnLse: true }): Promise<{ output: Tensor<D>; lse: Tensor<'float32'> }>;
export function sparseAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, indices: Tensor,
  options: SparseLayout & { scale?: number; returnLse?: boolean }): Promise<{ output: Tensor<D>; lse?: Tensor<'float32'> }>;
export function sparseAttention(q: Tensor, k: Tensor, v: Tensor, indices: Tensor,
  options: SparseLayout & { scale?: number; returnLse?: boolean }): Promise<{ output: Tensor; lse?: Tensor }> {
  let held: NativeStorage[] = [];
  try {
    const s = checkAttention(q, k, v);
    const { q: qo, k: ko } = checkPair(options, s.nq, s.tk);
    if (!(indices instanceof Tensor)) throw new TypeError('indices: expected an int32 Tensor [Nq, K]');
    checkTensor(indices, 'indices', 2, ['int32']);
    if (indices.shape[0] !== s.nq) throw new RangeError(`indices: expected ${s.nq} rows (one per query), got ${indices.shape[0]}`);
    const topk = indices.shape[1];
    if (topk < 1) throw new RangeError('indices: expected at least one column');
    const scale = checkScale(options.scale, s.headDim);
    const returnLse = Boolean(options.returnLse);
    const qOffsets = qo.offsets.slice(), kOffsets = ko.offsets.slice();
    const [qs, ks, vs] = held = [q.hold(), k.hold(), v.hold()];
    const idx = indices.hold();
    held.push(idx);
    const run = async () => {
      const hostIdx = new Int32Array(await idx.read(), 0, s.nq * topk);
      const outs = emptyTensors(returnLse ? [[q.dtype, [s.nq, s.heads, s.valueDim]], ['float32', [s.nq, s.heads]]] : [[q.dtype, [s.nq, s.heads, s.valueDim]]], q.device);
      const output = outs[0], lse: Tensor | undefined = outs[1];
      try {
        await native().sparseAttention({ device: q.device, dtype: DTYPE_CODE[q.dtype], ...s, topK: topk, scale,
          qOffsets, kOffsets, q: qs, k: ks, v: vs, out: output.storage(), lse: lse?.storage(), indices: hostIdx });
      } catch (e) {
        output.dispose();
        lse?.dispose();
        throw e;
      }
      return lse ? { output, lse } : { output };
    };
    return run().finally(() => { for (const h of held) h.dispose(); });
  } catch (e) {
    for (const h of held) h.dispose();
    return Promise.reject(e);
  }
}

export type IndexedCrossAttentionOptions = SparseLayout & {
  indexer: { q: Tensor; k: Tensor; w: Tensor };
  topK: number;
  scale?: number;
  returnLse?: boolean;
};

/**
 * indexerScores -> topK -> sparseAttention in one call. On CUDA, rows of up to 16,384 keys (k <= 512,
 * indexer heads x dim <= 1,024; fewer where the device's opt-in shared memory per block is smaller)
 * run in one fused kernel whose score row never leaves shared memory.
 */
export function indexedCrossAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: IndexedCrossAttentionOptions & { returnLse: true }):
  Promise<{ output: Tensor<D>; indices: Tensor<'int32'>; values: Tensor<'float32'>; lse: Tensor<'float32'> }>;
export function indexedCrossAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: IndexedCrossAttentionOptions):
  Promise<{ output: Tensor<D>; indices: Tensor<'int32'>; values: Tensor<'float32'>; lse?: Tensor<'float32'> }>;
export async function indexedCrossAttention(q: Tensor, k: Tensor, v: Tensor, options: IndexedCrossAttentionOptions):
  Promise<{ output: Tensor; indices: Tensor; values: Tensor; lse?: Tensor }> {
  const s = checkAttention(q, k, v);
  if (options === null || typeof options !== 'object' || options.indexer === null || typeof options.indexer !== 'object')
    throw new TypeError('options.indexer: expected { q, k, w }');
  const ix = checkIndexer(options.indexer.q, options.indexer.k, options.indexer.w, ['options.indexer.q', 'options.indexer.k', 'options.indexer.w']);
  if (ix.nq !== s.nq) throw new RangeError(`options.indexer.q: ${ix.nq} rows for ${s.nq} queries`);
  if (ix.tk !== s.tk) throw new RangeError(`options.indexer.k: ${ix.tk} rows for ${s.tk} keys`);
  if (options.indexer.q.device !== q.device) throw new TypeError(`options.indexer.q: on ${options.indexer.q.device} but q is on ${q.device}`);
  if (options.indexer.q.dtype !== q.dtype) throw new TypeError(`options.indexer.q: dtype ${options.indexer.q.dtype} differs from q's ${q.dtype}`);
  const pair = checkPair(options, s.nq, s.tk);
  const topk = checkK(options.topK, 'options.topK', q.device);
  const scale = checkScale(options.scale, s.headDim);
  const outs = emptyTensors([[q.dtype, [s.nq, s.heads, s.valueDim]], ['int32', [s.nq, topk]], ['float32', [s.nq, topk]],
    ...(options.returnLse ? [['float32', [s.nq, s.heads]] as [DType, number[]]] : [])], q.device);
  const [output, indices, values] = outs, lse: Tensor | undefined = outs[3];
  try {
    await native().indexedCrossAttention({ device: q.device, dtype: DTYPE_CODE[q.dtype], ...s, topK: topk, scale,
      indexerHeads: ix.hi, indexerDim: ix.di, qOffsets: pair.q.offsets, kOffsets: pair.k.offsets,
      qI: options.indexer.q.storage(), kI: options.indexer.k.storage(), w: options.indexer.w.storage(),
      q: q.storage(), k: k.storage(), v: v.storage(), out: output.storage(), lse: lse?.storage(),
      indices: indices.storage(), values: values.storage() });
  } catch (e) {
    for (const t of [output, indices, values, lse]) t?.dispose();
    throw e;
  }
  return lse ? { output, indices, values, lse } : { output, indices, values };
}
