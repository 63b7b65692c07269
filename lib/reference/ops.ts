// The oracle of every op (SPEC §3, §5): plain loops, float64 accumulation, no tiling, no tricks.
import { MaskRule, PresetName, refAllowed, resolveRule } from './rules';

export interface RefTensor { data: ArrayLike<number>; shape: readonly number[] }
export interface RefOut { data: Float64Array; shape: number[] }
export interface RefLayout { offsets: Int32Array; segments?: Int32Array; roles?: Uint8Array }

function checkShape(t: RefTensor, name: string, rank: number) {
  if (t.shape.length !== rank) throw new RangeError(`${name}: expected rank ${rank}`);
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.data.length !== n) throw new RangeError(`${name}: data length ${t.data.length} != ${n}`);
}

function checkOffsets(offsets: Int32Array, total: number, name: string) {
  if (!(offsets instanceof Int32Array) || offsets[0] !== 0 || offsets[offsets.length - 1] !== total)
    throw new RangeError(`${name}: expected offsets from 0 to ${total}`);
  for (let b = 0; b + 1 < offsets.length; b++) if (offsets[b + 1] < offsets[b]) throw new RangeError(`${name}: must be nondecreasing`);
}

export interface MaskedAttentionOptions {
  q: RefLayout;
  kv?: RefLayout;
  rule?: MaskRule | PresetName;
  scale?: number;
  normalize?: 'softmax' | 'silu';
  siluDivisor?: number;
  returnLse?: boolean;
}

export function maskedAttention(q: RefTensor, k: RefTensor, v: RefTensor, options: MaskedAttentionOptions): { output: RefOut; lse?: RefOut } {
  checkShape(q, 'q', 3); checkShape(k, 'k', 3); checkShape(v, 'v', 3);
  const [Tq, H, D] = q.shape, [Tk, Hkv] = k.shape, Dv = v.shape[2];
  if (H % Hkv !== 0) throw new RangeError('k: kv heads must divide heads');
  const ql = options.q, kl = options.kv ?? options.q;
  checkOffsets(ql.offsets, Tq, 'options.q.offsets');
  checkOffsets(kl.offsets, Tk, 'options.kv.offsets');
  if (ql.offsets.length !== kl.offsets.length) throw new RangeError('options.kv: batch differs');
  const rule = resolveRule(options.rule);
  const scale = options.scale ?? 1 / Math.sqrt(D);
  const silu = options.normalize === 'silu';
  const B = ql.offsets.length - 1;
  let maxLk = 0;
  for (let b = 0; b < B; b++) maxLk = Math.max(maxLk, kl.offsets[b + 1] - kl.offsets[b]);
  const divisor = options.siluDivisor ?? Math.max(1, maxLk);
  const out = new Float64Array(Tq * H * Dv);
  const lse = new Float64Array(Tq * H);
  for (let b = 0; b < B; b++) {
    const q0 = ql.offsets[b], Lq = ql.offsets[b + 1] - q0;
    const k0 = kl.offsets[b], Lk = kl.offsets[b + 1] - k0;
    for (let i = 0; i < Lq; i++) {
      const qi = q0 + i;
      const posQ = i + (Lk - Lq);
      const rq = ql.roles ? ql.roles[qi] : 0, sq = ql.segments ? ql.segments[qi] : 0;
      const allowed: number[] = [];
      for (let j = 0; j < Lk; j++) {
        const kj = k0 + j;
        if (refAllowed(rule, rq, kl.roles ? kl.roles[kj] : 0, sq, kl.segments ? kl.segments[kj] : 0, posQ, j)) allowed.push(kj);
      }
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / (H / Hkv));
        const scores = allowed.map((kj) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += q.data[(qi * H + h) * D + d] * k.data[(kj * Hkv + g) * D + d];
          return s * scale;
        });
        const o = (qi * H + h) * Dv;
        if (silu) {
          scores.forEach((s, n) => {
            const wgt = s / (1 + Math.exp(-s)) / divisor;
            for (let c = 0; c < Dv; c++) out[o + c] += wgt * v.data[(allowed[n] * Hkv + g) * Dv + c];
          });
          lse[qi * H + h] = -Infinity;
          continue;
        }
        if (scores.length === 0) { lse[qi * H + h] = -Infinity; continue; }
        const m = Math.max(...scores);
        const p = scores.map((s) => Math.exp(s - m));
        const l = p.reduce((a, x) => a + x, 0);
        p.forEach((pn, n) => {
          for (let c = 0; c < Dv; c++) out[o + c] += (pn / l) * v.data[(allowed[n] * Hkv + g) * Dv + c];
        });
        lse[qi * H + h] = m + Math.log(l);
      }
    }
  }
  const result: { output: RefOut; lse?: RefOut } = { output: { data: out, shape: [Tq, H, Dv] } };
  if (options.returnLse && !silu) result.lse = { data: lse, shape: [Tq, H] };
  return result;
}

// Batch entry of each query row.
function entryOf(qOffsets: Int32Array, i: number): number {
  let b = 0;
  while (qOffsets[b + 1] <= i) b++;
  return b;
}

