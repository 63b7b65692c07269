// maskedAttention (SPEC §3) on the native CPU or CUDA backend, chosen by the inputs' device.
import { codes, native } from './native';
import { DTYPE_CODE, DType, Tensor, emptyTensors } from './tensor';
import { encodeRule, MaskRule, PresetName } from './rules';
import { checkHeads, checkLayout, checkPositiveNumber, checkTensor, FLOAT_DTYPES, Layout } from './layout';

export interface MaskedAttentionOptions {
  q: Layout;
  kv?: Layout;
  rule?: MaskRule | PresetName;
  scale?: number;
  normalize?: 'softmax' | 'silu';
  siluDivisor?: number;
  returnLse?: boolean;
}

/** `output` has q's dtype; `lse` (float32 [Tq, H]) is there when `returnLse: true` was passed. */
export interface AttentionResult<D extends DType = DType> {
  output: Tensor<D>;
  lse?: Tensor<'float32'>;
}

export function maskedAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: MaskedAttentionOptions & { returnLse: true }):
  Promise<{ output: Tensor<D>; lse: Tensor<'float32'> }>;
export function maskedAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: MaskedAttentionOptions): Promise<AttentionResult<D>>;
export async function maskedAttention(q: Tensor, k: Tensor, v: Tensor, options: MaskedAttentionOptions): Promise<AttentionResult> {
  checkTensor(q, 'q', 3, FLOAT_DTYPES);
  checkTensor(k, 'k', 3, FLOAT_DTYPES);
  checkTensor(v, 'v', 3, FLOAT_DTYPES);
  if (k.dtype !== q.dtype) throw new TypeError(`k: dtype ${k.dtype} differs from q's ${q.dtype}`);
  if (v.dtype !== q.dtype) throw new TypeError(`v: dtype ${v.dtype} differs from q's ${q.dtype}`);
  if (k.device !== q.device) throw new TypeError(`k: on ${k.device} but q is on ${q.device}`);
  if (v.device !== q.device) throw new TypeError(`v: on ${v.device} but q is on ${q.device}`);
  const [tq, heads, headDim] = q.shape;
  const [tk, kvHeads, keyDim] = k.shape;
  const [tv, vHeads, valueDim] = v.shape;
  if (heads < 1 || headDim < 1 || kvHeads < 1 || valueDim < 1)
    throw new RangeError(`q/k/v: heads and head sizes must be >= 1, got q [${q.shape}], k [${k.shape}], v [${v.shape}]`);
  if (keyDim !== headDim) throw new RangeError(`k: head size ${keyDim} differs from q's ${headDim}`);
  if (tv !== tk || vHeads !== kvHeads) throw new RangeError(`v: shape [${v.shape}] must match k's tokens and heads [${tk}, ${kvHeads}, Dv]`);
  if (heads % kvHeads !== 0) throw new RangeError(`k: kv heads ${kvHeads} must divide q's heads ${heads}`);
  checkHeads(q.device, heads, kvHeads, headDim, valueDim);

  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { q: layout, ... }');
  const qLayout = checkLayout(options.q, tq, 'options.q');
  const kvLayout = options.kv === undefined ? undefined : checkLayout(options.kv, tk, 'options.kv');
  if (!kvLayout && tk !== tq) throw new RangeError(`k: self-attention needs as many keys as queries (${tq}), got ${tk}; pass options.kv for cross attention`);
  if (kvLayout && kvLayout.batch !== qLayout.batch)
    throw new RangeError(`options.kv: batch ${kvLayout.batch} differs from options.q's ${qLayout.batch}`);
  const kv = kvLayout ?? qLayout;
  const rule = encodeRule(options.rule ?? 'causal', 'options.rule');
  const scale = options.scale === undefined ? 1 / Math.sqrt(headDim) : options.scale;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`options.scale: expected a finite number, got ${String(scale)}`);
  const normalize = options.normalize ?? 'softmax';
  if (normalize !== 'softmax' && normalize !== 'silu') throw new RangeError(`options.normalize: expected 'softmax' or 'silu', got ${String(normalize)}`);
  const siluDivisor = options.siluDivisor === undefined ? Math.max(1, kv.maxLength) : checkPositiveNumber(options.siluDivisor, 'options.siluDivisor');
  if (options.returnLse && normalize !== 'softmax') throw new RangeError("options.returnLse: only defined for normalize 'softmax'");

  const outs = emptyTensors(options.returnLse ? [[q.dtype, [tq, heads, valueDim]], ['float32', [tq, heads]]] : [[q.dtype, [tq, heads, valueDim]]], q.device);
  const output = outs[0], lse = outs[1] as Tensor<'float32'> | undefined;
  try {
    await native().maskedAttention({
      device: q.device,
      dtype: DTYPE_CODE[q.dtype],
      q: q.storage(), k: k.storage(), v: v.storage(), out: output.storage(), lse: lse?.storage(),
      batch: qLayout.batch, tq, tk, heads, kvHeads, headDim, valueDim,
      qOffsets: qLayout.offsets, qSegments: qLayout.segments, qRoles: qLayout.roles,
      kvOffsets: kv.offsets, kvSegments: kv.segments, kvRoles: kv.roles,
      rule, scale, normalize: codes().normalize[normalize], siluInvDivisor: 1 / siluDivisor,
    });
  } catch (e) {
    output.dispose();
    lse?.dispose();
    throw e;
  }
  return lse ? { output, lse } : { output };
}
