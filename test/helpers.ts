// Shared test machinery: a seeded PRNG, random jagged layouts shaped like the papers' sequences,
// random mask rules, and the SPEC §7 comparison.
import { backends, DType, Device, maskedAttention, reference, tensor, Tensor } from '../lib/index';
import type { MaskRule, PresetName, RoleName, SegRelation } from '../lib/index';

export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0 || 1; }
  next(): number { // xorshift32 in [0, 1)
    let x = this.s;
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    this.s = x;
    return x / 4294967296;
  }
  int(lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)); }
  pick<T>(xs: readonly T[]): T { return xs[Math.floor(this.next() * xs.length)]; }
  bool(p = 0.5): boolean { return this.next() < p; }
  floats(n: number, amp = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (this.next() * 2 - 1) * amp;
    return a;
  }
}

export interface Seq { segments: number[]; roles: number[] }
export interface PackedLayout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array; lengths: number[] }

export function pack(seqs: Seq[]): PackedLayout {
  const offsets = new Int32Array(seqs.length + 1);
  seqs.forEach((s, i) => { offsets[i + 1] = offsets[i] + s.roles.length; });
  const T = offsets[seqs.length];
  const segments = new Int32Array(T), roles = new Uint8Array(T);
  seqs.forEach((s, i) => { segments.set(s.segments, offsets[i]); roles.set(s.roles, offsets[i]); });
  return { offsets, segments, roles, lengths: seqs.map((s) => s.roles.length) };
}

const ITEM = 0, MEMORY = 1, TARGET = 2;

/** One sequence in the shape a preset is meant for (SPEC §3 "Layouts the presets are meant for"). */
export function randomSequence(rng: Rng, kind: PresetName | 'mixed', maxItems: number): Seq {
  const segs: number[] = [], roles: number[] = [];
  const push = (seg: number, role: number, n: number) => { for (let i = 0; i < n; i++) { segs.push(seg); roles.push(role); } };
  const nSeg = rng.int(1, 4);
  const mem = rng.int(1, 8);
  const items = () => rng.int(0, maxItems);
  switch (kind) {
    case 'persrec': // S0 M0 S1 M1 ... Sn [targets]
      for (let j = 0; j < nSeg; j++) { push(j, ITEM, items()); if (j < nSeg - 1 || rng.bool()) push(j, MEMORY, mem); }
      push(nSeg - 1, TARGET, rng.int(0, 3));
      break;
    case 'rec2pm-reference': // S0 Q S1 Q ... Sn Q
      for (let j = 0; j < nSeg; j++) { push(j, ITEM, items()); push(j, MEMORY, mem); }
      break;
    case 'rec2pm-update': // [memory; S_h; Q] blocks, one segment each
      for (let j = 0; j < nSeg; j++) { push(j, MEMORY, rng.bool(0.8) ? mem : 0); push(j, ITEM, items()); push(j, MEMORY, mem); }
      if (rng.bool(0.3)) push(nSeg - 1, TARGET, rng.int(1, 3));
      break;
    default: // any roles in any order, segments nondecreasing
      for (let j = 0; j < nSeg; j++) {
        const n = rng.int(0, maxItems);
        for (let i = 0; i < n; i++) { segs.push(j); roles.push(rng.pick([ITEM, ITEM, ITEM, MEMORY, TARGET])); }
      }
  }
  return { segments: segs, roles };
}

/** Lengths that hit the interesting cases: empty, 1, around tile edges, long. */
export function randomLength(rng: Rng, max: number): number {
  return rng.pick([0, 1, rng.int(2, 15), 16, 31, 32, 33, 63, 64, 65, rng.int(1, max), rng.int(1, max)]);
}

/**
 * A packed batch of `batch` sequences shaped for `kind`; a quarter of them instead get a length at a
 * tile edge (or 0 / 1) with spread segments and random roles. `minLengths[b]` pads sequence b with
 * items up to that length (cross attention with Lq <= Lk).
 */
export function randomLayout(rng: Rng, kind: PresetName | 'mixed', batch: number, maxItems: number, minLengths?: number[]): PackedLayout {
  const seqs = [];
  for (let b = 0; b < batch; b++) {
    let s = randomSequence(rng, kind, maxItems);
    if (rng.bool(0.25)) { // lengths exactly at tile edges, or empty / single
      const n = randomLength(rng, 100);
      s = { segments: Array.from({ length: n }, (_, i) => Math.floor((i * 3) / Math.max(1, n))), roles: Array.from({ length: n }, () => rng.pick([0, 0, 1, 2])) };
    }
    if (minLengths && s.roles.length < minLengths[b]) {
      const extra = minLengths[b] - s.roles.length;
      const last = s.segments.length ? s.segments[s.segments.length - 1] : 0;
      s = { segments: s.segments.concat(Array(extra).fill(last)), roles: s.roles.concat(Array(extra).fill(0)) };
    }
    seqs.push(s);
  }
  return pack(seqs);
}

const SEGS: SegRelation[] = ['none', 'self', 'same', 'earlier', 'same-or-earlier', 'any'];
const ROLES: RoleName[] = ['item', 'memory', 'target'];

