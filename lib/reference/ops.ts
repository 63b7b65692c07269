// The oracle of every op (SPEC §3, §5): plain loops, float64 accumulation, no tiling, no tricks.
// Cost is O(Tq · Lk · D) time and O(Lk) scratch per query row; no L × L mask is ever built.
import { MaskRule, PresetName, refAllowed, resolveRule } from './rules';

/** Row-major data of any numeric array type, with its shape. */
export interface RefTensor { data: ArrayLike<number>; shape: readonly number[] }
export interface RefOut { data: Float64Array; shape: number[] }
export interface RefIndexOut { data: Int32Array; shape: number[] }
/** SPEC §2 jagged layout. */
export interface RefLayout { offsets: Int32Array; segments?: Int32Array; roles?: Uint8Array }

export interface MaskedAttentionOptions {
  q: RefLayout;
  kv?: RefLayout;
  rule?: MaskRule | PresetName;
  scale?: number;
  normalize?: 'softmax' | 'silu';
  siluDivisor?: number;
  returnLse?: boolean;
}

export interface JaggedOffsets { qOffsets: Int32Array; kOffsets: Int32Array }
export interface TopKOptions { lengths?: Int32Array }
export interface SparseAttentionOptions extends JaggedOffsets { scale?: number; returnLse?: boolean }
export interface IndexedCrossAttentionOptions extends JaggedOffsets {
  indexer: { q: RefTensor; k: RefTensor; w: RefTensor };
  topK: number;
  scale?: number;
}

// ---------------------------------------------------------------------------------------------
// Validation (RangeError for shapes / lengths / offsets / indices, TypeError for wrong types),
// with messages that name the argument, as SPEC §6 asks of every backend.

const fmtShape = (s: readonly number[]) => `[${s.join(', ')}]`;

export function checkTensor(t: RefTensor, name: string, rank: number): void {
  if (t === null || typeof t !== 'object' || (!Array.isArray(t.shape) && !ArrayBuffer.isView(t.shape)))
    throw new TypeError(`${name}: expected { data, shape }`);
  if (t.data === null || typeof t.data !== 'object' || typeof t.data.length !== 'number')
    throw new TypeError(`${name}: expected data to be an array or typed array`);
  if (t.shape.length !== rank) throw new RangeError(`${name}: expected rank ${rank}, got shape ${fmtShape(t.shape)}`);
  let n = 1;
  for (const d of t.shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`${name}: shape ${fmtShape(t.shape)} must hold integers >= 0`);
    n *= d;
  }
  if (t.data.length !== n) throw new RangeError(`${name}: shape ${fmtShape(t.shape)} needs ${n} elements, got ${t.data.length}`);
}

/** Checks offsets (B + 1 entries, 0 … rows, nondecreasing) and returns B. */
function checkOffsets(offsets: Int32Array, name: string, rows: number, what = 'token count'): number {
  if (!(offsets instanceof Int32Array)) throw new TypeError(`${name}: expected an Int32Array`);
  if (offsets.length < 1) throw new RangeError(`${name}: expected batch + 1 >= 1 entries, got 0`);
  if (offsets[0] !== 0) throw new RangeError(`${name}: offsets[0] must be 0, got ${offsets[0]}`);
  for (let b = 0; b + 1 < offsets.length; b++)
    if (offsets[b + 1] < offsets[b])
      throw new RangeError(`${name}: must be nondecreasing, but offsets[${b + 1}] = ${offsets[b + 1]} < offsets[${b}] = ${offsets[b]}`);
  const last = offsets[offsets.length - 1];
  if (last !== rows) throw new RangeError(`${name}: the last offset must equal the ${what} ${rows}, got ${last}`);
  return offsets.length - 1;
}

interface Layout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array; batch: number }

