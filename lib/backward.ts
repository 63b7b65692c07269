// Backward ops (SPEC §9): gradients of maskedAttention, sparseAttention and indexerScores, on the
// device of their inputs. Arguments are checked as the forward ops check theirs, and the outputs are
// allocated only after every check.
import { native } from './native';
import { DTYPE_CODE, Tensor, emptyTensors } from './tensor';
import { checkTensor, FLOAT_DTYPES } from './layout';
import { checkAttentionCall, MaskedAttentionOptions } from './attention';
import { checkAttention, checkIndexer, checkPair, checkScale, SparseLayout } from './sparse';

export interface AttentionGradients { dq: Tensor; dk: Tensor; dv: Tensor }

export interface MaskedAttentionBackwardInputs {
  q: Tensor; k: Tensor; v: Tensor;
  /** dLoss / dOutput, the forward output's shape and dtype. */
  dOutput: Tensor;
  /** The forward's output and lse (`returnLse: true`): required for softmax, unused for silu. */
  output?: Tensor; lse?: Tensor;
}

function checkLike(t: unknown, name: string, like: Tensor, shape: readonly number[]): Tensor {
  checkTensor(t, name, shape.length, FLOAT_DTYPES);
  const x = t as Tensor;
  if (x.dtype !== like.dtype) throw new TypeError(`${name}: dtype ${x.dtype} differs from q's ${like.dtype}`);
  if (x.device !== like.device) throw new TypeError(`${name}: on ${x.device} but q is on ${like.device}`);
  if (x.shape.some((d, i) => d !== shape[i])) throw new RangeError(`${name}: expected shape [${shape.join(', ')}], got [${x.shape.join(', ')}]`);
  return x;
}

function checkLse(t: unknown, like: Tensor, rows: number, heads: number): Tensor {
  checkTensor(t, 'lse', 2, ['float32']);
  const x = t as Tensor;
  if (x.device !== like.device) throw new TypeError(`lse: on ${x.device} but q is on ${like.device}`);
  if (x.shape[0] !== rows || x.shape[1] !== heads) throw new RangeError(`lse: expected shape [${rows}, ${heads}], got [${x.shape.join(', ')}]`);
  return x;
}

function inputsObject(inputs: unknown, names: string): Record<string, unknown> {
  if (inputs === null || typeof inputs !== 'object') throw new TypeError(`inputs: expected { ${names} }`);
  return inputs as Record<string, unknown>;
}

/**
 * Gradients of maskedAttention under the same options: `dq` has q's shape and dtype, `dk` k's, `dv`
 * v's; with GQA a kv head's gradient sums over its query heads; a key no query may see gets 0.
 */
export async function maskedAttentionBackward(inputs: MaskedAttentionBackwardInputs, options: MaskedAttentionOptions): Promise<AttentionGradients> {
  const x = inputsObject(inputs, 'q, k, v, dOutput, output?, lse?');
  const { q, k, v } = x as unknown as MaskedAttentionBackwardInputs;
  const call = checkAttentionCall(q, k, v, { ...options, returnLse: false });
  const dOutput = checkLike(x.dOutput, 'dOutput', q, [call.tq, call.heads, call.valueDim]);
  let output: Tensor | undefined, lse: Tensor | undefined;
  if (call.normalize === 'softmax') {
    if (x.output === undefined) throw new TypeError("inputs.output: required for normalize 'softmax' (the forward's output)");
    if (x.lse === undefined) throw new TypeError("inputs.lse: required for normalize 'softmax' (the forward's lse, from returnLse: true)");
    output = checkLike(x.output, 'output', q, [call.tq, call.heads, call.valueDim]);
    lse = checkLse(x.lse, q, call.tq, call.heads);
  }
  const [dq, dk, dv] = emptyTensors([[q.dtype, [...q.shape]], [k.dtype, [...k.shape]], [v.dtype, [...v.shape]]], q.device);
  try {
    await native().maskedAttentionBackward({ ...call.args, q: q.storage(), k: k.storage(), v: v.storage(), out: output?.storage(),
      lse: lse?.storage(), dOut: dOutput.storage(), dq: dq.storage(), dk: dk.storage(), dv: dv.storage() });
  } catch (e) {
    for (const t of [dq, dk, dv]) t.dispose();
    throw e;
  }
  return { dq, dk, dv };
}

export interface SparseAttentionBackwardInputs {
  q: Tensor; k: Tensor; v: Tensor;
  /** int32 [Nq, K], as given to sparseAttention. */
  indices: Tensor;
  /** The forward's output and lse (`returnLse: true`). */
  output: Tensor; lse: Tensor;
  dOutput: Tensor;
}

