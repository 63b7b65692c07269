// Mask plans (SPEC §3 "Plans"): the per-tile work of a pair of layouts under a rule, computed once
// on the plan's device and reused by every maskedAttention call with the same layouts and rule, as
// FlexAttention's BlockMask is built once and shared by the layers.
import { native, NativeMaskPlan } from './native';
import { checkDevice, DTYPE_CODE, DType, Device } from './tensor';
import { encodeRule, MaskRule, PresetName } from './rules';
import { checkLayout, CheckedLayout, FLOAT_DTYPES, Layout } from './layout';

export interface MaskPlanLayouts {
  q: Layout;
  kv?: Layout;
  rule?: MaskRule | PresetName;
}

/**
 * Where the plan lives and what it is first built for. A plan holds one geometry per pair of tile
 * sizes the kernels ask for (they depend on the dtype and head sizes on CUDA); the one for
 * `dtype` / `headDim` / `valueDim` is built now, others on first use. Defaults: bfloat16, 64, headDim.
 */
export interface MaskPlanOptions {
  device?: Device;
  dtype?: DType;
  headDim?: number;
  valueDim?: number;
}

/** One built geometry: tile sizes and how the layouts' tiles were classified and scheduled. */
export interface MaskPlanStats {
  blockM: number;
  blockN: number;
  queryTiles: number;
  fullTiles: number;
  partialTiles: number;
  runs: number;
  workItems: number;
  /** Query tiles computed split-KV (a sequence of <= 16 queries over many key tiles). */
  splitTiles: number;
  splitItems: number;
}

export class MaskPlan {
  readonly device: Device;
  readonly batch: number;
  /** Token counts of the query and key layouts. */
  readonly queries: number;
  readonly keys: number;
  /** @internal */ readonly q: CheckedLayout;
  /** @internal */ readonly kv: CheckedLayout | undefined;
  /** @internal */ readonly rule: Uint8Array;
  #native: NativeMaskPlan | undefined;

  /** @internal use maskPlan() */
  constructor(handle: NativeMaskPlan, device: Device, q: CheckedLayout, kv: CheckedLayout | undefined, rule: Uint8Array) {
    this.#native = handle;
    this.device = device;
    this.q = q;
    this.kv = kv;
    this.rule = rule;
    this.batch = q.batch;
    this.queries = q.offsets[q.batch];
    this.keys = (kv ?? q).offsets[q.batch];
  }

  get disposed(): boolean {
    return this.#native === undefined;
  }

  /** @internal the native plan, or Error('plan is disposed'). */
  handle(): NativeMaskPlan {
    if (!this.#native) throw new Error('plan is disposed');
    return this.#native;
  }

  /** The geometries built so far (one per tile-size pair a call has needed). */
  stats(): MaskPlanStats[] {
    return this.handle().stats() as unknown as MaskPlanStats[];
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

const copyLayout = (l: CheckedLayout): CheckedLayout => ({
  offsets: l.offsets.slice(), segments: l.segments?.slice(), roles: l.roles?.slice(), batch: l.batch, maxLength: l.maxLength,
});

function headSize(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new TypeError(`${name}: expected an integer`);
  if (value < 1 || value > 256) throw new RangeError(`${name}: expected a head size in 1..256, got ${value}`);
  return value;
}

/** Builds a plan of `layouts` on `options.device` (default 'cpu'). Layouts are copied: later changes to the arrays do not reach it. */
export async function maskPlan(layouts: MaskPlanLayouts, options: MaskPlanOptions = {}): Promise<MaskPlan> {
  if (layouts === null || typeof layouts !== 'object') throw new TypeError('layouts: expected { q, kv?, rule? }');
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { device?, dtype?, headDim?, valueDim? }');
  const device = checkDevice(options.device ?? 'cpu', 'options.device');
  const q = checkLayout(layouts.q, (layouts.q as Layout | undefined)?.offsets?.at?.(-1) ?? 0, 'layouts.q');
  const kv = layouts.kv === undefined ? undefined : checkLayout(layouts.kv, (layouts.kv as Layout).offsets?.at?.(-1) ?? 0, 'layouts.kv');
  if (kv && kv.batch !== q.batch) throw new RangeError(`layouts.kv: batch ${kv.batch} differs from layouts.q's ${q.batch}`);
  const rule = encodeRule(layouts.rule ?? 'causal', 'layouts.rule');
  const dtype = options.dtype ?? 'bfloat16';
  if (!FLOAT_DTYPES.includes(dtype)) throw new TypeError(`options.dtype: expected ${FLOAT_DTYPES.join(' | ')}, got ${String(dtype)}`);
  const headDim = headSize(options.headDim, 'options.headDim', 64);
  const valueDim = headSize(options.valueDim, 'options.valueDim', headDim);
  const qc = copyLayout(q), kvc = kv ? copyLayout(kv) : undefined;
  const handle = new (native().MaskPlan)({
    device, batch: q.batch, tq: qc.offsets[q.batch], tk: (kvc ?? qc).offsets[q.batch],
    qOffsets: qc.offsets, qSegments: qc.segments, qRoles: qc.roles,
    kvOffsets: kvc?.offsets, kvSegments: kvc?.segments, kvRoles: kvc?.roles, rule,
  });
  try {
    await handle.prepare({ dtype: DTYPE_CODE[dtype], headDim, valueDim });
  } catch (e) {
    handle.dispose();
    throw e;
  }
  return new MaskPlan(handle, device, qc, kvc, rule);
}

const sameArray = (a: ArrayLike<number> | undefined, b: ArrayLike<number> | undefined): boolean => {
  if (a === undefined || b === undefined) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
};

/** Whether `l` (validated) is the plan's layout: the same arrays' contents (absent = all zero). */
export function sameLayout(l: CheckedLayout, planned: CheckedLayout): boolean {
  const zeros = (n: number, arr: ArrayLike<number> | undefined) => arr ?? new Uint8Array(n);
  const n = planned.offsets[planned.batch];
  return sameArray(l.offsets, planned.offsets) && sameArray(zeros(n, l.segments), zeros(n, planned.segments)) &&
    sameArray(zeros(n, l.roles), zeros(n, planned.roles));
}

export { sameArray };
