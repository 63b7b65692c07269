// Gradients of the SPEC §3 / §5 ops (SPEC §9), the oracle of the backward parity tests. Written
// plainly and on purpose independent of the forward code and of the kernels' FlashAttention-2
// shortcuts: probabilities are recomputed here from the scores (not read from `lse`), and the
// softmax row term Σ_j P_ij dP_ij is summed directly (not taken as dO · O), so a wrong `lse` or
// `output` handed to a native backend shows up as a mismatch. Float64 throughout.
import { refAllowed, resolveRule } from './rules';
import { checkJagged, checkLayout, checkQkv, checkScale, checkTensor, dot, entryOfRows, MaskedAttentionOptions, RefOut, RefTensor, SparseAttentionOptions, JaggedOffsets } from './ops';

export interface AttentionGrads { dq: RefOut; dk: RefOut; dv: RefOut }

/** Inputs of maskedAttentionBackward; output / lse are accepted for symmetry with the native API and ignored. */
export interface AttentionBackwardInputs { q: RefTensor; k: RefTensor; v: RefTensor; dOutput: RefTensor; output?: RefTensor; lse?: RefTensor }

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * Accumulates the gradients of one (query row, head) attending the listed key rows (repeats count
 * once per occurrence). `mode` softmax: P = softmax(scores); silu: P = silu(scores) / divisor.
 */
function rowBackward(args: {
  q: RefTensor; k: RefTensor; v: RefTensor; dOut: RefTensor; qi: number; h: number; g: number; keys: readonly number[];
  H: number; Hkv: number; D: number; Dv: number; scale: number; mode: 'softmax' | 'silu'; divisor: number;
  dq: Float64Array; dk: Float64Array; dv: Float64Array;
}): void {
  const { q, k, v, dOut, qi, h, g, keys, H, Hkv, D, Dv, scale, mode, divisor, dq, dk, dv } = args;
  const n = keys.length;
  if (n === 0) return;
  const qBase = (qi * H + h) * D, oBase = (qi * H + h) * Dv;
  const s = new Float64Array(n);
  for (let x = 0; x < n; x++) s[x] = scale * dot(q.data, qBase, k.data, (keys[x] * Hkv + g) * D, D);
  // dP_x = dO · v_x
  const dP = new Float64Array(n);
  for (let x = 0; x < n; x++) dP[x] = dot(dOut.data, oBase, v.data, (keys[x] * Hkv + g) * Dv, Dv);
  const p = new Float64Array(n);     // the weights of the forward
  const dS = new Float64Array(n);    // d loss / d score
  if (mode === 'softmax') {
    let m = -Infinity;
    for (let x = 0; x < n; x++) m = Math.max(m, s[x]);
    let l = 0;
    for (let x = 0; x < n; x++) { p[x] = Math.exp(s[x] - m); l += p[x]; }
    for (let x = 0; x < n; x++) p[x] /= l;
    let rowTerm = 0;
    for (let x = 0; x < n; x++) rowTerm += p[x] * dP[x];
    for (let x = 0; x < n; x++) dS[x] = p[x] * (dP[x] - rowTerm);
  } else {
    for (let x = 0; x < n; x++) {
      const sg = sigmoid(s[x]);
      p[x] = s[x] * sg / divisor;
      dS[x] = dP[x] * sg * (1 + s[x] * (1 - sg)) / divisor; // silu'(x) = σ(x)(1 + x(1 - σ(x)))
    }
  }
  for (let x = 0; x < n; x++) {
    const kBase = (keys[x] * Hkv + g) * D, vBase = (keys[x] * Hkv + g) * Dv;
    for (let c = 0; c < Dv; c++) dv[vBase + c] += p[x] * dOut.data[oBase + c];
    const ds = scale * dS[x];
    for (let d = 0; d < D; d++) {
      dq[qBase + d] += ds * k.data[kBase + d];
      dk[kBase + d] += ds * q.data[qBase + d];
    }
  }
}

function checkDOutput(dOut: RefTensor, Tq: number, H: number, Dv: number): void {
  checkTensor(dOut, 'dOutput', 3);
  if (dOut.shape[0] !== Tq || dOut.shape[1] !== H || dOut.shape[2] !== Dv)
    throw new RangeError(`dOutput: expected shape [${Tq}, ${H}, ${Dv}] (the output's), got [${dOut.shape.join(', ')}]`);
}

