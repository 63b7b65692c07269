// multiStreamAttention (SPEC §12): GEMs' lifelong serving in one call. Each user's candidate queries
// attend every stream present — recent (dense), midTerm (indexer-selected top-k), lifecycle (dense
// over compressed memory tokens) — and the streams' outputs are fused by a parameter-free sum or by
// one exact softmax over the union of their keys (merged through the streams' LSEs).
import { native } from './native';
import { DTYPE_CODE, DType, Tensor, emptyTensors } from './tensor';
import { encodeRule } from './rules';
import { checkHeads, checkLayout, checkTensor, CheckedLayout, FLOAT_DTYPES, Layout } from './layout';
import { checkIndexer, checkK } from './sparse';

/** A dense stream: every key of the user's stream (its own q optional, else the shared one). */
export interface DenseStream {
  q?: Tensor;
  k: Tensor;
  v: Tensor;
  kv: Layout;
}

/** The mid-term stream: only the `topK` keys the indexer scores highest, per query. */
export interface IndexedStream extends DenseStream {
  indexer: { q: Tensor; k: Tensor; w: Tensor };
  topK: number;
}

export interface MultiStreams {
  recent?: DenseStream;
  midTerm?: IndexedStream;
  lifecycle?: DenseStream;
}

export type StreamName = keyof MultiStreams;

export interface MultiStreamOptions {
  /** The queries' layout: offsets per user (segments / roles are not used: no mask between candidates and history). */
  q: Layout;
  /** 'sum' (GEMs' parameter-free fusion, default) or 'union' (one softmax over every stream's keys). */
  fusion?: 'sum' | 'union';
  /** Score scale of every stream; default 1 / sqrt(D) of each stream's queries. */
  scale?: number;
}

export interface MultiStreamResult {
  /** [Nq, H, Dv], the queries' dtype. */
  output: Tensor;
  /** [Nq, H] float32, natural-log log-sum-exp over the union of the keys ('union' only; -Infinity with no key). */
  lse?: Tensor;
}

export const STREAM_NAMES: readonly StreamName[] = ['recent', 'midTerm', 'lifecycle'];

interface CheckedStream {
  name: StreamName;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  kv: CheckedLayout;
  kvHeads: number;
  headDim: number;
  scale: number;
  indexer?: { q: Tensor; k: Tensor; w: Tensor; heads: number; dim: number; topK: number };
}

function checkStream(name: StreamName, stream: unknown, shared: Tensor, qLayout: CheckedLayout, scale: number | undefined): CheckedStream {
  const at = `streams.${name}`;
  if (stream === null || typeof stream !== 'object') throw new TypeError(`${at}: expected { q?, k, v, kv${name === 'midTerm' ? ', indexer, topK' : ''} }`);
  const s = stream as IndexedStream;
  const q = s.q === undefined ? shared : checkTensor(s.q, `${at}.q`, 3, FLOAT_DTYPES);
  const k = checkTensor(s.k, `${at}.k`, 3, FLOAT_DTYPES);
  const v = checkTensor(s.v, `${at}.v`, 3, FLOAT_DTYPES);
  for (const [t, what] of [[q, `${at}.q`], [k, `${at}.k`], [v, `${at}.v`]] as [Tensor, string][]) {
    if (t.dtype !== shared.dtype) throw new TypeError(`${what}: dtype ${t.dtype} differs from q's ${shared.dtype}`);
    if (t.device !== shared.device) throw new TypeError(`${what}: on ${t.device} but q is on ${shared.device}`);
  }
  const [nq, heads, headDim] = q.shape;
  if (nq !== shared.shape[0] || heads !== shared.shape[1])
    throw new RangeError(`${at}.q: expected ${shared.shape[0]} queries of ${shared.shape[1]} heads (as q), got shape [${q.shape.join(', ')}]`);
  const [tk, kvHeads, keyDim] = k.shape;
  if (headDim < 1 || kvHeads < 1 || v.shape[2] < 1) throw new RangeError(`${at}: heads and head sizes must be >= 1`);
  if (keyDim !== headDim) throw new RangeError(`${at}.k: head size ${keyDim} differs from its queries' ${headDim}`);
  if (v.shape[0] !== tk || v.shape[1] !== kvHeads) throw new RangeError(`${at}.v: shape [${v.shape.join(', ')}] must match k's tokens and heads [${tk}, ${kvHeads}, Dv]`);
  if (heads % kvHeads !== 0) throw new RangeError(`${at}.k: kv heads ${kvHeads} must divide the ${heads} query heads`);
  checkHeads(shared.device, heads, kvHeads, headDim, v.shape[2]);
  const kv = checkLayout(s.kv, tk, `${at}.kv`);
  if (kv.batch !== qLayout.batch) throw new RangeError(`${at}.kv: batch ${kv.batch} differs from options.q's ${qLayout.batch}`);
  const checked: CheckedStream = { name, q, k, v, kv, kvHeads, headDim, scale: scale ?? 1 / Math.sqrt(headDim) };
  if (name === 'midTerm') {
    const ix = s.indexer;
    if (ix === null || typeof ix !== 'object') throw new TypeError(`${at}.indexer: expected { q, k, w }`);
    const names: [string, string, string] = [`${at}.indexer.q`, `${at}.indexer.k`, `${at}.indexer.w`];
    const sizes = checkIndexer(ix.q, ix.k, ix.w, names);
    if (ix.q.dtype !== shared.dtype) throw new TypeError(`${names[0]}: dtype ${ix.q.dtype} differs from q's ${shared.dtype}`);
    if (ix.q.device !== shared.device) throw new TypeError(`${names[0]}: on ${ix.q.device} but q is on ${shared.device}`);
    if (sizes.nq !== nq) throw new RangeError(`${names[0]}: ${sizes.nq} rows for ${nq} queries`);
    if (sizes.tk !== tk) throw new RangeError(`${names[1]}: ${sizes.tk} rows for ${tk} keys`);
    const topK = checkK(s.topK, `${at}.topK`, shared.device);
    checked.indexer = { q: ix.q, k: ix.k, w: ix.w, heads: sizes.hi, dim: sizes.di, topK };
  }
  return checked;
}

