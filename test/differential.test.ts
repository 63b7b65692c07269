// Differential tests (SPEC §3, §5, §7): seeded random valid inputs on every backend present, compared
// with the float64 reference, with NaN, ±Infinity and huge values placed in allowed and in masked
// positions of q, k, v and of the indexer's inputs.
//
// Comparison rule (compareIeee): where the reference is NaN the backend must be NaN; where the
// float32 scores of a row overflow (|scale · q · k|, or a product or partial sum of it, beyond
// float32's range, computed here from the float32 inputs over the row's allowed pairs) every value
// of the backend row must be NaN or ±Infinity; where the reference is ±Infinity the backend must
// equal it; everywhere else the backend must be finite and within SPEC §7's tolerance, taken per row
// (tol · (1 + max |ref| of the row)) so that a huge value in one row does not loosen the others. The
// indexer's scores, sums whose huge terms can cancel, are held to the magnitude of their terms
// instead (tol · (1 + Σ_h |w_h| · Σ_d |q_hd · k_d|)): float32's own rounding of those terms.
//
// Seeds: a fixed one, plus LIFELONG_SEED=<n> to explore another (printed in every failure message).
import test from 'ava';
import { backends, indexedCrossAttention, indexerScores, maskedAttention, reference, sparseAttention, tensor, topK } from '../lib/index';
import type { DType, Device, MaskRule, PresetName, Tensor } from '../lib/index';
import { makeInput, pack, parityDevices, randomRule, randomSequence, Rng, Seq, TOLERANCE } from './helpers';
import type { PackedLayout } from './helpers';

const FLT_MAX = 3.4028234663852886e38;
/** Large enough that HUGE x HUGE overflows float32, small enough that HUGE x (a value near 1) does not. */
const HUGE = 1e30;

const SEEDS = [20261128];
if (process.env.LIFELONG_SEED !== undefined) {
  const s = Number(process.env.LIFELONG_SEED);
  if (!Number.isSafeInteger(s)) throw new Error(`LIFELONG_SEED: expected an integer, got ${process.env.LIFELONG_SEED}`);
  SEEDS.push(s);
}

const devices = parityDevices();
/** The emulator runs every CUDA thread as a fiber: its cases are smaller. */
const small = (device: Device) => device === 'cuda' && backends().cuda.emulated;

// ---------------------------------------------------------------------------------------------
// Comparison

/**
 * out vs ref as rows of `width` values (see the file comment). `overflow[r]` marks rows whose float32
 * scores overflow; `magnitude[i]`, when given, is the size of the terms summed into element i, which
 * sets its tolerance instead of the row's largest value when larger. Returns '' or the first disagreement.
 */
export function compareIeee(out: ArrayLike<number>, ref: ArrayLike<number>, dtype: DType, what: string, width: number,
  overflow?: ArrayLike<number>, magnitude?: ArrayLike<number>): string {
  if (out.length !== ref.length) return `${what}: length ${out.length} != reference ${ref.length}`;
  const tol = TOLERANCE[dtype];
  for (let r = 0; r * width < ref.length; r++) {
    const base = r * width;
    if (overflow && overflow[r]) {
      for (let c = 0; c < width; c++)
        if (Number.isFinite(out[base + c])) return `${what}[${base + c}] (row ${r}): the row's float32 scores overflow, expected NaN or ±Infinity, got ${out[base + c]} (reference ${ref[base + c]})`;
      continue;
    }
    let rowMax = 0;
    for (let c = 0; c < width; c++) if (Number.isFinite(ref[base + c])) rowMax = Math.max(rowMax, Math.abs(ref[base + c]));
    for (let c = 0; c < width; c++) {
      const o = out[base + c], x = ref[base + c];
      const maxRef = magnitude ? Math.max(rowMax, magnitude[base + c]) : rowMax;
      const at = `${what}[${base + c}] (row ${r})`;
      if (Number.isNaN(x)) {
        if (!Number.isNaN(o)) return `${at}: got ${o}, reference NaN`;
      } else if (!Number.isFinite(x)) {
        if (o !== x) return `${at}: got ${o}, reference ${x}`;
      } else if (!Number.isFinite(o)) {
        return `${at}: got ${o}, reference ${x}`;
      } else if (Math.abs(o - x) > tol * (1 + maxRef)) {
        return `${at}: got ${o}, reference ${x}: error ${Math.abs(o - x)} exceeds ${tol * (1 + maxRef)}`;
      }
    }
  }
  return '';
}

/**
 * Whether the float32 score of a[ai..ai+n) · b[bi..bi+n) · scale leaves float32's range: some product,
 * scaled product or partial sum of the finite terms (either association of the scale), or the result.
 */
function scoreOverflows(a: ArrayLike<number>, ai: number, b: ArrayLike<number>, bi: number, n: number, scale: number): boolean {
  let s = 0, ss = 0;
  for (let d = 0; d < n; d++) {
    const x = a[ai + d], y = b[bi + d];
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    s += x * y;
    ss += x * scale * y;
    if (Math.max(Math.abs(x * y), Math.abs(x * scale * y), Math.abs(s), Math.abs(ss)) > FLT_MAX) return true;
  }
  return Math.abs(s * scale) > FLT_MAX;
}