/** Gradients of reference.maskedAttention under the same options: { dq, dk, dv } in float64. */
export function maskedAttentionBackward(inputs: AttentionBackwardInputs, options: MaskedAttentionOptions): AttentionGrads {
  if (inputs === null || typeof inputs !== 'object') throw new TypeError('inputs: expected { q, k, v, dOutput, output?, lse? }');
  const { q, k, v, dOutput } = inputs;
  const { Tq, H, D, Tk, Hkv, Dv } = checkQkv(q, k, v);
  checkDOutput(dOutput, Tq, H, Dv);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { q: layout, ... }');
  const ql = checkLayout(options.q, 'options.q', Tq);
  if (options.kv === undefined && Tk !== Tq) throw new RangeError(`k: self-attention needs as many keys as queries (${Tq}), got ${Tk}; pass options.kv for cross attention`);
  const kl = options.kv !== undefined ? checkLayout(options.kv, 'options.kv', Tk) : ql;
  if (kl.batch !== ql.batch) throw new RangeError(`options.kv: batch ${kl.batch} differs from options.q's ${ql.batch}`);
  const rule = resolveRule(options.rule);
  const scale = checkScale(options.scale, D);
  const mode = options.normalize ?? 'softmax';
  if (mode !== 'softmax' && mode !== 'silu') throw new RangeError(`options.normalize: expected 'softmax' or 'silu', got ${String(mode)}`);
  let longest = 0;
  for (let b = 0; b < kl.batch; b++) longest = Math.max(longest, kl.offsets[b + 1] - kl.offsets[b]);
  const divisor = options.siluDivisor ?? Math.max(1, longest);
  if (typeof divisor !== 'number' || !(Number.isFinite(divisor) && divisor > 0)) throw new RangeError(`options.siluDivisor: expected a finite number > 0, got ${String(divisor)}`);

  const dq = new Float64Array(Tq * H * D), dk = new Float64Array(Tk * Hkv * D), dv = new Float64Array(Tk * Hkv * Dv);
  const perKv = H / Hkv;
  for (let b = 0; b < ql.batch; b++) {
    const q0 = ql.offsets[b], Lq = ql.offsets[b + 1] - q0;
    const k0 = kl.offsets[b], Lk = kl.offsets[b + 1] - k0;
    for (let i = 0; i < Lq; i++) {
      const qi = q0 + i, posQ = i + Lk - Lq;
      const keys: number[] = [];
      for (let j = 0; j < Lk; j++)
        if (refAllowed(rule, ql.roles[qi], kl.roles[k0 + j], ql.segments[qi], kl.segments[k0 + j], posQ, j)) keys.push(k0 + j);
      for (let h = 0; h < H; h++)
        rowBackward({ q, k, v, dOut: dOutput, qi, h, g: Math.floor(h / perKv), keys, H, Hkv, D, Dv, scale, mode, divisor, dq, dk, dv });
    }
  }
  return { dq: { data: dq, shape: [Tq, H, D] }, dk: { data: dk, shape: [Tk, Hkv, D] }, dv: { data: dv, shape: [Tk, Hkv, Dv] } };
}

export interface SparseBackwardInputs extends AttentionBackwardInputs { indices: RefTensor }

/**
 * Gradients of reference.sparseAttention: dk / dv full-size [Tk, Hkv, ·], scatter-added (a
 * duplicated index counts once per occurrence, -1 adds nothing).
 */