export function checkLayout(layout: RefLayout, name: string, tokens: number): Layout {
  if (layout === null || typeof layout !== 'object') throw new TypeError(`${name}: expected { offsets, segments?, roles? }`);
  const batch = checkOffsets(layout.offsets, `${name}.offsets`, tokens);
  let segments = layout.segments;
  if (segments === undefined) segments = new Int32Array(tokens);
  else {
    if (!(segments instanceof Int32Array)) throw new TypeError(`${name}.segments: expected an Int32Array`);
    if (segments.length !== tokens) throw new RangeError(`${name}.segments: expected ${tokens} entries (one per token), got ${segments.length}`);
    for (let b = 0; b < batch; b++)
      for (let t = layout.offsets[b] + 1; t < layout.offsets[b + 1]; t++)
        if (segments[t] < segments[t - 1])
          throw new RangeError(`${name}.segments: must be nondecreasing inside a sequence, but segments[${t}] = ${segments[t]} < segments[${t - 1}] = ${segments[t - 1]}`);
  }
  let roles = layout.roles;
  if (roles === undefined) roles = new Uint8Array(tokens);
  else {
    if (!(roles instanceof Uint8Array)) throw new TypeError(`${name}.roles: expected a Uint8Array`);
    if (roles.length !== tokens) throw new RangeError(`${name}.roles: expected ${tokens} entries (one per token), got ${roles.length}`);
    for (let t = 0; t < tokens; t++)
      if (roles[t] > 2) throw new RangeError(`${name}.roles: roles are 0 (item), 1 (memory) or 2 (target), got ${roles[t]} at ${t}`);
  }
  return { offsets: layout.offsets, segments, roles, batch };
}

export function checkScale(scale: number | undefined, D: number): number {
  if (scale === undefined) return 1 / Math.sqrt(D);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`options.scale: expected a finite number, got ${String(scale)}`);
  return scale;
}

/** Checks q [Nq, H, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv] and returns the sizes. */
export function checkQkv(q: RefTensor, k: RefTensor, v: RefTensor) {
  checkTensor(q, 'q', 3); checkTensor(k, 'k', 3); checkTensor(v, 'v', 3);
  const [Tq, H, D] = q.shape, [Tk, Hkv, Dk] = k.shape, [Tv, Hv, Dv] = v.shape;
  if (Dk !== D) throw new RangeError(`k: head size ${Dk} differs from q's ${D}`);
  if (Tv !== Tk || Hv !== Hkv) throw new RangeError(`v: shape ${fmtShape(v.shape)} must match k's tokens and heads [${Tk}, ${Hkv}, Dv]`);
  if (H < 1 || Hkv < 1 || D < 1 || Dv < 1)
    throw new RangeError(`q/k/v: heads and head sizes must be >= 1, got q ${fmtShape(q.shape)}, k ${fmtShape(k.shape)}, v ${fmtShape(v.shape)}`);
  if (H % Hkv !== 0) throw new RangeError(`k: kv heads ${Hkv} must divide q's heads ${H}`);
  return { Tq, H, D, Tk, Hkv, Dv };
}

/** Batch entry of every row, from offsets (B + 1 entries). */
export function entryOfRows(offsets: Int32Array, rows: number): Int32Array {
  const entry = new Int32Array(rows);
  for (let b = 0; b + 1 < offsets.length; b++) entry.fill(b, offsets[b], offsets[b + 1]);
  return entry;
}

// ---------------------------------------------------------------------------------------------
// Shared arithmetic.

/** Σ_d a[aBase + d] · b[bBase + d] in float64. */
export function dot(a: ArrayLike<number>, aBase: number, b: ArrayLike<number>, bBase: number, n: number): number {
  let s = 0;
  for (let d = 0; d < n; d++) s += a[aBase + d] * b[bBase + d];
  return s;
}

interface HeadGeometry { H: number; D: number; Hkv: number; Dv: number; scale: number }

/** Scaled scores of query row qi, head h against the given key rows (read at kv head g). */
function scoresOf(q: RefTensor, k: RefTensor, qi: number, h: number, g: number, keys: readonly number[], geo: HeadGeometry): Float64Array {
  const s = new Float64Array(keys.length);
  for (let n = 0; n < keys.length; n++) s[n] = geo.scale * dot(q.data, (qi * geo.H + h) * geo.D, k.data, (keys[n] * geo.Hkv + g) * geo.D, geo.D);
  return s;
}

/**
 * Softmax attention of one (query row, head) over the listed key rows (repeats count once per
 * occurrence). Adds the result into out[outBase …] and returns the log-sum-exp of the scores
 * (-Infinity, and nothing added, when there are no keys).
 */
function softmaxAttend(scores: Float64Array, v: RefTensor, g: number, keys: readonly number[], geo: HeadGeometry, out: Float64Array, outBase: number): number {
  if (keys.length === 0) return -Infinity;
  let m = -Infinity;
  for (let n = 0; n < scores.length; n++) if (scores[n] > m || Number.isNaN(scores[n])) m = scores[n];
  const p = new Float64Array(scores.length);
  let l = 0;
  for (let n = 0; n < scores.length; n++) { p[n] = Math.exp(scores[n] - m); l += p[n]; }
  for (let n = 0; n < keys.length; n++) {
    const wgt = p[n] / l;
    const vBase = (keys[n] * geo.Hkv + g) * geo.Dv;
    for (let c = 0; c < geo.Dv; c++) out[outBase + c] += wgt * v.data[vBase + c];
  }
  return m + Math.log(l);
}