// ---------------------------------------------------------------------------------------------
// Special values

type Special = 'nan' | 'inf' | '-inf' | 'huge';

function specialValue(kind: Special): number {
  return kind === 'nan' ? Number.NaN : kind === 'inf' ? Infinity : kind === '-inf' ? -Infinity : HUGE;
}

/**
 * Places `count` special values in data = [rows, heads, dim]. Huge values go to element 0 of a head
 * (positive), so that a huge q meeting a huge k overflows to +Infinity, never to a negative score.
 */
function inject(rng: Rng, data: Float32Array, rows: number, heads: number, dim: number, count: number, kinds: Special[]): void {
  if (rows === 0 || kinds.length === 0) return;
  for (let n = 0; n < count; n++) {
    const kind = rng.pick(kinds);
    const t = rng.int(0, rows - 1), h = rng.int(0, heads - 1);
    const d = kind === 'huge' ? 0 : rng.int(0, dim - 1);
    data[(t * heads + h) * dim + d] = specialValue(kind);
  }
}

const FINITE_SPECIALS: Special[] = ['nan', 'inf', '-inf', 'huge'];
const HALF_SPECIALS: Special[] = ['nan', 'inf', '-inf'];  // 1e30 is Infinity in float16

// ---------------------------------------------------------------------------------------------
// maskedAttention

interface AttentionCase {
  name: string;
  rule: MaskRule | PresetName;
  layout: PresetName | 'mixed';
  heads: number;
  kvHeads: number;
  headDim: number;
  valueDim: number;
  dtype: DType;
  silu?: boolean;
  cross?: boolean;
  specials: { q: Special[]; k: Special[]; v: Special[] };
}

function attentionCases(rng: Rng): AttentionCase[] {
  const sizes = [8, 16, 32, 64];
  const geo = () => {
    const kvHeads = rng.pick([1, 1, 2]);
    const headDim = rng.pick(sizes);
    let valueDim = rng.pick(sizes);
    if (valueDim === headDim) valueDim = headDim === 8 ? 16 : headDim / 2;  // Dv != D
    return { kvHeads, heads: kvHeads * rng.pick([1, 2]), headDim, valueDim };
  };
  const all = { q: FINITE_SPECIALS, k: FINITE_SPECIALS, v: FINITE_SPECIALS };
  const cases: AttentionCase[] = [];
  for (const p of ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'] as PresetName[])
    cases.push({ name: `${p}`, rule: p, layout: p === 'causal' || p === 'full' ? 'mixed' : p, ...geo(), dtype: 'float32', specials: all });
  for (let i = 0; i < 3; i++)
    cases.push({ name: `random rule #${i}`, rule: randomRule(rng), layout: 'mixed', ...geo(), dtype: 'float32', specials: all });
  // silu: huge values in q / k only (a huge silu weight times a huge v would overflow the product,
  // not the score, and only in some columns)
  for (const p of ['causal', 'persrec'] as PresetName[])
    cases.push({ name: `silu ${p}`, rule: p, layout: p === 'causal' ? 'mixed' : p, ...geo(), dtype: 'float32', silu: true,
      specials: { q: FINITE_SPECIALS, k: FINITE_SPECIALS, v: HALF_SPECIALS } });
  cases.push({ name: 'cross attention, causal', rule: 'causal', layout: 'mixed', ...geo(), dtype: 'float32', cross: true, specials: all });
  cases.push({ name: 'cross attention, random rule', rule: randomRule(rng), layout: 'mixed', ...geo(), dtype: 'float32', cross: true, specials: all });
  cases.push({ name: 'GQA 4 / 1', rule: 'causal', layout: 'mixed', heads: 4, kvHeads: 1, headDim: 16, valueDim: 32, dtype: 'float32', specials: all });
  for (const dtype of ['float16', 'bfloat16'] as DType[])
    cases.push({ name: dtype, rule: rng.pick(['causal', 'persrec'] as PresetName[]), layout: 'persrec', ...geo(), dtype,
      specials: { q: HALF_SPECIALS, k: HALF_SPECIALS, v: HALF_SPECIALS } });
  return cases;
}

/** Lengths that hit the interesting cases: empty, 1, and off the 32 / 64 tile edges. */
function lengthPick(rng: Rng, smallShapes: boolean): number {
  return rng.pick(smallShapes ? [0, 1, 2, 17, 33, 65, rng.int(1, 70)] : [0, 1, 3, 31, 63, 65, 100, 130, rng.int(1, 200)]);
}

function sequenceFor(rng: Rng, layout: PresetName | 'mixed', smallShapes: boolean): Seq {
  if (rng.bool(0.35)) {  // a plain sequence of a chosen length, roles mixed, a few segments
    const n = lengthPick(rng, smallShapes);
    return { segments: Array.from({ length: n }, (_, i) => Math.floor((i * 3) / Math.max(1, n))), roles: Array.from({ length: n }, () => rng.pick([0, 0, 1, 2])) };
  }
  return randomSequence(rng, layout, smallShapes ? 12 : 30);
}

function padTo(s: Seq, n: number): Seq {
  if (s.roles.length >= n) return s;
  const last = s.segments.length ? s.segments[s.segments.length - 1] : 0;
  return { segments: s.segments.concat(Array(n - s.roles.length).fill(last)), roles: s.roles.concat(Array(n - s.roles.length).fill(0)) };
}

const layoutOf = (l: PackedLayout) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });

/** Rows (query, head) of maskedAttention whose float32 scores overflow over their allowed keys. */
function attentionOverflowRows(q: Float32Array, k: Float32Array, ql: PackedLayout, kl: PackedLayout, rule: MaskRule | PresetName,
  H: number, Hkv: number, D: number, scale: number): Uint8Array {
  const resolved = reference.resolveRule(rule);
  const Tq = ql.offsets[ql.offsets.length - 1];
  const rows = new Uint8Array(Tq * H);
  for (let b = 0; b + 1 < ql.offsets.length; b++) {
    const q0 = ql.offsets[b], Lq = ql.offsets[b + 1] - q0, k0 = kl.offsets[b], Lk = kl.offsets[b + 1] - k0;
    for (let i = 0; i < Lq; i++) {
      const qi = q0 + i;
      for (let j = 0; j < Lk; j++) {
        const kj = k0 + j;
        if (!reference.refAllowed(resolved, ql.roles[qi], kl.roles[kj], ql.segments[qi], kl.segments[kj], i + Lk - Lq, j)) continue;
        for (let h = 0; h < H; h++) {
          const g = Math.floor(h / (H / Hkv));
          if (scoreOverflows(q, (qi * H + h) * D, k, (kj * Hkv + g) * D, D, scale)) rows[qi * H + h] = 1;
        }
      }
    }
  }
  return rows;
}