export function sparseAttentionBackward(inputs: SparseBackwardInputs, options: SparseAttentionOptions): AttentionGrads {
  if (inputs === null || typeof inputs !== 'object') throw new TypeError('inputs: expected { q, k, v, indices, dOutput, output?, lse? }');
  const { q, k, v, indices, dOutput } = inputs;
  const { Tq: Nq, H, D, Tk, Hkv, Dv } = checkQkv(q, k, v);
  checkDOutput(dOutput, Nq, H, Dv);
  checkTensor(indices, 'indices', 2);
  checkJagged(options, Nq, Tk);
  const K = indices.shape[1];
  if (indices.shape[0] !== Nq) throw new RangeError(`indices: expected ${Nq} rows (one per query), got ${indices.shape[0]}`);
  const scale = checkScale(options.scale, D);
  const entry = entryOfRows(options.qOffsets, Nq);
  const dq = new Float64Array(Nq * H * D), dk = new Float64Array(Tk * Hkv * D), dv = new Float64Array(Tk * Hkv * Dv);
  const perKv = H / Hkv;
  for (let i = 0; i < Nq; i++) {
    const start = options.kOffsets[entry[i]], L = options.kOffsets[entry[i] + 1] - start;
    const keys: number[] = [];
    for (let n = 0; n < K; n++) {
      const j = indices.data[i * K + n];
      if (!Number.isInteger(j) || j < -1 || j >= L) throw new RangeError(`indices: entry [${i}, ${n}] = ${j} is outside [-1, ${L})`);
      if (j >= 0) keys.push(start + j);
    }
    for (let h = 0; h < H; h++)
      rowBackward({ q, k, v, dOut: dOutput, qi: i, h, g: Math.floor(h / perKv), keys, H, Hkv, D, Dv, scale, mode: 'softmax', divisor: 1, dq, dk, dv });
  }
  return { dq: { data: dq, shape: [Nq, H, D] }, dk: { data: dk, shape: [Tk, Hkv, D] }, dv: { data: dv, shape: [Tk, Hkv, Dv] } };
}

/**
 * Gradients of reference.indexerScores: dScores [Nq, ≥ Lmax] (entries past a row's key count are
 * ignored) → dqI [Nq, Hi, Di], dkI [Tk, Di], dw [Nq, Hi]; relu'(0) = 0.
 */
export function indexerScoresBackward(inputs: { qI: RefTensor; kI: RefTensor; w: RefTensor; dScores: RefTensor }, options: JaggedOffsets): { dqI: RefOut; dkI: RefOut; dw: RefOut } {
  if (inputs === null || typeof inputs !== 'object') throw new TypeError('inputs: expected { qI, kI, w, dScores }');
  const { qI, kI, w, dScores } = inputs;
  checkTensor(qI, 'qI', 3); checkTensor(kI, 'kI', 2); checkTensor(w, 'w', 2); checkTensor(dScores, 'dScores', 2);
  const [Nq, Hi, Di] = qI.shape, [Tk, Dk] = kI.shape;
  if (Dk !== Di) throw new RangeError(`kI: dim ${Dk} differs from qI's ${Di}`);
  if (w.shape[0] !== Nq || w.shape[1] !== Hi) throw new RangeError(`w: expected shape [${Nq}, ${Hi}], got [${w.shape.join(', ')}]`);
  const { B } = checkJagged(options, Nq, Tk);
  let Lmax = 0;
  for (let b = 0; b < B; b++) Lmax = Math.max(Lmax, options.kOffsets[b + 1] - options.kOffsets[b]);
  if (dScores.shape[0] !== Nq || dScores.shape[1] !== Lmax) throw new RangeError(`dScores: expected shape [${Nq}, ${Lmax}] (the scores'), got [${dScores.shape.join(', ')}]`);
  const entry = entryOfRows(options.qOffsets, Nq);
  const dqI = new Float64Array(Nq * Hi * Di), dkI = new Float64Array(Tk * Di), dw = new Float64Array(Nq * Hi);
  for (let i = 0; i < Nq; i++) {
    const start = options.kOffsets[entry[i]], L = options.kOffsets[entry[i] + 1] - start;
    for (let j = 0; j < L; j++) {
      const g = dScores.data[i * Lmax + j];
      for (let h = 0; h < Hi; h++) {
        const a = dot(qI.data, (i * Hi + h) * Di, kI.data, (start + j) * Di, Di);
        if (!(a > 0)) continue; // relu'(a) = 0 for a <= 0, and relu(a) = 0 adds nothing to dw
        dw[i * Hi + h] += g * a;
        const da = g * w.data[i * Hi + h];
        for (let d = 0; d < Di; d++) {
          dqI[(i * Hi + h) * Di + d] += da * kI.data[(start + j) * Di + d];
          dkI[(start + j) * Di + d] += da * qI.data[(i * Hi + h) * Di + d];
        }
      }
    }
  }
  return { dqI: { data: dqI, shape: [Nq, Hi, Di] }, dkI: { data: dkI, shape: [Tk, Di] }, dw: { data: dw, shape: [Nq, Hi] } };
}
