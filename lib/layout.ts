// Jagged (packed) batch layouts, SPEC §2, and the argument checks every op shares (SPEC §6).
import { Tensor, DType, Device } from './tensor';
import { codes, limits } from './native';

export interface Layout {
  offsets: Int32Array;
  segments?: Int32Array;
  roles?: Uint8Array;
}

export interface CheckedLayout {
  offsets: Int32Array;
  segments?: Int32Array;
  roles?: Uint8Array;
  batch: number;
  maxLength: number;
}

/** Validates offsets / segments / roles for `tokens` tokens; `name` prefixes every message. */
export function checkLayout(layout: unknown, tokens: number, name: string): CheckedLayout {
  if (layout === null || typeof layout !== 'object') throw new TypeError(`${name}: expected { offsets, segments?, roles? }`);
  const { offsets, segments, roles } = layout as Layout;
  if (!(offsets instanceof Int32Array)) throw new TypeError(`${name}.offsets: expected an Int32Array`);
  if (offsets.length < 1) throw new RangeError(`${name}.offsets: expected batch + 1 >= 1 entries, got 0`);
  if (offsets[0] !== 0) throw new RangeError(`${name}.offsets: offsets[0] must be 0, got ${offsets[0]}`);
  const batch = offsets.length - 1;
  let maxLength = 0;
  for (let b = 0; b < batch; b++) {
    const len = offsets[b + 1] - offsets[b];
    if (len < 0) throw new RangeError(`${name}.offsets: must be nondecreasing, but offsets[${b + 1}] = ${offsets[b + 1]} < offsets[${b}] = ${offsets[b]}`);
    maxLength = Math.max(maxLength, len);
  }
  if (offsets[batch] !== tokens)
    throw new RangeError(`${name}.offsets: the last offset must equal the token count ${tokens}, got ${offsets[batch]}`);
  if (segments !== undefined) {
    if (!(segments instanceof Int32Array)) throw new TypeError(`${name}.segments: expected an Int32Array`);
    if (segments.length !== tokens) throw new RangeError(`${name}.segments: expected ${tokens} entries (one per token), got ${segments.length}`);
    for (let b = 0; b < batch; b++)
      for (let t = offsets[b] + 1; t < offsets[b + 1]; t++)
        if (segments[t] < segments[t - 1])
          throw new RangeError(`${name}.segments: must be nondecreasing inside a sequence, but segments[${t}] = ${segments[t]} < segments[${t - 1}] = ${segments[t - 1]}`);
  }
  if (roles !== undefined) {
    if (!(roles instanceof Uint8Array)) throw new TypeError(`${name}.roles: expected a Uint8Array`);
    if (roles.length !== tokens) throw new RangeError(`${name}.roles: expected ${tokens} entries (one per token), got ${roles.length}`);
    const roleCount = codes().roleCount;
    for (let t = 0; t < tokens; t++)
      if (roles[t] >= roleCount) {
        const known = Object.entries(codes().role).sort((a, b) => a[1] - b[1]).map(([n, c]) => `${c} (${n})`);
        throw new RangeError(`${name}.roles: roles are ${known.slice(0, -1).join(', ')} or ${known[known.length - 1]}, got ${roles[t]} at ${t}`);
      }
  }
  return { offsets, segments, roles, batch, maxLength };
}

/** A live Tensor of one of `dtypes` and the given rank. */
export function checkTensor(value: unknown, name: string, rank: number, dtypes: readonly DType[]): Tensor {
  if (!(value instanceof Tensor)) throw new TypeError(`${name}: expected a Tensor`);
  if (value.disposed) throw new Error('tensor is disposed');
  if (!dtypes.includes(value.dtype)) throw new TypeError(`${name}: expected dtype ${dtypes.join(' | ')}, got ${value.dtype}`);
  if (value.shape.length !== rank)
    throw new RangeError(`${name}: expected rank ${rank}, got shape [${value.shape.join(', ')}]`);
  return value;
}

export function checkPositiveNumber(value: unknown, name: string): number {
  if (typeof value !== 'number') throw new TypeError(`${name}: expected a number`);
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name}: expected a finite number > 0, got ${value}`);
  return value;
}

export const FLOAT_DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16'];

/** Head counts and sizes against the addon's limits (every backend; CUDA supports fewer sizes). */
export function checkHeads(device: Device, heads: number, kvHeads: number, headDim: number, valueDim: number): void {
  const lim = limits();
  if (heads > lim.maxHeads || kvHeads > lim.maxHeads) throw new RangeError(`q/k: at most ${lim.maxHeads} heads are supported, got ${heads} / ${kvHeads}`);
  if (headDim > lim.maxHeadDim || valueDim > lim.maxHeadDim)
    throw new RangeError(`q/v: head sizes up to ${lim.maxHeadDim} are supported, got D = ${headDim}, Dv = ${valueDim}`);
  const sizes = lim.cuda.headSizes;
  if (device === 'cuda' && (!sizes.includes(headDim) || !sizes.includes(valueDim)))
    throw new RangeError(`q/v: the CUDA kernels support head sizes ${sizes.join(', ')}; got D = ${headDim}, Dv = ${valueDim}`);
}
