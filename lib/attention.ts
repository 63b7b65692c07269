// maskedAttention (SPEC §3) on the native CPU or CUDA backend, chosen by the inputs' device.
import { codes, native } from './native';
import { DTYPE_CODE, DType, Tensor, emptyTensors } from './tensor';
import { encodeRule, MaskRule, PresetName } from './rules';
import { checkHeads, checkLayout, checkPositiveNumber, checkTensor, CheckedLayout, FLOAT_DTYPES, Layout } from './layout';
import { MaskPlan, sameArray, sameLayout } from './mask-plan';

export interface MaskedAttentionOptions {
  /** The query layout; optional with `plan` (then checked against the plan's when given). */
  q?: Layout;
  kv?: Layout;
  rule?: MaskRule | PresetName;
  scale?: number;
  normalize?: 'softmax' | 'silu';
  siluDivisor?: number;
  returnLse?: boolean;
  /** A maskPlan() of the layouts and rule, reused instead of building one per call. */
  plan?: MaskPlan;
}

/** `output` has q's dtype; `lse` (float32 [Tq, H]) is there when `returnLse: true` was passed. */
export interface AttentionResult<D extends DType = DType> {
  output: Tensor<D>;
  lse?: Tensor<'float32'>;
}

/** The validated arguments of a maskedAttention call, as the addon takes them (tensors not included). */
export interface AttentionCall {
  args: Record<string, unknown>;
  tq: number; tk: number; heads: number; kvHeads: number; headDim: number; valueDim: number;
  normalize: 'softmax' | 'silu';
}

/** Checks q / k / v and the options of maskedAttention (and of its backward); throws TypeError / RangeError. */
export function checkAttentionCall(q: Tensor, k: Tensor, v: Tensor, options: MaskedAttentionOptions): AttentionCall {
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
  const plan = options.plan;
  let qLayout: CheckedLayout, kvLayout: CheckedLayout | undefined, rule: Uint8Array;
  if (plan !== undefined) {
    ({ qLayout, kvLayout, rule } = checkPlan(plan, options, q.device, tq, tk));
  } else {
    qLayout = checkLayout(options.q, tq, 'options.q');
    kvLayout = options.kv === undefined ? undefined : checkLayout(options.kv, tk, 'options.kv');
    rule = encodeRule(options.rule ?? 'causal', 'options.rule');
  }
  if (!kvLayout && tk !== tq) throw new RangeError(`k: self-attention needs as many keys as queries (${tq}), got ${tk}; pass options.kv for cross attention`);
  if (kvLayout && kvLayout.batch !== qLayout.batch)
    throw new RangeError(`options.kv: batch ${kvLayout.batch} differs from options.q's ${qLayout.batch}`);
  const kv = kvLayout ?? qLayout;
  const scale = options.scale === undefined ? 1 / Math.sqrt(headDim) : options.scale;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`options.scale: expected a finite number, got ${String(scale)}`);
  const normalize = options.normalize ?? 'softmax';
  if (normalize !== 'softmax' && normalize !== 'silu') throw new RangeError(`options.normalize: expected 'softmax' or 'silu', got ${String(normalize)}`);
  const siluDivisor = options.siluDivisor === undefined ? Math.max(1, kv.maxLength) : checkPositiveNumber(options.siluDivisor, 'options.siluDivisor');
  if (options.returnLse && normalize !== 'softmax') throw new RangeError("options.returnLse: only defined for normalize 'softmax'");
  return {
    args: {
      device: q.device,
      dtype: DTYPE_CODE[q.dtype],
      batch: qLayout.batch, tq, tk, heads, kvHeads, headDim, valueDim,
      // A plan carries the layouts and rule (the addon reads them from it); otherwise the call's own.
      ...(plan ? { plan: plan.handle() } : {
        qOffsets: qLayout.offsets, qSegments: qLayout.segments, qRoles: qLayout.roles,
        kvOffsets: kv.offsets, kvSegments: kv.segments, kvRoles: kv.roles, rule,
      }),
      scale, normalize: codes().normalize[normalize], siluInvDivisor: 1 / siluDivisor,
    },
    tq, tk, heads, kvHeads, headDim, valueDim, normalize,
  };
}

export function maskedAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: MaskedAttentionOptions & { returnLse: true }):
  Promise<{ output: Tensor<D>; lse: Tensor<'float32'> }>;
export function maskedAttention<D extends DType>(q: Tensor<D>, k: Tensor<D>, v: Tensor<D>, options: MaskedAttentionOptions): Promise<AttentionResult<D>>;
export async function maskedAttention(q: Tensor, k: Tensor, v: Tensor, options: MaskedAttentionOptions): Promise<AttentionResult> {
  const call = checkAttentionCall(q, k, v, options);
  const { tq, heads, valueDim } = call;
  const outs = emptyTensors(options.returnLse ? [[q.dtype, [tq, heads, valueDim]], ['float32', [tq, heads]]] : [[q.dtype, [tq, heads, valueDim]]], q.device);
  const output = outs[0], lse = outs[1] as Tensor<'float32'> | undefined;
  try {
    await native().maskedAttention({ ...call.args, q: q.storage(), k: k.storage(), v: v.storage(), out: output.storage(), lse: lse?.storage() });
  } catch (e) {
    output.dispose();
    lse?.dispose();
    throw e;
  }
  return lse ? { output, lse } : { output };
}

/**
 * A plan used in place of q / kv / rule (SPEC §3): live, on the tensors' device, built for these
 * token counts; any layout or rule also given must be the plan's (SPEC §6: a mismatch is named).
 */
function checkPlan(plan: unknown, options: MaskedAttentionOptions, device: string, tq: number, tk: number) {
  if (!(plan instanceof MaskPlan)) throw new TypeError('options.plan: expected a MaskPlan from maskPlan()');
  plan.handle();  // Error('plan is disposed')
  if (plan.device !== device) throw new TypeError(`options.plan: built for ${plan.device}, but the tensors are on ${device}`);
  if (plan.queries !== tq || plan.keys !== tk)
    throw new RangeError(`options.plan: built for ${plan.queries} queries and ${plan.keys} keys, got q with ${tq} tokens and k with ${tk}`);
  if (options.q !== undefined && !sameLayout(checkLayout(options.q, tq, 'options.q'), plan.q))
    throw new RangeError("options.q: differs from the layout options.plan was built for");
  if (options.kv !== undefined && !sameLayout(checkLayout(options.kv, tk, 'options.kv'), plan.kv ?? plan.q))
    throw new RangeError("options.kv: differs from the layout options.plan was built for");
  if (options.rule !== undefined && !sameArray(encodeRule(options.rule, 'options.rule'), plan.rule))
    throw new RangeError('options.rule: differs from the rule options.plan was built for');
  return { qLayout: plan.q, kvLayout: plan.kv, rule: plan.rule };
}
