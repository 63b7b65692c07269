// The benchmark peer: onnxruntime-node (CPU execution provider) running dense masked attention on
// padded batches, and a dense sgemm anchor for the machine's practical peak. Models are built in
// memory with ./onnx-builder (no .onnx files, no protobuf dependency).
//
// Layout conversion: our kernels take packed jagged batches (`[T, H, D]` plus `offsets`, SPEC §2);
// the peer takes padded `[B, H, Lmax, D]` with an additive `[B, 1, Lmax, Lmax]` float32 mask.
import * as ort from 'onnxruntime-node';
import { attr, encodeModel, floatScalar } from './onnx-builder';

/** Additive mask value for a disallowed (query, key) pair. Large but finite, so rows stay finite. */
export const MASKED = -1e30;

/**
 * Additive mask value written at key 0 of a row that has no allowed key at all (padded query rows,
 * empty sequences, or a real query the rule gives no key). It dominates MASKED by 1e10 in the
 * softmax, so such a row attends key 0 alone and stays finite (key 0 is a padding zero when the
 * sequence is empty). In float32, `score + EMPTY_ROW` rounds to EMPTY_ROW for any |score| < ~1e12,
 * so the row is exactly one-hot. `unpadOutput(..., mask)` recognises this marker and writes zeros for
 * such rows, which is what SPEC §3 demands ("a query row with no allowed key outputs zeros").
 */
export const EMPTY_ROW = -1e20;

export interface DenseAttentionPeer {
  /** q, k: `[B, H, L, D]`; v: `[B, H, L, Dv]`; mask: `[B, 1, L, L]` additive. Returns `[B, H, L, Dv]`. */
  run(q: Float32Array, k: Float32Array, v: Float32Array, mask: Float32Array, B: number, L: number): Promise<Float32Array>;
  /** Cross attention: q `[B, H, Lq, D]`, k / v `[B, H, Lk, D|Dv]`, mask `[B, 1, Lq, Lk]`. */
  runCross(q: Float32Array, k: Float32Array, v: Float32Array, mask: Float32Array, B: number, Lq: number, Lk: number): Promise<Float32Array>;
  release(): Promise<void>;
  readonly heads: number;
  readonly headDim: number;
  readonly valueDim: number;
}

// The sgemm anchor runs with spinning off: on this project's 2-vCPU Zen 5 machine (2026-11-29, ten
// 300 ms windows each, 1024^3), with onnxruntime's default spinning it read 255 266 260 192 242 87 86 86
// 200 274 GFLOP/s, without it 259 257 256 251 258 253 253 254 253 248 (one thread alone: 63-128, so
// some of the swing is the machine's). The attention peers keep the default: off, their many small
// ops took 115 instead of 86-95 ms for cross 64 x 4 x 5,000.
function sessionOptions(threads: number, spinning = true): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    ...(spinning ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
  };
}

function checkPositiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name}: expected a positive integer, got ${v}`);
}

function checkLength(name: string, a: Float32Array, expected: number, shape: string): void {
  if (!(a instanceof Float32Array)) throw new TypeError(`${name}: expected a Float32Array`);
  if (a.length !== expected) throw new RangeError(`${name}: expected ${expected} floats for ${shape}, got ${a.length}`);
}

/**
 * onnxruntime session computing `out = MatMul(Softmax(MatMul(Q, Transpose(K)) * scale + mask, axis=-1), V)`
 * with `scale = 1/sqrt(headDim)`, B and L symbolic, H / D / Dv fixed.
 */
export async function createDenseMaskedAttention(opts: {
  heads: number;
  headDim: number;
  valueDim?: number;
  threads: number;
  scale?: number;
}): Promise<DenseAttentionPeer> {
  const H = opts.heads, D = opts.headDim, Dv = opts.valueDim ?? opts.headDim;
  checkPositiveInt('heads', H);
  checkPositiveInt('headDim', D);
  checkPositiveInt('valueDim', Dv);
  checkPositiveInt('threads', opts.threads);
  const scale = opts.scale ?? 1 / Math.sqrt(D);

  const bytes = encodeModel({
    graph: {
      name: 'dense_masked_attention',
      inputs: [
        { name: 'Q', dims: ['B', H, 'Lq', D] },
        { name: 'K', dims: ['B', H, 'Lk', D] },
        { name: 'V', dims: ['B', H, 'Lk', Dv] },
        { name: 'mask', dims: ['B', 1, 'Lq', 'Lk'] },
      ],
      outputs: [{ name: 'out', dims: ['B', H, 'Lq', Dv] }],
      initializers: [floatScalar('scale', scale)],
      nodes: [
        { op: 'Transpose', inputs: ['K'], outputs: ['Kt'], attrs: [attr.ints('perm', [0, 1, 3, 2])] },
        { op: 'MatMul', inputs: ['Q', 'Kt'], outputs: ['scores'] },
        { op: 'Mul', inputs: ['scores', 'scale'], outputs: ['scaled'] },
        { op: 'Add', inputs: ['scaled', 'mask'], outputs: ['masked'] },
        { op: 'Softmax', inputs: ['masked'], outputs: ['probs'], attrs: [attr.int('axis', -1)] },
        { op: 'MatMul', inputs: ['probs', 'V'], outputs: ['out'] },
      ],
    },
  });
  const session = await ort.InferenceSession.create(bytes, sessionOptions(opts.threads));
  async function runCross(q: Float32Array, k: Float32Array, v: Float32Array, mask: Float32Array, B: number, Lq: number, Lk: number): Promise<Float32Array> {
    checkPositiveInt('B', B);
    checkPositiveInt('Lq', Lq);
    checkPositiveInt('Lk', Lk);
    checkLength('q', q, B * H * Lq * D, `[${B}, ${H}, ${Lq}, ${D}]`);
    checkLength('k', k, B * H * Lk * D, `[${B}, ${H}, ${Lk}, ${D}]`);
    checkLength('v', v, B * H * Lk * Dv, `[${B}, ${H}, ${Lk}, ${Dv}]`);
    checkLength('mask', mask, B * Lq * Lk, `[${B}, 1, ${Lq}, ${Lk}]`);
    const result = await session.run({
      Q: new ort.Tensor('float32', q, [B, H, Lq, D]),
      K: new ort.Tensor('float32', k, [B, H, Lk, D]),
      V: new ort.Tensor('float32', v, [B, H, Lk, Dv]),
      mask: new ort.Tensor('float32', mask, [B, 1, Lq, Lk]),
    });
    return result.out.data as Float32Array;
  }

  return {
    heads: H,
    headDim: D,
    valueDim: Dv,
    run(q, k, v, mask, B, L) {
      return runCross(q, k, v, mask, B, L, L);
    },
    runCross,
    release: () => session.release(),
  };
}

function sequenceLengths(offsets: Int32Array, Lmax: number): number[] {
  if (!(offsets instanceof Int32Array) || offsets.length < 1 || offsets[0] !== 0)
    throw new RangeError('offsets: expected an Int32Array of length B+1 starting at 0');
  const lens: number[] = [];
  for (let b = 0; b + 1 < offsets.length; b++) {
    const len = offsets[b + 1] - offsets[b];
    if (len < 0) throw new RangeError(`offsets: must be nondecreasing, got offsets[${b}]=${offsets[b]} > offsets[${b + 1}]=${offsets[b + 1]}`);
    if (len > Lmax) throw new RangeError(`offsets: sequence ${b} has ${len} tokens, more than Lmax = ${Lmax}`);
    lens.push(len);
  }
  return lens;
}

/** Packed `[T, heads, dim]` → padded `[B, heads, Lmax, dim]`, zeros past each sequence's end. */
export function padPacked(x: Float32Array, offsets: Int32Array, heads: number, dim: number, Lmax: number): Float32Array {
  const lens = sequenceLengths(offsets, Lmax);
  const B = lens.length, T = offsets[B];
  checkLength('x', x, T * heads * dim, `[${T}, ${heads}, ${dim}]`);
  const out = new Float32Array(B * heads * Lmax * dim);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < lens[b]; i++) {
      const src = (offsets[b] + i) * heads * dim;
      for (let h = 0; h < heads; h++) {
        const dst = ((b * heads + h) * Lmax + i) * dim;
        out.set(x.subarray(src + h * dim, src + (h + 1) * dim), dst);
      }
    }
  return out;
}

/**
 * Padded `[B, heads, Lmax, dim]` → packed `[T, heads, dim]` (padding rows dropped). With the mask
 * that produced `y` (from `buildAdditiveMask`), rows that had no allowed key are written as zeros
 * (SPEC §3) instead of the peer's finite key-0 fallback.
 */
export function unpadOutput(y: Float32Array, offsets: Int32Array, heads: number, dim: number, Lmax: number, mask?: Float32Array): Float32Array {
  const lens = sequenceLengths(offsets, Lmax);
  const B = lens.length, T = offsets[B];
  checkLength('y', y, B * heads * Lmax * dim, `[${B}, ${heads}, ${Lmax}, ${dim}]`);
  if (mask) checkLength('mask', mask, B * Lmax * Lmax, `[${B}, 1, ${Lmax}, ${Lmax}]`);
  const out = new Float32Array(T * heads * dim);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < lens[b]; i++) {
      if (mask && mask[(b * Lmax + i) * Lmax] === Math.fround(EMPTY_ROW)) continue; // no allowed key → zeros
      const dst = (offsets[b] + i) * heads * dim;
      for (let h = 0; h < heads; h++) {
        const src = ((b * heads + h) * Lmax + i) * dim;
        out.set(y.subarray(src, src + dim), dst + h * dim);
      }
    }
  return out;
}

/**
 * Additive mask `[B, 1, Lmax, Lmax]`: 0 where `allowed(b, i, j)` (i, j positions inside sequence b,
 * both < its length), MASKED elsewhere (padding keys, padding queries, disallowed pairs). A row with
 * no allowed key — every padded query row, and any real query the rule leaves without keys — gets
 * EMPTY_ROW at key 0 so that onnxruntime's softmax returns a finite one-hot row (see EMPTY_ROW).
 */
export function buildAdditiveMask(B: number, Lmax: number, offsets: Int32Array, allowed: (b: number, i: number, j: number) => boolean): Float32Array {
  checkPositiveInt('Lmax', Lmax);
  const lens = sequenceLengths(offsets, Lmax);
  if (lens.length !== B) throw new RangeError(`offsets: expected length B+1 = ${B + 1}, got ${offsets.length}`);
  const mask = new Float32Array(B * Lmax * Lmax).fill(MASKED);
  for (let b = 0; b < B; b++)
    for (let i = 0; i < Lmax; i++) {
      const row = (b * Lmax + i) * Lmax;
      let any = false;
      if (i < lens[b])
        for (let j = 0; j < lens[b]; j++)
          if (allowed(b, i, j)) { mask[row + j] = 0; any = true; }
      if (!any) mask[row] = EMPTY_ROW;
    }
  return mask;
}

/** Deterministic uniform [-1, 1) floats (xorshift32). */
export function randomFloats(n: number, seed = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    a[i] = s / 2147483648 - 1;
  }
  return a;
}

/** onnxruntime MatMul `[m, k] × [k, n]` on preallocated random inputs: the practical sgemm peak. */
export async function createGemmAnchor(opts: { m: number; n: number; k: number; threads: number }): Promise<{
  run(): Promise<void>;
  flops: number;
  release(): Promise<void>;
}> {
  const { m, n, k, threads } = opts;
  for (const [name, v] of Object.entries({ m, n, k, threads })) checkPositiveInt(name, v);
  const bytes = encodeModel({
    graph: {
      name: 'sgemm_anchor',
      inputs: [{ name: 'A', dims: [m, k] }, { name: 'B', dims: [k, n] }],
      outputs: [{ name: 'C', dims: [m, n] }],
      nodes: [{ op: 'MatMul', inputs: ['A', 'B'], outputs: ['C'] }],
    },
  });
  const session = await ort.InferenceSession.create(bytes, sessionOptions(threads, false));
  const feeds = {
    A: new ort.Tensor('float32', randomFloats(m * k, 11), [m, k]),
    B: new ort.Tensor('float32', randomFloats(k * n, 12), [k, n]),
  };
  return {
    flops: 2 * m * n * k,
    async run() {
      await session.run(feeds);
    },
    release: () => session.release(),
  };
}

/** The practical sgemm peak of this machine in GFLOP/s: onnxruntime MatMul 1024^3, median of >= 0.5 s. */
export async function measureSgemmPeak(threads: number): Promise<number> {
  const anchor = await createGemmAnchor({ m: 1024, n: 1024, k: 1024, threads });
  // Warmed for a while first, then the best of three 300 ms medians: the anchor is the practical peak,
  // and a window can still fall low when another process takes a core.
  let bestMs = Infinity;
  for (let i = 0; i < 3; i++) bestMs = Math.min(bestMs, (await timeIt(() => anchor.run(), { minMs: 300, warmupMs: i === 0 ? 600 : 0 })).medianMs);
  await anchor.release();
  return anchor.flops / (bestMs * 1e6);
}

/** Median wall time of `fn` after `warmup` calls (and at least `warmupMs` of them), over at least `minRuns` runs and `minMs` total. */
export async function timeIt(
  fn: () => Promise<unknown>,
  { minMs = 300, minRuns = 3, warmup = 1, warmupMs = 0 }: { minMs?: number; minRuns?: number; warmup?: number; warmupMs?: number } = {},
): Promise<{ medianMs: number; runs: number }> {
  const warmStart = performance.now();
  for (let i = 0; i < warmup || performance.now() - warmStart < warmupMs; i++) await fn();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < minRuns || performance.now() - start < minMs) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const mid = times.length >> 1;
  const medianMs = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
  return { medianMs, runs: times.length };
}