const silu = (x: number) => x / (1 + Math.exp(-x));

// ---------------------------------------------------------------------------------------------
// SPEC §3

/**
 * Masked attention over a jagged batch: q [Tq, H, D], k [Tk, Hkv, D], v [Tk, Hkv, Dv] →
 * output [Tq, H, Dv] (and lse [Tq, H] with returnLse, softmax only).
 */
export function maskedAttention(q: RefTensor, k: RefTensor, v: RefTensor, options: MaskedAttentionOptions): { output: RefOut; lse?: RefOut } {
  const { Tq, H, D, Tk, Hkv, Dv } = checkQkv(q, k, v);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { q: layout, ... }');
  const ql = checkLayout(options.q, 'options.q', Tq);
  const kvGiven = options.kv !== undefined;
  if (!kvGiven && Tk !== Tq) throw new RangeError(`k: self-attention needs as many keys as queries (${Tq}), got ${Tk}; pass options.kv for cross attention`);
  const kl = kvGiven ? checkLayout(options.kv!, 'options.kv', Tk) : ql;
  if (kl.batch !== ql.batch) throw new RangeError(`options.kv: batch ${kl.batch} differs from options.q's ${ql.batch}`);
  const rule = resolveRule(options.rule);
  const scale = checkScale(options.scale, D);
  const normalize = options.normalize ?? 'softmax';
  if (normalize !== 'softmax' && normalize !== 'silu') throw new RangeError(`options.normalize: expected 'softmax' or 'silu', got ${String(normalize)}`);
  if (options.returnLse && normalize !== 'softmax') throw new RangeError("options.returnLse: only defined for normalize 'softmax'");
  const B = ql.batch;
  let maxLk = 0;
  for (let b = 0; b < B; b++) maxLk = Math.max(maxLk, kl.offsets[b + 1] - kl.offsets[b]);
  let divisor = Math.max(1, maxLk);
  if (options.siluDivisor !== undefined) {
    divisor = options.siluDivisor;
    if (typeof divisor !== 'number') throw new TypeError('options.siluDivisor: expected a number');
    if (!(Number.isFinite(divisor) && divisor > 0)) throw new RangeError(`options.siluDivisor: expected a finite number > 0, got ${divisor}`);
  }

  const geo: HeadGeometry = { H, D, Hkv, Dv, scale };
  const group = H / Hkv;
  const output = new Float64Array(Tq * H * Dv);
  const lse = new Float64Array(Tq * H);
  for (let b = 0; b < B; b++) {
    const q0 = ql.offsets[b], Lq = ql.offsets[b + 1] - q0;
    const k0 = kl.offsets[b], Lk = kl.offsets[b + 1] - k0;
    for (let i = 0; i < Lq; i++) {
      const qi = q0 + i;
      const posQ = i + (Lk - Lq); // bottom-right alignment
      const keys: number[] = [];   // allowed key rows of this query, in key order
      for (let j = 0; j < Lk; j++)
        if (refAllowed(rule, ql.roles[qi], kl.roles[k0 + j], ql.segments[qi], kl.segments[k0 + j], posQ, j)) keys.push(k0 + j);
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / group);
        const scores = scoresOf(q, k, qi, h, g, keys, geo);
        const outBase = (qi * H + h) * Dv;
        if (normalize === 'silu') {
          for (let n = 0; n < keys.length; n++) {
            const wgt = silu(scores[n]) / divisor;
            const vBase = (keys[n] * Hkv + g) * Dv;
            for (let c = 0; c < Dv; c++) output[outBase + c] += wgt * v.data[vBase + c];
          }
        } else {
          lse[qi * H + h] = softmaxAttend(scores, v, g, keys, geo, output, outBase);
        }
      }
    }
  }
  const result: { output: RefOut; lse?: RefOut } = { output: { data: output, shape: [Tq, H, Dv] } };
  if (options.returnLse) result.lse = { data: lse, shape: [Tq, H] };
  return result;
}

// ---------------------------------------------------------------------------------------------
// SPEC §5

export function checkJagged(opts: JaggedOffsets, Nq: number, Tk: number): { B: number } {
  if (opts === null || typeof opts !== 'object') throw new TypeError('options: expected { qOffsets, kOffsets, ... }');
  const Bq = checkOffsets(opts.qOffsets, 'options.qOffsets', Nq, 'row count');
  const Bk = checkOffsets(opts.kOffsets, 'options.kOffsets', Tk, 'row count');
  if (Bq !== Bk) throw new RangeError(`options.kOffsets: batch ${Bk} differs from options.qOffsets' ${Bq}`);
  return { B: Bq };
}