async function runAttentionCase(c: AttentionCase, seed: number, device: Device): Promise<string> {
  const rng = new Rng(seed);
  const smallShapes = small(device);
  const batch = rng.int(1, smallShapes ? 4 : 6);
  const qSeqs: Seq[] = [], kSeqs: Seq[] = [];
  for (let b = 0; b < batch; b++) {
    const s = sequenceFor(rng, c.layout, smallShapes);
    qSeqs.push(s);
    if (c.cross) kSeqs.push(rng.bool(0.7) ? padTo(sequenceFor(rng, c.layout, smallShapes), s.roles.length + rng.int(0, 20)) : sequenceFor(rng, c.layout, smallShapes));
  }
  const ql = pack(qSeqs), kl = c.cross ? pack(kSeqs) : ql;
  const tq = ql.offsets[batch], tk = kl.offsets[batch];
  const { heads: H, kvHeads: Hkv, headDim: D, valueDim: Dv } = c;
  const qv = rng.floats(tq * H * D, 2), kv = rng.floats(tk * Hkv * D, 2), vv = rng.floats(tk * Hkv * Dv);
  const per = (n: number) => Math.max(1, Math.round(n / 60));
  inject(rng, qv, tq, H, D, per(tq), c.specials.q);
  inject(rng, kv, tk, Hkv, D, per(tk), c.specials.k);
  inject(rng, vv, tk, Hkv, Dv, per(tk) + 1, c.specials.v);
  const q = await makeInput(qv, [tq, H, D], c.dtype, device);
  const k = await makeInput(kv, [tk, Hkv, D], c.dtype, device);
  const v = await makeInput(vv, [tk, Hkv, Dv], c.dtype, device);
  const options = { q: layoutOf(ql), kv: c.cross ? layoutOf(kl) : undefined, rule: c.rule,
    normalize: c.silu ? ('silu' as const) : ('softmax' as const), returnLse: !c.silu };
  const what = `${c.name}${typeof c.rule === 'string' ? '' : ` ${JSON.stringify(c.rule)}`} on ${device}, seed ${seed}: B=${batch} Tq=${tq} Tk=${tk} lengths ${ql.lengths}${c.cross ? ` / ${kl.lengths}` : ''} H=${H}/${Hkv} D=${D} Dv=${Dv}`;
  let got;
  try {
    got = await maskedAttention(q.t, k.t, v.t, options);
  } finally {
    for (const x of [q.t, k.t, v.t]) x.dispose();
  }
  const ref = reference.maskedAttention({ data: q.exact, shape: [tq, H, D] }, { data: k.exact, shape: [tk, Hkv, D] },
    { data: v.exact, shape: [tk, Hkv, Dv] }, options);
  const overflow = attentionOverflowRows(q.exact, k.exact, ql, kl, c.rule, H, Hkv, D, 1 / Math.sqrt(D));
  let msg = compareIeee(await got.output.float32(), ref.output.data, c.dtype, 'output', Dv, overflow);
  if (!msg && !c.silu) msg = compareIeee(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse', 1, overflow);
  got.output.dispose();
  got.lse?.dispose();
  return msg ? `${what}: ${msg}` : '';
}

for (const device of devices) {
  test(`maskedAttention ${device}: causal T = 200 with NaN in v[150]: rows < 150 finite and = reference, rows >= 150 NaN`, async (t) => {
    const rng = new Rng(150);
    const T = 200, H = 2, D = 16;
    const vv = rng.floats(T * H * D);
    vv.fill(Number.NaN, 150 * H * D, 151 * H * D);
    const q = await makeInput(rng.floats(T * H * D, 2), [T, H, D], 'float32', device);
    const k = await makeInput(rng.floats(T * H * D, 2), [T, H, D], 'float32', device);
    const v = await makeInput(vv, [T, H, D], 'float32', device);
    const layout = { offsets: new Int32Array([0, T]) };
    const got = await maskedAttention(q.t, k.t, v.t, { q: layout, returnLse: true });
    const out = await got.output.float32();
    const ref = reference.maskedAttention({ data: q.exact, shape: [T, H, D] }, { data: k.exact, shape: [T, H, D] }, { data: v.exact, shape: [T, H, D] },
      { q: layout, returnLse: true });
    const nanRows = [];
    for (let i = 0; i < T; i++) if (out.subarray(i * H * D, (i + 1) * H * D).some(Number.isNaN)) nanRows.push(i);
    t.is(nanRows[0], 150, `first NaN row ${nanRows[0]}`);
    t.is(nanRows.length, 50, `NaN rows ${nanRows[0]} ... ${nanRows[nanRows.length - 1]}`);
    t.true(out.subarray(0, 150 * H * D).every(Number.isFinite));
    t.is(compareIeee(out, ref.output.data, 'float32', 'output', D), '');
    t.is(compareIeee(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse', 1), '');
    for (const x of [q.t, k.t, v.t, got.output, got.lse!]) x.dispose();
  });

  test(`maskedAttention ${device}: non-finite values only in masked positions never reach an output; rows with no allowed key are 0, lse -Infinity`, async (t) => {
    // Three segments; items see items of earlier segments only (segment 0 sees nothing, segment 2
    // sees segments 0 and 1). The keys of segments 1 and 2 are poisoned (NaN / Inf / huge in k and
    // v): segment 2's rows may see segment 1's (and turn NaN as the reference's); rows of segments 0
    // and 1, in the same tiles, must stay exact.
    const rule: MaskRule = { item: { item: { seg: 'earlier', causal: true } } };
    const rng = new Rng(7);
    for (const [lengths, H, D] of [[[70, 0, 1, 130], 2, 16], [[33, 65], 1, 64]] as [number[], number, number][]) {
      const seqs = lengths.map((n) => ({ segments: Array.from({ length: n }, (_, i) => Math.floor((3 * i) / n)), roles: new Array(n).fill(0) }));
      const l = pack(seqs);
      const T = l.offsets[lengths.length];
      const qv = rng.floats(T * H * D, 2), kv = rng.floats(T * H * D, 2), vv = rng.floats(T * H * D);
      for (let i = 0; i < T; i++) {
        if (l.segments[i] === 0) continue;
        for (let x = 0; x < H * D; x++) {
          kv[i * H * D + x] = [Number.NaN, Infinity, HUGE][x % 3];
          vv[i * H * D + x] = [Number.NaN, -Infinity, Infinity][x % 3];
        }
      }
      const q = await makeInput(qv, [T, H, D], 'float32', device), k = await makeInput(kv, [T, H, D], 'float32', device), v = await makeInput(vv, [T, H, D], 'float32', device);
      for (const normalize of ['softmax', 'silu'] as const) {
        const options = { q: layoutOf(l), rule, normalize, returnLse: normalize === 'softmax' };
        const got = await maskedAttention(q.t, k.t, v.t, options);
        const ref = reference.maskedAttention({ data: q.exact, shape: [T, H, D] }, { data: k.exact, shape: [T, H, D] }, { data: v.exact, shape: [T, H, D] }, options);
        const out = await got.output.float32();
        for (let i = 0; i < T; i++)
          if (l.segments[i] < 2) t.true(out.subarray(i * H * D, (i + 1) * H * D).every(Number.isFinite), `${normalize} lengths ${lengths}: row ${i} (segment ${l.segments[i]}) is not finite`);
        t.is(compareIeee(out, ref.output.data, 'float32', 'output', D), '', `${normalize} lengths ${lengths}`);
        if (got.lse) {
          const lse = await got.lse.float32();
          for (let i = 0; i < T; i++)
            if (l.segments[i] === 0) t.true(lse.subarray(i * H, (i + 1) * H).every((x) => x === -Infinity), `lse of row ${i} (no allowed key)`);
          t.is(compareIeee(lse, ref.lse!.data, 'float32', 'lse', 1), '');
        }
        got.output.dispose();
        got.lse?.dispose();
      }
      for (const x of [q.t, k.t, v.t]) x.dispose();
    }
  });

  test(`maskedAttention ${device}: an allowed NaN, +Infinity or overflowing score gives what the reference gives`, async (t) => {
    // One sequence of 70 tokens, causal; each probe poisons one allowed pair of query row 66.
    const T = 70, H = 1, D = 8;
    // [what, poison, row 66 expected, rows at the start expected finite]
    const probes: [string, (q: Float32Array, k: Float32Array, v: Float32Array) => void, 'nan' | 'finite' | 'nonfinite', number][] = [
      ['NaN in k[3]', (_q, k) => { k[3 * D + 1] = Number.NaN; }, 'nan', 3],
      ['+Infinity score (k[5] = +Inf, q > 0)', (q, k) => { q[66 * D] = 1; k[5 * D] = Infinity; }, 'nan', 5],
      ['-Infinity score (k[5] = -Inf, q > 0)', (q, k) => { q[66 * D] = 1; k[5 * D] = -Infinity; }, 'finite', 5],
      ['every score -Infinity (q[66] = -Inf, k > 0 at that dim)', (q, k) => { for (let j = 0; j < T; j++) k[j * D + 2] = 0.5; q[66 * D + 2] = -Infinity; }, 'nan', 66],
      // Every key of the first tiles scores -Infinity for row 66, the last few keys do not: the online
      // softmax must not decide NaN before it has seen them all.
      ['-Infinity scores in the first key tiles only (k[0..63] = -Inf, q > 0)', (q, k) => { q[66 * D] = 1; for (let j = 0; j < 64; j++) k[j * D] = -Infinity; }, 'finite', 0],
      // The first key tile's allowed scores are -Infinity but for one NaN: the row is NaN although
      // later tiles are finite (a NaN must not be dropped where the tile's maximum is -Infinity).
      ['-Infinity scores and one NaN score in the first key tile (k[0..63] = -Inf, k[7] NaN)', (q, k) => { q[66 * D] = 1; for (let j = 0; j < 64; j++) k[j * D] = -Infinity; k[7 * D + 1] = Number.NaN; }, 'nan', 0],
      ['-Infinity scores then a NaN value of a -Infinity key (0 x NaN is NaN)', (q, k, v) => { q[66 * D] = 1; for (let j = 0; j < 64; j++) k[j * D] = -Infinity; v[2 * D + 1] = Number.NaN; }, 'nonfinite', 0],
      ['overflowing score (q[66] and k[9] huge)', (q, k) => { q[66 * D] = HUGE; k[9 * D] = HUGE; }, 'nonfinite', 9],
      ['Infinity in v[60]', (_q, _k, v) => { v[60 * D + 4] = Infinity; }, 'nonfinite', 60],
    ];
    for (const [name, poison, expect, clean] of probes) {
      const rng = new Rng(66);
      const qv = rng.floats(T * H * D), kv = rng.floats(T * H * D), vv = rng.floats(T * H * D);
      poison(qv, kv, vv);
      const q = await makeInput(qv, [T, H, D], 'float32', device), k = await makeInput(kv, [T, H, D], 'float32', device), v = await makeInput(vv, [T, H, D], 'float32', device);
      const layout = { offsets: new Int32Array([0, T]) };
      const got = await maskedAttention(q.t, k.t, v.t, { q: layout, returnLse: true });
      const ref = reference.maskedAttention({ data: q.exact, shape: [T, H, D] }, { data: k.exact, shape: [T, H, D] }, { data: v.exact, shape: [T, H, D] }, { q: layout, returnLse: true });
      const overflow = attentionOverflowRows(q.exact, k.exact, pack([{ segments: new Array(T).fill(0), roles: new Array(T).fill(0) }]),
        pack([{ segments: new Array(T).fill(0), roles: new Array(T).fill(0) }]), 'causal', H, H, D, 1 / Math.sqrt(D));
      const out = await got.output.float32();
      t.is(compareIeee(out, ref.output.data, 'float32', 'output', D, overflow), '', name);
      t.is(compareIeee(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse', 1, overflow), '', name);
      const row = Array.from(out.subarray(66 * D, 67 * D));
      if (expect === 'nan') t.true(row.every(Number.isNaN), `${name}: row 66 = ${row}`);
      if (expect === 'finite') t.true(row.every(Number.isFinite), `${name}: row 66 = ${row}`);
      if (expect === 'nonfinite') t.true(row.some((x) => !Number.isFinite(x)), `${name}: row 66 = ${row}`);
      t.true(out.subarray(0, clean * D).every(Number.isFinite), `${name}: rows before the poisoned keys stay finite`);
      for (const x of [q.t, k.t, v.t, got.output, got.lse!]) x.dispose();
    }
  });

  test(`maskedAttention ${device} = reference on random inputs with NaN / ±Infinity / huge values (presets, random rules, jagged, GQA, Dv != D, silu, lse)`, async (t) => {
    for (const seed of SEEDS) {
      const cases = attentionCases(new Rng(seed));
      for (let i = 0; i < cases.length; i++) t.is(await runAttentionCase(cases[i], seed * 1009 + i, device), '');
    }
  });
}

// ---------------------------------------------------------------------------------------------
// indexerScores, topK, sparseAttention, indexedCrossAttention

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

/**
 * Per score [Nq, Lmax]: whether its float32 evaluation overflows (a product or partial sum of the
 * dot's finite terms, w · relu(dot), or the sum over heads), and the magnitude Σ_h |w · relu(dot)|.
 */
function indexerOverflows(qI: Float32Array, kI: Float32Array, w: Float32Array, qOffsets: Int32Array, kOffsets: Int32Array, Hi: number, Di: number, Lmax: number) {
  const Nq = qOffsets[qOffsets.length - 1];
  const overflow = new Uint8Array(Nq * Lmax), magnitude = new Float64Array(Nq * Lmax);
  for (let b = 0; b + 1 < qOffsets.length; b++)
    for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++)
      for (let j = 0; j < kOffsets[b + 1] - kOffsets[b]; j++) {
        let s = 0, mag = 0, over = false;
        for (let h = 0; h < Hi; h++) {
          let dot = 0, finiteDot = 0, absDot = 0;
          for (let d = 0; d < Di; d++) {
            const x = qI[(i * Hi + h) * Di + d], y = kI[(kOffsets[b] + j) * Di + d];
            dot += x * y;
            if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
            finiteDot += x * y;
            absDot += Math.abs(x * y);
            over ||= Math.abs(x * y) > FLT_MAX || Math.abs(finiteDot) > FLT_MAX;
          }
          const term = w[i * Hi + h] * Math.max(0, dot);  // as the reference: NaN / ±Infinity propagate
          if (!Number.isFinite(term)) continue;
          s += term;
          if (Number.isFinite(absDot)) mag += Math.abs(w[i * Hi + h]) * absDot;
          over ||= Math.abs(term) > FLT_MAX || Math.abs(s) > FLT_MAX;
        }
        overflow[i * Lmax + j] = over ? 1 : 0;
        magnitude[i * Lmax + j] = mag;
      }
  return { overflow, magnitude };
}

/** Rows (query, head) of sparse attention whose float32 scores overflow over the selected keys. */
function sparseOverflowRows(q: Float32Array, k: Float32Array, idx: Int32Array, K: number, qOffsets: Int32Array, kOffsets: Int32Array,
  H: number, Hkv: number, D: number, scale: number): Uint8Array {
  const rows = new Uint8Array((qOffsets[qOffsets.length - 1]) * H);
  for (let b = 0; b + 1 < qOffsets.length; b++)
    for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++)
      for (let s = 0; s < K; s++) {
        const j = idx[i * K + s];
        if (j < 0) continue;
        for (let h = 0; h < H; h++)
          if (scoreOverflows(q, (i * H + h) * D, k, ((kOffsets[b] + j) * Hkv + Math.floor(h / (H / Hkv))) * D, D, scale)) rows[i * H + h] = 1;
      }
  return rows;
}

interface SparseCase { B: number; qLens: number[]; keyLens: number[]; Hi: number; Di: number; heads: number; kvHeads: number; D: number; Dv: number; k: number; dtype: DType }

function sparseCase(rng: Rng, device: Device, dtype: DType): SparseCase {
  const s = small(device);
  const B = rng.int(1, s ? 3 : 5);
  const keyLens = Array.from({ length: B }, () => rng.pick(s ? [0, 1, 5, 40, 130] : [0, 1, 5, 70, 130, 700]));
  const qLens = Array.from({ length: B }, () => rng.int(0, s ? 4 : 10));
  const kvHeads = rng.pick([1, 2]);
  return { B, qLens, keyLens, Hi: rng.pick([1, 2, 4]), Di: rng.pick([8, 32]), heads: kvHeads * rng.pick([1, 2]), kvHeads,
    D: rng.pick([16, 32]), Dv: rng.pick([8, 64]), k: rng.pick([1, 7, 64, 200]), dtype };
}

for (const device of devices) {
  test(`sparseAttention ${device}: -Infinity scores over the first 256 selected keys then finite ones; all -Infinity; nothing selected`, async (t) => {
    const L = 400, K = 300, H = 1, D = 16, Dv = 8;
    const rng = new Rng(256);
    const qv = rng.floats(3 * H * D), kv = rng.floats(L * H * D), vv = rng.floats(L * H * Dv);
    qv[0] = 1;
    qv[D] = 1;
    for (let j = 0; j < 300; j++) kv[j * D] = -Infinity;  // scores -Infinity for queries 0 and 1
    const idx = new Int32Array(3 * K).fill(-1);
    for (let s = 0; s < K; s++) {
      idx[s] = s < 256 ? s : 44 + s;    // query 0: 256 keys scoring -Infinity, then 44 finite ones
      idx[K + s] = s;                   // query 1: every selected key scores -Infinity -> NaN
    }                                   // query 2: nothing selected -> 0, lse -Infinity
    const layout = { qOffsets: new Int32Array([0, 3]), kOffsets: new Int32Array([0, L]) };
    const q = await makeInput(qv, [3, H, D], 'float32', device), k = await makeInput(kv, [L, H, D], 'float32', device), v = await makeInput(vv, [L, H, Dv], 'float32', device);
    const got = await sparseAttention(q.t, k.t, v.t, tensor(idx, [3, K], { device }), { ...layout, returnLse: true });
    const want = reference.sparseAttention({ data: q.exact, shape: [3, H, D] }, { data: k.exact, shape: [L, H, D] }, { data: v.exact, shape: [L, H, Dv] },
      { data: idx, shape: [3, K] }, { ...layout, returnLse: true });
    const out = await got.output.float32(), lse = await got.lse!.float32();
    t.true(out.subarray(0, Dv).every(Number.isFinite), `query 0: ${out.subarray(0, Dv)}`);
    t.true(out.subarray(Dv, 2 * Dv).every(Number.isNaN), `query 1: ${out.subarray(Dv, 2 * Dv)}`);
    t.deepEqual(Array.from(out.subarray(2 * Dv)), new Array(Dv).fill(0));
    t.deepEqual([Number.isFinite(lse[0]), Number.isNaN(lse[1]), lse[2]], [true, true, -Infinity]);
    t.is(compareIeee(out, want.output.data, 'float32', 'output', Dv), '');
    t.is(compareIeee(lse, want.lse!.data, 'float32', 'lse', 1), '');
    for (const x of [q.t, k.t, v.t, got.output, got.lse!]) x.dispose();
  });

  test(`indexerScores / topK / sparseAttention / indexedCrossAttention ${device} = reference with NaN / ±Infinity / huge values`, async (t) => {
    for (const seed of SEEDS) {
      const rng = new Rng(seed ^ 0x5a5a);
      const rounds = small(device) ? 4 : 6;
      for (let round = 0; round < rounds; round++) {
        const dtype: DType = round === rounds - 1 ? 'float16' : 'float32';
        const c = sparseCase(rng, device, dtype);
        const kinds = dtype === 'float32' ? FINITE_SPECIALS : HALF_SPECIALS;
        const qOffsets = offsetsOf(c.qLens), kOffsets = offsetsOf(c.keyLens);
        const Nq = qOffsets[c.B], Tk = kOffsets[c.B];
        const Lmax = Math.max(0, ...c.keyLens);
        const layout = { qOffsets, kOffsets };
        const what = `${device} seed ${seed} round ${round} ${dtype}: keys ${c.keyLens} queries ${c.qLens} Hi=${c.Hi} Di=${c.Di} H=${c.heads}/${c.kvHeads} D=${c.D} Dv=${c.Dv} k=${c.k}`;

        // Indexer inputs: specials anywhere (NaN scores must never be selected).
        const qIv = rng.floats(Nq * c.Hi * c.Di), kIv = rng.floats(Tk * c.Di), wv = rng.floats(Nq * c.Hi);
        inject(rng, qIv, Nq, c.Hi, c.Di, Math.max(1, Nq >> 2), kinds);
        inject(rng, kIv, Tk, 1, c.Di, Math.max(1, Tk >> 4), kinds);
        inject(rng, wv, Nq, c.Hi, 1, 1, kinds);
        const qI = await makeInput(qIv, [Nq, c.Hi, c.Di], dtype, device), kI = await makeInput(kIv, [Tk, c.Di], dtype, device), w = await makeInput(wv, [Nq, c.Hi], dtype, device);
        const refScores = reference.indexerScores({ data: qI.exact, shape: [Nq, c.Hi, c.Di] }, { data: kI.exact, shape: [Tk, c.Di] }, { data: w.exact, shape: [Nq, c.Hi] }, layout);
        const { overflow: scoreOverflow, magnitude: scoreMagnitude } = indexerOverflows(qI.exact, kI.exact, w.exact, qOffsets, kOffsets, c.Hi, c.Di, Lmax);
        const scores = await indexerScores(qI.t, kI.t, w.t, layout);
        const gotScores = await scores.float32();
        t.is(compareIeee(gotScores, refScores.data, 'float32', 'scores', 1, scoreOverflow, scoreMagnitude), '', `indexerScores ${what}`);

        // topK of the backend's own scores: exactly the reference's choice on the same values.
        const chosen = await topK(scores, c.k);
        const refChosen = reference.topK({ data: gotScores, shape: [Nq, Lmax] }, c.k);
        t.deepEqual(Array.from((await chosen.indices.data()) as Int32Array), Array.from(refChosen.indices.data), `topK ${what}`);
        t.deepEqual(Array.from((await chosen.values.data()) as Float32Array), Array.from(refChosen.values.data, Math.fround), `topK values ${what}`);

        // Attention inputs: specials anywhere; the last key of each entry is poisoned and never selected.
        const qv = rng.floats(Nq * c.heads * c.D, 2), kv = rng.floats(Tk * c.kvHeads * c.D, 2), vv = rng.floats(Tk * c.kvHeads * c.Dv);
        inject(rng, qv, Nq, c.heads, c.D, Math.max(1, Nq >> 2), kinds);
        inject(rng, kv, Tk, c.kvHeads, c.D, Math.max(1, Tk >> 5), kinds);
        inject(rng, vv, Tk, c.kvHeads, c.Dv, Math.max(1, Tk >> 5), kinds.filter((x) => x !== 'huge'));
        for (let b = 0; b < c.B; b++) {
          if (c.keyLens[b] < 2) continue;
          const last = kOffsets[b + 1] - 1;
          kv.fill(Number.NaN, last * c.kvHeads * c.D, (last + 1) * c.kvHeads * c.D);
          vv.fill(Infinity, last * c.kvHeads * c.Dv, (last + 1) * c.kvHeads * c.Dv);
        }
        const q = await makeInput(qv, [Nq, c.heads, c.D], dtype, device), kk = await makeInput(kv, [Tk, c.kvHeads, c.D], dtype, device), v = await makeInput(vv, [Tk, c.kvHeads, c.Dv], dtype, device);
        const qRef = { data: q.exact, shape: [Nq, c.heads, c.D] }, kRef = { data: kk.exact, shape: [Tk, c.kvHeads, c.D] }, vRef = { data: v.exact, shape: [Tk, c.kvHeads, c.Dv] };
        const scale = 1 / Math.sqrt(c.D);

        // sparseAttention over indices with -1 (also whole rows of it), duplicates, never the poisoned key.
        const K = rng.pick([1, 4, 9]);
        const idx = new Int32Array(Nq * K).fill(-1);
        for (let b = 0; b < c.B; b++) {
          const usable = c.keyLens[b] >= 2 ? c.keyLens[b] - 1 : c.keyLens[b];
          for (let i = qOffsets[b]; i < qOffsets[b + 1]; i++) {
            if (usable === 0 || rng.bool(0.15)) continue;  // nothing selected
            for (let s = 0; s < K; s++) {
              const u = rng.next();
              idx[i * K + s] = u < 0.2 ? -1 : u < 0.4 && s > 0 ? idx[i * K + s - 1] : rng.int(0, usable - 1);
            }
          }
        }
        const got = await sparseAttention(q.t, kk.t, v.t, tensor(idx, [Nq, K], { device }), { ...layout, returnLse: true });
        const want = reference.sparseAttention(qRef, kRef, vRef, { data: idx, shape: [Nq, K] }, { ...layout, returnLse: true });
        const sparseOverflow = sparseOverflowRows(q.exact, kk.exact, idx, K, qOffsets, kOffsets, c.heads, c.kvHeads, c.D, scale);
        t.is(compareIeee(await got.output.float32(), want.output.data, dtype, 'output', c.Dv, sparseOverflow), '', `sparseAttention ${what}`);
        t.is(compareIeee(await got.lse!.float32(), want.lse!.data, 'float32', 'lse', 1, sparseOverflow), '', `sparseAttention lse ${what}`);

        // indexedCrossAttention: the reference's selection (up to near ties), values and the attention
        // over the keys chosen. A score that overflows float32 is ±Infinity or NaN there (checked
        // above): the expected selection is the reference's top-k with those scores as the backend has them.
        const fused = await indexedCrossAttention(q.t, kk.t, v.t, { indexer: { q: qI.t, k: kI.t, w: w.t }, topK: c.k, ...layout });
        const expectScores = Float64Array.from(refScores.data, (x, n) => (scoreOverflow[n] ? gotScores[n] : x));
        const refSelected = reference.topK({ data: expectScores, shape: [Nq, Lmax] }, c.k).indices.data;
        const fi = (await fused.indices.data()) as Int32Array;
        let selection = '';
        for (let n = 0; n < fi.length && !selection; n++) {
          const r = Math.floor(n / c.k), gi = fi[n], wi = refSelected[n];
          if (gi === wi) continue;
          const sg = gi >= 0 ? expectScores[r * Lmax + gi] : Number.NaN, sw = wi >= 0 ? expectScores[r * Lmax + wi] : Number.NaN;
          const tol = 1e-4 * (1 + Math.max(Math.abs(sw), scoreMagnitude[r * Lmax + wi]));
          if (!(Number.isFinite(sg) && Number.isFinite(sw) && Math.abs(sg - sw) <= tol))
            selection = `row ${r} slot ${n % c.k}: index ${gi} (reference score ${sg}) vs reference ${wi} (score ${sw})`;
        }
        t.is(selection, '', `indexedCrossAttention selection ${what}`);
        const fvRef = Float64Array.from(fi, (j, n) => (j >= 0 ? refScores.data[Math.floor(n / c.k) * Lmax + j] : -Infinity));
        const fvOverflow = Uint8Array.from(fi, (j, n) => (j >= 0 ? scoreOverflow[Math.floor(n / c.k) * Lmax + j] : 0));
        const fvMagnitude = Float64Array.from(fi, (j, n) => (j >= 0 ? scoreMagnitude[Math.floor(n / c.k) * Lmax + j] : 0));
        t.is(compareIeee(await fused.values.float32(), fvRef, 'float32', 'values', 1, fvOverflow, fvMagnitude), '', `indexedCrossAttention values ${what}`);
        const overChosen = reference.sparseAttention(qRef, kRef, vRef, { data: fi, shape: [Nq, c.k] }, layout);
        const fusedOverflow = sparseOverflowRows(q.exact, kk.exact, fi, c.k, qOffsets, kOffsets, c.heads, c.kvHeads, c.D, scale);
        t.is(compareIeee(await fused.output.float32(), overChosen.output.data, dtype, 'output', c.Dv, fusedOverflow), '', `indexedCrossAttention output ${what}`);

        const all: (Tensor | undefined)[] = [qI.t, kI.t, w.t, q.t, kk.t, v.t, scores, chosen.indices, chosen.values, got.output, got.lse, fused.output, fused.indices, fused.values];
        for (const x of all) x?.dispose();
      }
    }
  });
}