/**
 * Candidate queries `q: [Nq, H, D]` (packed per user by `options.q.offsets`) attend each stream
 * present: `recent` and `lifecycle` densely over all of the user's keys in that stream, `midTerm`
 * over the indexer's top-k keys per query. Fusion `'sum'` adds the streams' outputs (a user with no
 * key in a stream gets 0 from it); `'union'` is one softmax over every key the streams attend, and
 * returns its `lse`. One native call: on CUDA every stream and the merge are queued back to back and
 * the host waits once.
 */
export async function multiStreamAttention(q: Tensor, streams: MultiStreams, options: MultiStreamOptions): Promise<MultiStreamResult> {
  checkTensor(q, 'q', 3, FLOAT_DTYPES);
  if (streams === null || typeof streams !== 'object') throw new TypeError('streams: expected { recent?, midTerm?, lifecycle? }');
  for (const key of Object.keys(streams))
    if (!(STREAM_NAMES as readonly string[]).includes(key)) throw new RangeError(`streams: unknown stream '${key}' (expected recent, midTerm or lifecycle)`);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { q: layout, fusion?, scale? }');
  const [nq, heads] = q.shape;
  const qLayout = checkLayout(options.q, nq, 'options.q');
  const fusion = options.fusion ?? 'sum';
  if (fusion !== 'sum' && fusion !== 'union') throw new RangeError(`options.fusion: expected 'sum' or 'union', got ${String(fusion)}`);
  const scale = options.scale;
  if (scale !== undefined && (typeof scale !== 'number' || !Number.isFinite(scale))) throw new TypeError(`options.scale: expected a finite number, got ${String(scale)}`);

  const checked: CheckedStream[] = [];
  for (const name of STREAM_NAMES) {
    if (!Object.prototype.hasOwnProperty.call(streams, name) || streams[name] === undefined) continue;
    checked.push(checkStream(name, streams[name], q, qLayout, scale));
  }
  if (checked.length === 0) throw new RangeError('streams: expected at least one of recent, midTerm, lifecycle');
  const valueDim = checked[0].v.shape[2];
  for (const s of checked)
    if (s.v.shape[2] !== valueDim) throw new RangeError(`streams.${s.name}.v: value size ${s.v.shape[2]} differs from streams.${checked[0].name}.v's ${valueDim}`);

  const union = fusion === 'union';
  const outShape = [nq, heads, valueDim], lseShape = [nq, heads];
  const specs: [DType, number[]][] = [[q.dtype, outShape], ...(union ? [['float32', lseShape] as [DType, number[]]] : [])];
  for (const s of checked) {
    specs.push([q.dtype, outShape]);
    if (union) specs.push(['float32', lseShape]);
    if (s.indexer) specs.push(['int32', [nq, s.indexer.topK]], ['float32', [nq, s.indexer.topK]]);
  }
  const made = emptyTensors(specs, q.device);
  const output = made[0], lse: Tensor | undefined = union ? made[1] : undefined;
  const scratch = made.slice(union ? 2 : 1);
  const full = encodeRule('full');
  try {
    let next = 0;
    const args = checked.map((s) => {
      const out = scratch[next++], streamLse = union ? scratch[next++] : undefined;
      const common = {
        device: q.device, dtype: DTYPE_CODE[q.dtype], heads, kvHeads: s.kvHeads, headDim: s.headDim, valueDim,
        q: s.q.storage(), k: s.k.storage(), v: s.v.storage(), out: out.storage(), lse: streamLse?.storage(), scale: s.scale,
      };
      if (!s.indexer)
        return { ...common, kind: 'dense', batch: qLayout.batch, tq: nq, tk: s.k.shape[0], qOffsets: qLayout.offsets, kvOffsets: s.kv.offsets,
          rule: full, normalize: 0, siluInvDivisor: 1 };
      const indices = scratch[next++], values = scratch[next++];
      return { ...common, kind: 'indexed', nq, tk: s.k.shape[0], topK: s.indexer.topK, indexerHeads: s.indexer.heads, indexerDim: s.indexer.dim,
        qOffsets: qLayout.offsets, kOffsets: s.kv.offsets, qI: s.indexer.q.storage(), kI: s.indexer.k.storage(), w: s.indexer.w.storage(),
        indices: indices.storage(), values: values.storage() };
    });
    await native().multiStreamAttention({ device: q.device, dtype: DTYPE_CODE[q.dtype], fusion: union ? 1 : 0, rows: nq * heads, valueDim,
      streams: args, out: output.storage(), lse: lse?.storage() });
  } catch (e) {
    output.dispose();
    lse?.dispose();
    throw e;
  } finally {
    for (const t of scratch) t.dispose();
  }
  return lse ? { output, lse } : { output };
}