/**
 * scores[i][j] = Σ_h w[i][h] · relu(qI[i][h] · kI[start(i) + j]) for j < L(i), -Infinity beyond.
 * qI [Nq, Hi, Di], kI [Tk, Di], w [Nq, Hi] → [Nq, Lmax].
 */
export function indexerScores(qI: RefTensor, kI: RefTensor, w: RefTensor, options: JaggedOffsets): RefOut {
  checkTensor(qI, 'qI', 3); checkTensor(kI, 'kI', 2); checkTensor(w, 'w', 2);
  const [Nq, Hi, Di] = qI.shape, [Tk, Dk] = kI.shape;
  if (Dk !== Di) throw new RangeError(`kI: dim ${Dk} differs from qI's ${Di}`);
  if (w.shape[0] !== Nq || w.shape[1] !== Hi) throw new RangeError(`w: expected shape [${Nq}, ${Hi}], got ${fmtShape(w.shape)}`);
  const { B } = checkJagged(options, Nq, Tk);
  const { qOffsets, kOffsets } = options;
  let Lmax = 0;
  for (let b = 0; b < B; b++) Lmax = Math.max(Lmax, kOffsets[b + 1] - kOffsets[b]);
  const entry = entryOfRows(qOffsets, Nq);
  const out = new Float64Array(Nq * Lmax).fill(-Infinity);
  for (let i = 0; i < Nq; i++) {
    const start = kOffsets[entry[i]], L = kOffsets[entry[i] + 1] - start;
    for (let j = 0; j < L; j++) {
      let s = 0;
      for (let h = 0; h < Hi; h++) s += w.data[i * Hi + h] * Math.max(0, dot(qI.data, (i * Hi + h) * Di, kI.data, (start + j) * Di, Di));
      out[i * Lmax + j] = s;
    }
  }
  return { data: out, shape: [Nq, Lmax] };
}

/** k of topK: an integer >= 1 whose [N, k] outputs can exist (a JS typed array holds < 2^32 elements). */
function checkK(k: unknown, name: string, rows: number): void {
  if (typeof k !== 'number' || !Number.isInteger(k)) throw new TypeError(`${name}: expected an integer`);
  if (k < 1) throw new RangeError(`${name}: expected k >= 1, got ${k}`);
  if (rows * k >= 2 ** 32) throw new RangeError(`${name}: ${rows} rows x ${k} is more output than an array holds`);
}

/**
 * Per row the k largest scores, descending; ties → lower column first; NaN and -Infinity are never
 * selected (+Infinity is); rows with fewer candidates are padded with index -1 / value -Infinity.
 * `lengths[r]` restricts row r to its first lengths[r] columns.
 */
export function topK(scores: RefTensor, k: number, options: TopKOptions = {}): { indices: RefIndexOut; values: RefOut } {
  checkTensor(scores, 'scores', 2);
  const [N, M] = scores.shape;
  checkK(k, 'k', N);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { lengths? }');
  const lengths = options.lengths;
  if (lengths !== undefined) {
    if (!(lengths instanceof Int32Array)) throw new TypeError('options.lengths: expected an Int32Array');
    if (lengths.length !== N) throw new RangeError(`options.lengths: expected ${N} entries (one per row), got ${lengths.length}`);
    for (let r = 0; r < N; r++)
      if (lengths[r] < 0 || lengths[r] > M) throw new RangeError(`options.lengths: entry ${r} = ${lengths[r]} is outside [0, ${M}]`);
  }
  const indices = new Int32Array(N * k).fill(-1);
  const values = new Float64Array(N * k).fill(-Infinity);
  for (let r = 0; r < N; r++) {
    const len = lengths ? lengths[r] : M;
    const row = (j: number) => scores.data[r * M + j];
    const candidates: number[] = [];
    for (let j = 0; j < len; j++) if (!Number.isNaN(row(j)) && row(j) !== -Infinity) candidates.push(j);
    // Larger value first; equal values (including -0 vs +0 and +Inf vs +Inf) by lower index.
    candidates.sort((a, b) => (row(a) > row(b) ? -1 : row(a) < row(b) ? 1 : a - b));
    for (let n = 0; n < Math.min(k, candidates.length); n++) {
      indices[r * k + n] = candidates[n];
      values[r * k + n] = row(candidates[n]);
    }
  }
  return { indices: { data: indices, shape: [N, k] }, values: { data: values, shape: [N, k] } };
}