export function indexerScores(qI: RefTensor, kI: RefTensor, w: RefTensor, { qOffsets, kOffsets }: { qOffsets: Int32Array; kOffsets: Int32Array }): RefOut {
  checkShape(qI, 'qI', 3); checkShape(kI, 'kI', 2); checkShape(w, 'w', 2);
  const [Nq, Hi, Di] = qI.shape, Tk = kI.shape[0];
  checkOffsets(qOffsets, Nq, 'qOffsets');
  checkOffsets(kOffsets, Tk, 'kOffsets');
  let Lmax = 0;
  for (let b = 0; b + 1 < kOffsets.length; b++) Lmax = Math.max(Lmax, kOffsets[b + 1] - kOffsets[b]);
  const out = new Float64Array(Nq * Lmax).fill(-Infinity);
  for (let i = 0; i < Nq; i++) {
    const b = entryOf(qOffsets, i);
    const start = kOffsets[b], L = kOffsets[b + 1] - start;
    for (let j = 0; j < L; j++) {
      let s = 0;
      for (let h = 0; h < Hi; h++) {
        let dot = 0;
        for (let d = 0; d < Di; d++) dot += qI.data[(i * Hi + h) * Di + d] * kI.data[(start + j) * Di + d];
        s += w.data[i * Hi + h] * Math.max(0, dot);
      }
      out[i * Lmax + j] = s;
    }
  }
  return { data: out, shape: [Nq, Lmax] };
}

export function topK(scores: RefTensor, k: number, options: { lengths?: Int32Array } = {}): { indices: { data: Int32Array; shape: number[] }; values: RefOut } {
  checkShape(scores, 'scores', 2);
  const [N, M] = scores.shape;
  const indices = new Int32Array(N * k).fill(-1);
  const values = new Float64Array(N * k).fill(-Infinity);
  for (let r = 0; r < N; r++) {
    const len = options.lengths ? Math.min(M, options.lengths[r]) : M;
    const cand: number[] = [];
    for (let j = 0; j < len; j++) {
      const x = scores.data[r * M + j];
      if (!Number.isNaN(x) && x !== -Infinity) cand.push(j);
    }
    cand.sort((a, b) => {
      const xa = scores.data[r * M + a], xb = scores.data[r * M + b];
      return xa !== xb ? xb - xa : a - b;
    });
    for (let n = 0; n < Math.min(k, cand.length); n++) {
      indices[r * k + n] = cand[n];
      values[r * k + n] = scores.data[r * M + cand[n]];
    }
  }
  return { indices: { data: indices, shape: [N, k] }, values: { data: values, shape: [N, k] } };
}

export function sparseAttention(q: RefTensor, k: RefTensor, v: RefTensor, indices: RefTensor,
  options: { qOffsets: Int32Array; kOffsets: Int32Array; scale?: number; returnLse?: boolean }): { output: RefOut; lse?: RefOut } {
  checkShape(q, 'q', 3); checkShape(k, 'k', 3); checkShape(v, 'v', 3); checkShape(indices, 'indices', 2);
  const [Nq, H, D] = q.shape, Hkv = k.shape[1], Dv = v.shape[2], K = indices.shape[1];
  checkOffsets(options.qOffsets, Nq, 'qOffsets');
  checkOffsets(options.kOffsets, k.shape[0], 'kOffsets');
  const scale = options.scale ?? 1 / Math.sqrt(D);
  const out = new Float64Array(Nq * H * Dv), lse = new Float64Array(Nq * H);
  for (let i = 0; i < Nq; i++) {
    const b = entryOf(options.qOffsets, i);
    const start = options.kOffsets[b], L = options.kOffsets[b + 1] - start;
    const keys: number[] = [];
    for (let n = 0; n < K; n++) {
      const j = indices.data[i * K + n];
      if (j < -1 || j >= L) throw new RangeError(`indices: entry [${i}, ${n}] = ${j} is outside [-1, ${L})`);
      if (j >= 0) keys.push(start + j);
    }
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / Hkv));
      if (keys.length === 0) { lse[i * H + h] = -Infinity; continue; }
      const s = keys.map((kj) => {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q.data[(i * H + h) * D + d] * k.data[(kj * Hkv + g) * D + d];
        return dot * scale;
      });
      const m = Math.max(...s);
      const p = s.map((x) => Math.exp(x - m));
      const l = p.reduce((a, x) => a + x, 0);
      p.forEach((pn, n) => {
        for (let c = 0; c < Dv; c++) out[(i * H + h) * Dv + c] += (pn / l) * v.data[(keys[n] * Hkv + g) * Dv + c];
      });
      lse[i * H + h] = m + Math.log(l);
    }
  }
  const result: { output: RefOut; lse?: RefOut } = { output: { data: out, shape: [Nq, H, Dv] } };
  if (options.returnLse) result.lse = { data: lse, shape: [Nq, H] };
  return result;
}

export function indexedCrossAttention(q: RefTensor, k: RefTensor, v: RefTensor,
  options: { indexer: { q: RefTensor; k: RefTensor; w: RefTensor }; topK: number; qOffsets: Int32Array; kOffsets: Int32Array; scale?: number }) {
  const scores = indexerScores(options.indexer.q, options.indexer.k, options.indexer.w, options);
  const chosen = topK(scores, options.topK);
  const { output } = sparseAttention(q, k, v, chosen.indices, options);
  return { output, indices: chosen.indices };
}