export function randomRule(rng: Rng): MaskRule {
  const rule: MaskRule = {};
  for (const rq of ROLES) {
    if (rng.bool(0.1)) continue;
    const row: Partial<Record<RoleName, { seg: SegRelation; causal: boolean }>> = {};
    for (const rk of ROLES) if (rng.bool(0.85)) row[rk] = { seg: rng.pick(SEGS), causal: rng.bool() };
    rule[rq] = row;
  }
  return rule;
}

export const TOLERANCE: Record<string, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1.6e-2 };

/** SPEC §7: max |out - ref| <= tol * (1 + max |ref|). Returns a message, or '' when within. */
export function compare(out: ArrayLike<number>, ref: ArrayLike<number>, dtype: string, what: string): string {
  if (out.length !== ref.length) return `${what}: length ${out.length} != reference ${ref.length}`;
  let maxRef = 0, maxErr = 0, at = -1;
  for (let i = 0; i < ref.length; i++) {
    const r = ref[i], o = out[i];
    if (r === -Infinity || o === -Infinity) {
      if (r !== o) return `${what}[${i}]: got ${o}, reference ${r}`;
      continue;
    }
    if (!Number.isFinite(o)) return `${what}[${i}]: got ${o}, reference ${r}`;
    maxRef = Math.max(maxRef, Math.abs(r));
    const e = Math.abs(o - r);
    if (e > maxErr) { maxErr = e; at = i; }
  }
  const tol = TOLERANCE[dtype] * (1 + maxRef);
  return maxErr <= tol ? '' : `${what}: max error ${maxErr} at ${at} (got ${out[at]}, reference ${ref[at]}) exceeds ${tol}`;
}

/** Devices to run parity on here: the CPU always, CUDA (real or emulated) when available. */
export function parityDevices(): Device[] {
  return backends().cuda.available ? ['cpu', 'cuda'] : ['cpu'];
}

export function cudaSkipReason(): string | undefined {
  const c = backends().cuda;
  return c.available ? undefined : c.reason ?? 'CUDA unavailable';
}

/** A tensor of `dtype` on `device` plus the exact float values it holds (after rounding). */
export async function makeInput(values: Float32Array, shape: number[], dtype: DType, device: Device): Promise<{ t: Tensor; exact: Float32Array }> {
  const t = tensor(values, shape, { dtype, device });
  return { t, exact: await t.float32() };
}

// One CPU attention call on random inputs of `c`'s shape against the reference: output, and lse for
// softmax. The CPU kernel suites that pick each ISA path themselves share it.
export interface CpuAttentionCase { rule: PresetName | MaskRule; qSeqs: Seq[]; kSeqs?: Seq[]; heads: number; kvHeads: number; D: number; Dv: number; silu?: boolean }

export async function checkCpuAttention(t: import('ava').ExecutionContext, c: CpuAttentionCase, dtype: DType, rng: Rng, what: string) {
  const ql = pack(c.qSeqs), kl = c.kSeqs ? pack(c.kSeqs) : ql;
  const B = c.qSeqs.length, tq = ql.offsets[B], tk = kl.offsets[B];
  const q = await makeInput(rng.floats(tq * c.heads * c.D, 2), [tq, c.heads, c.D], dtype, 'cpu');
  const k = await makeInput(rng.floats(tk * c.kvHeads * c.D, 2), [tk, c.kvHeads, c.D], dtype, 'cpu');
  const v = await makeInput(rng.floats(tk * c.kvHeads * c.Dv), [tk, c.kvHeads, c.Dv], dtype, 'cpu');
  const lay = (l: typeof ql) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });
  const options = { q: lay(ql), kv: c.kSeqs ? lay(kl) : undefined, rule: c.rule, normalize: c.silu ? ('silu' as const) : ('softmax' as const), returnLse: !c.silu };
  const got = await maskedAttention(q.t, k.t, v.t, options);
  const ref = reference.maskedAttention({ data: q.exact, shape: [tq, c.heads, c.D] }, { data: k.exact, shape: [tk, c.kvHeads, c.D] },
    { data: v.exact, shape: [tk, c.kvHeads, c.Dv] }, options);
  const shape = `${what}: B=${B} Tq=${tq} Tk=${tk} H=${c.heads}/${c.kvHeads} D=${c.D} Dv=${c.Dv} rule=${JSON.stringify(c.rule)}`;
  t.is(compare(await got.output.float32(), ref.output.data, dtype, 'output'), '', shape);
  if (!c.silu) t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', shape);
  for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
}

/** Non-finite outputs (NaN, +-Inf from Inf in V) must be exactly the reference's; the finite rest
 * is then compared within SPEC §7 tolerance (the non-finite positions are zeroed in both). */
export function nonFiniteMismatch(out: Float32Array, ref: Float64Array): string {
  for (let i = 0; i < ref.length; i++) {
    if (Number.isFinite(ref[i]) && Number.isFinite(out[i])) continue;
    if (!Object.is(ref[i], out[i]) && !(Number.isNaN(ref[i]) && Number.isNaN(out[i]))) return `[${i}]: got ${out[i]}, reference ${ref[i]}`;
    out[i] = 0;
    ref[i] = 0;
  }
  return '';
}