/**
 * Softmax attention of each query over the keys its row of `indices` selects: positions inside the
 * query's own key sequence, -1 = skip, repeats attended once per occurrence.
 */
export function sparseAttention(q: RefTensor, k: RefTensor, v: RefTensor, indices: RefTensor, options: SparseAttentionOptions): { output: RefOut; lse?: RefOut } {
  const { Tq: Nq, H, D, Tk, Hkv, Dv } = checkQkv(q, k, v);
  checkTensor(indices, 'indices', 2);
  const { qOffsets, kOffsets } = options;
  checkJagged(options, Nq, Tk);
  const K = indices.shape[1];
  if (indices.shape[0] !== Nq) throw new RangeError(`indices: expected ${Nq} rows (one per query), got ${indices.shape[0]}`);
  if (K < 1) throw new RangeError('indices: expected at least one column');
  const scale = checkScale(options.scale, D);
  const entry = entryOfRows(qOffsets, Nq);
  // Every index is checked before anything is computed.
  for (let i = 0; i < Nq; i++) {
    const L = kOffsets[entry[i] + 1] - kOffsets[entry[i]];
    for (let n = 0; n < K; n++) {
      const j = indices.data[i * K + n];
      if (!Number.isInteger(j) || j < -1 || j >= L)
        throw new RangeError(`indices: entry [${i}, ${n}] = ${j} is outside [-1, ${L}) (the key count of query ${i}'s batch entry)`);
    }
  }
  const geo: HeadGeometry = { H, D, Hkv, Dv, scale };
  const group = H / Hkv;
  const output = new Float64Array(Nq * H * Dv);
  const lse = new Float64Array(Nq * H);
  for (let i = 0; i < Nq; i++) {
    const start = kOffsets[entry[i]];
    const keys: number[] = [];
    for (let n = 0; n < K; n++) {
      const j = indices.data[i * K + n];
      if (j >= 0) keys.push(start + j);
    }
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      const scores = scoresOf(q, k, i, h, g, keys, geo);
      lse[i * H + h] = softmaxAttend(scores, v, g, keys, geo, output, (i * H + h) * Dv);
    }
  }
  const result: { output: RefOut; lse?: RefOut } = { output: { data: output, shape: [Nq, H, Dv] } };
  if (options.returnLse) result.lse = { data: lse, shape: [Nq, H] };
  return result;
}

/**
 * indexerScores → topK → sparseAttention. Returns the attention output, the selected indices
 * [Nq, topK] and their indexer scores (values).
 */
export function indexedCrossAttention(q: RefTensor, k: RefTensor, v: RefTensor, options: IndexedCrossAttentionOptions): { output: RefOut; indices: RefIndexOut; values: RefOut } {
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { indexer, topK, qOffsets, kOffsets, ... }');
  const ix = options.indexer;
  if (ix === null || typeof ix !== 'object') throw new TypeError('options.indexer: expected { q, k, w }');
  const { Tq, Tk } = checkQkv(q, k, v);
  checkTensor(ix.q, 'options.indexer.q', 3); checkTensor(ix.k, 'options.indexer.k', 2); checkTensor(ix.w, 'options.indexer.w', 2);
  if (ix.k.shape[1] !== ix.q.shape[2]) throw new RangeError(`options.indexer.k: dim ${ix.k.shape[1]} differs from options.indexer.q's ${ix.q.shape[2]}`);
  if (ix.w.shape[0] !== Tq || ix.w.shape[1] !== ix.q.shape[1])
    throw new RangeError(`options.indexer.w: expected shape [${Tq}, ${ix.q.shape[1]}], got ${fmtShape(ix.w.shape)}`);
  checkK(options.topK, 'options.topK', Tq);
  if (ix.q.shape[0] !== Tq) throw new RangeError(`options.indexer.q: ${ix.q.shape[0]} rows for ${Tq} queries`);
  if (ix.k.shape[0] !== Tk) throw new RangeError(`options.indexer.k: ${ix.k.shape[0]} rows for ${Tk} keys`);
  const jag = { qOffsets: options.qOffsets, kOffsets: options.kOffsets };
  const scores = indexerScores(ix.q, ix.k, ix.w, jag);
  const chosen = topK(scores, options.topK);
  const { output } = sparseAttention(q, k, v, chosen.indices, { ...jag, scale: options.scale });
  return { output, indices: chosen.indices, values: chosen.values };
}