/** Gradients of sparseAttention: dk / dv full-size, scatter-added (a duplicated index counts per occurrence). */
export async function sparseAttentionBackward(inputs: SparseAttentionBackwardInputs, options: SparseLayout & { scale?: number }): Promise<AttentionGradients> {
  const x = inputsObject(inputs, 'q, k, v, indices, output, lse, dOutput');
  const { q, k, v } = x as unknown as SparseAttentionBackwardInputs;
  const s = checkAttention(q, k, v);
  const { q: qo, k: ko } = checkPair(options, s.nq, s.tk);
  const indices = checkTensor(x.indices, 'indices', 2, ['int32']);
  if (indices.shape[0] !== s.nq) throw new RangeError(`indices: expected ${s.nq} rows (one per query), got ${indices.shape[0]}`);
  const topk = indices.shape[1];
  if (topk < 1) throw new RangeError('indices: expected at least one column');
  const scale = checkScale((options as { scale?: number }).scale, s.headDim);
  if (x.output === undefined) throw new TypeError("inputs.output: required (the forward's output)");
  if (x.lse === undefined) throw new TypeError("inputs.lse: required (the forward's lse, from returnLse: true)");
  const output = checkLike(x.output, 'output', q, [s.nq, s.heads, s.valueDim]);
  const lse = checkLse(x.lse, q, s.nq, s.heads);
  const dOutput = checkLike(x.dOutput, 'dOutput', q, [s.nq, s.heads, s.valueDim]);
  // Captured at the call (SPEC §11): the indices are read asynchronously, so every tensor is held
  // and the offsets copied until the op has run.
  const qOffsets = qo.offsets.slice(), kOffsets = ko.offsets.slice();
  const held = [q, k, v, output, lse, dOutput, indices].map((t) => t.hold());
  const [qs, ks, vs, os, ls, ds, is] = held;
  try {
    const hostIdx = new Int32Array(await is.read(), 0, s.nq * topk);
    const [dq, dk, dv] = emptyTensors([[q.dtype, [...q.shape]], [k.dtype, [...k.shape]], [v.dtype, [...v.shape]]], q.device);
    try {
      await native().sparseAttentionBackward({ device: q.device, dtype: DTYPE_CODE[q.dtype], ...s, topK: topk, scale,
        qOffsets, kOffsets, q: qs, k: ks, v: vs, out: os, lse: ls, indices: hostIdx, dOut: ds, dq: dq.storage(), dk: dk.storage(), dv: dv.storage() });
    } catch (e) {
      for (const t of [dq, dk, dv]) t.dispose();
      throw e;
    }
    return { dq, dk, dv };
  } finally {
    for (const h of held) h.dispose();
  }
}

/**
 * Gradients of indexerScores: dScores is float32 [Nq, Lmax] (the scores' shape; entries past a row's
 * key count are ignored) → dqI, dkI, dw with the shapes and dtype of qI, kI, w. relu'(0) = 0.
 */
export async function indexerScoresBackward(inputs: { qI: Tensor; kI: Tensor; w: Tensor; dScores: Tensor }, options: SparseLayout): Promise<{ dqI: Tensor; dkI: Tensor; dw: Tensor }> {
  const x = inputsObject(inputs, 'qI, kI, w, dScores');
  const { qI, kI, w } = x as unknown as { qI: Tensor; kI: Tensor; w: Tensor };
  const { nq, hi, di, tk } = checkIndexer(qI, kI, w, ['qI', 'kI', 'w']);
  const { q: qo, k: ko } = checkPair(options, nq, tk);
  const dScores = checkTensor(x.dScores, 'dScores', 2, ['float32']);
  if (dScores.device !== qI.device) throw new TypeError(`dScores: on ${dScores.device} but qI is on ${qI.device}`);
  if (dScores.shape[0] !== nq || dScores.shape[1] !== ko.maxLength)
    throw new RangeError(`dScores: expected shape [${nq}, ${ko.maxLength}] (the scores'), got [${dScores.shape.join(', ')}]`);
  const [dqI, dkI, dw] = emptyTensors([[qI.dtype, [...qI.shape]], [kI.dtype, [...kI.shape]], [w.dtype, [...w.shape]]], qI.device);
  try {
    await native().indexerScoresBackward({ device: qI.device, dtype: DTYPE_CODE[qI.dtype], nq, tk, indexerHeads: hi, indexerDim: di,
      qOffsets: qo.offsets, kOffsets: ko.offsets, qI: qI.storage(), kI: kI.storage(), w: w.storage(), dScores: dScores.storage(),
      dqI: dqI.storage(), dkI: dkI.storage(), dw: dw.storage() });
  } catch (e) {
    for (const t of [dqI, dkI, dw]) t.dispose();
    throw e;
  }
  return { dqI, dkI, dw };
}
