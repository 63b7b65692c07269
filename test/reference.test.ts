// The oracle itself, checked against cases computed by hand from SPEC §3 / §5, against naïve
// inline implementations, against properties, and against IEEE 754 bit patterns.
import test from 'ava';
import * as reference from '../lib/reference/index';
import type { PresetName, RefTensor } from '../lib/reference/index';

// ---------------------------------------------------------------------------------------------
// Small helpers (deliberately not shared with the other suites).

class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0 || 1; }
  next(): number { let x = this.s; x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; this.s = x; return x / 4294967296; }
  floats(n: number, amp = 1): number[] { return Array.from({ length: n }, () => (this.next() * 2 - 1) * amp); }
  int(lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)); }
}

const ITEM = 0, MEM = 1, TGT = 2;
const i32 = (xs: number[]) => Int32Array.from(xs);
const u8 = (xs: number[]) => Uint8Array.from(xs);
const T = (data: ArrayLike<number>, shape: number[]): RefTensor => ({ data, shape });

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue; // also equal infinities
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

/** Allowed-pair matrix of one self-attention sequence, from refAllowed ('1' allowed, '.' not). */
function ruleMatrix(rule: PresetName, segs: number[], roles: number[]): string[] {
  return segs.map((_, i) => segs.map((__, j) =>
    reference.refAllowed(reference.referencePresets[rule], roles[i], roles[j], segs[i], segs[j], i, j) ? '1' : '.').join(''));
}

/**
 * The same matrix read off maskedAttention itself: q = 0 gives uniform weights over the allowed
 * keys, v = one-hot of the key position, so output[i][j] > 0 exactly for the allowed pairs.
 */
function opMatrix(rule: PresetName, segs: number[], roles: number[]): string[] {
  const L = segs.length;
  const v = new Float64Array(L * L);
  for (let j = 0; j < L; j++) v[j * L + j] = 1;
  const out = reference.maskedAttention(T(new Float64Array(L * 4), [L, 1, 4]), T(new Float64Array(L * 4).fill(1), [L, 1, 4]), T(v, [L, 1, L]),
    { q: { offsets: i32([0, L]), segments: i32(segs), roles: u8(roles) }, rule }).output.data;
  return Array.from({ length: L }, (_, i) => Array.from({ length: L }, (__, j) => (out[i * L + j] > 0 ? '1' : '.')).join(''));
}

function checkPreset(t: import('ava').ExecutionContext, rule: PresetName, segs: number[], roles: number[], want: string[]) {
  t.deepEqual(ruleMatrix(rule, segs, roles), want, `${rule}: refAllowed`);
  t.deepEqual(opMatrix(rule, segs, roles), want, `${rule}: maskedAttention`);
}

const lowerTriangle = (L: number) => Array.from({ length: L }, (_, i) => '1'.repeat(i + 1) + '.'.repeat(L - i - 1));

// ---------------------------------------------------------------------------------------------
// Mask presets on the layouts they are meant for (SPEC §3), matrices derived by hand.

// PerSRec  S0 S0 M0 | S1 S1 M1 | T T   (targets in the last segment, after the summaries)
const PERSREC_SEGS = [0, 0, 0, 1, 1, 1, 2, 2];
const PERSREC_ROLES = [ITEM, ITEM, MEM, ITEM, ITEM, MEM, TGT, TGT];

test('causal and full presets on the PerSRec layout: lower triangle / everything', (t) => {
  checkPreset(t, 'causal', PERSREC_SEGS, PERSREC_ROLES, lowerTriangle(8));
  checkPreset(t, 'full', PERSREC_SEGS, PERSREC_ROLES, new Array(8).fill('11111111'));
});

test('persrec on S0 M0 S1 M1 T T: own segment causally, earlier summaries, never earlier raw items', (t) => {
  checkPreset(t, 'persrec', PERSREC_SEGS, PERSREC_ROLES, [
    '1.......', // S0 item
    '11......',
    '111.....', // M0: its segment's items and itself
    '..11....', // S1 item: M0 (earlier memory) and itself, never S0's items
    '..111...',
    '..1111..', // M1: S1 items, M0 and itself (same-or-earlier)
    '..1..11.', // target (segment 2): earlier memories M0, M1 and itself only
    '..1..1.1', // second target: not the first target ('self')
  ]);
});

test('every preset on S0 M0 S1 M1 target with the target in the last summary\'s segment', (t) => {
  const segs = [0, 0, 0, 1, 1, 1, 1];
  const roles = [ITEM, ITEM, MEM, ITEM, ITEM, MEM, TGT];
  checkPreset(t, 'causal', segs, roles, lowerTriangle(7));
  checkPreset(t, 'full', segs, roles, new Array(7).fill('1111111'));
  checkPreset(t, 'persrec', segs, roles, [
    '1......',
    '11.....',
    '111....',
    '..11...',
    '..111..',
    '..1111.',
    '..111.1', // target: same-segment items, strictly earlier memory (M0, not M1), itself
  ]);
  checkPreset(t, 'rec2pm-reference', segs, roles, [
    '1......',
    '11.....',
    '111....',
    '11.1...',
    '11.11..',
    '11.111.',
    '11.11.1', // target: every item, no memory, itself
  ]);
  checkPreset(t, 'rec2pm-update', segs, roles, [
    '1......',
    '11.....',
    '111....',
    '...1...',
    '...11..',
    '...111.',
    '...1111', // target: its segment's items and memory, itself
  ]);
});

test('rec2pm-reference on the PerSRec layout: items never see memory, targets see all items and themselves', (t) => {
  checkPreset(t, 'rec2pm-reference', PERSREC_SEGS, PERSREC_ROLES, [
    '1.......',
    '11......',
    '111.....',
    '11.1....',
    '11.11...',
    '11.111..', // M1 sees all items, only its own segment's memory
    '11.11.1.',
    '11.11..1',
  ]);
});

test('rec2pm-update on the PerSRec layout: everything restricted to its own segment', (t) => {
  checkPreset(t, 'rec2pm-update', PERSREC_SEGS, PERSREC_ROLES, [
    '1.......',
    '11......',
    '111.....',
    '...1....',
    '...11...',
    '...111..',
    '......1.', // segment 2 holds only the targets: each sees itself
    '.......1',
  ]);
});

test('rec2pm-reference on Rec2PM stage 1 (S0 Q Q S1 Q Q) and persrec on the same layout', (t) => {
  const segs = [0, 0, 0, 0, 1, 1, 1, 1];
  const roles = [ITEM, ITEM, MEM, MEM, ITEM, ITEM, MEM, MEM];
  checkPreset(t, 'rec2pm-reference', segs, roles, [
    '1.......',
    '11......',
    '111.....',
    '1111....',
    '11..1...', // S1 items: all earlier items, never Q
    '11..11..',
    '11..111.', // second Q block: all items so far and its own block
    '11..1111',
  ]);
  checkPreset(t, 'persrec', segs, roles, [
    '1.......',
    '11......',
    '111.....',
    '1111....',
    '..111...',
    '..1111..',
    '..11111.',
    '..111111',
  ]);
});

test('rec2pm-update on Rec2PM stage 2 blocks [S0; Q] [m; S1; Q]: block-diagonal causal', (t) => {
  const segs = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1];
  const roles = [ITEM, ITEM, MEM, MEM, MEM, MEM, ITEM, ITEM, MEM, MEM];
  checkPreset(t, 'rec2pm-update', segs, roles, [
    '1.........',
    '11........',
    '111.......',
    '1111......',
    '....1.....',
    '....11....',
    '....111...',
    '....1111..',
    '....11111.',
    '....111111',
  ]);
});

test('refAllowed: none entries, missing rows, and the causal flag', (t) => {
  const rule = { item: { memory: { seg: 'any' as const, causal: false }, target: { seg: 'none' as const, causal: false } } };
  t.true(reference.refAllowed(rule, ITEM, MEM, 0, 0, 0, 5));   // not causal: a later key is fine
  t.false(reference.refAllowed(rule, ITEM, ITEM, 0, 0, 5, 0)); // missing entry
  t.false(reference.refAllowed(rule, ITEM, TGT, 0, 0, 5, 0));  // explicit none
  t.false(reference.refAllowed(rule, MEM, MEM, 0, 0, 5, 0));   // missing row
  const causalSelf = { target: { target: { seg: 'self' as const, causal: true } } };
  t.true(reference.refAllowed(causalSelf, TGT, TGT, 3, 3, 4, 4));
  t.false(reference.refAllowed(causalSelf, TGT, TGT, 3, 3, 4, 3));
  const earlier = { item: { item: { seg: 'earlier' as const, causal: true } } };
  t.false(reference.refAllowed(earlier, ITEM, ITEM, 2, 2, 9, 1));
  t.true(reference.refAllowed(earlier, ITEM, ITEM, 2, 1, 9, 1));
  t.false(reference.refAllowed(earlier, ITEM, ITEM, 2, 1, 0, 1)); // earlier segment but a later position
});

// ---------------------------------------------------------------------------------------------
// maskedAttention arithmetic.

test('hand case: bottom-right causal alignment for Lq < Lk, lse, and a row with no allowed key', (t) => {
  const q = T([1, 0, 0, 1], [2, 1, 2]);
  const k = T([1, 0, 0, 1, 1, 1], [3, 1, 2]);
  const v = T([1, 2, 3], [3, 1, 1]);
  const layouts = { q: { offsets: i32([0, 2]) }, kv: { offsets: i32([0, 3]) } };
  const r = reference.maskedAttention(q, k, v, { ...layouts, scale: 1, returnLse: true });
  // query 0 stands at position 1: keys 0 and 1 with scores 1 and 0
  t.true(Math.abs(r.output.data[0] - (Math.E * 1 + 1 * 2) / (Math.E + 1)) < 1e-14);
  t.true(Math.abs(r.lse!.data[0] - Math.log(Math.E + 1)) < 1e-14);
  // query 1 stands at position 2: all keys, scores 0, 1, 1
  t.true(Math.abs(r.output.data[1] - (1 + Math.E * 2 + Math.E * 3) / (1 + 2 * Math.E)) < 1e-14);
  t.true(Math.abs(r.lse!.data[1] - Math.log(1 + 2 * Math.E)) < 1e-14);
  t.deepEqual(r.output.shape, [2, 1, 1]);
  t.deepEqual(r.lse!.shape, [2, 1]);
  const none = reference.maskedAttention(q, k, v, { ...layouts, rule: {}, returnLse: true });
  t.deepEqual(Array.from(none.output.data), [0, 0]);
  t.deepEqual(Array.from(none.lse!.data), [-Infinity, -Infinity]);
  t.is(reference.maskedAttention(q, k, v, layouts).lse, undefined);
});

test('default scale is 1/sqrt(D) and the default rule is causal', (t) => {
  const q = T([1, 1, 1, 1, 2, 0, 0, 0], [2, 1, 4]);
  const k = T([0, 0, 0, 0, 1, 2, 3, 4], [2, 1, 4]);
  const v = T([10, 20], [2, 1, 1]);
  const r = reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 2]) } });
  t.is(r.output.data[0], 10); // query 0 only sees key 0
  const s0 = 0, s1 = 2 / 2; // q1 · k1 = 2, scale 1/sqrt(4)
  t.true(Math.abs(r.output.data[1] - (Math.exp(s0) * 10 + Math.exp(s1) * 20) / (Math.exp(s0) + Math.exp(s1))) < 1e-12);
});

test('softmax rows sum to 1 (v = ones) on a jagged PerSRec batch; rows with no key are 0', (t) => {
  const rng = new Rng(7);
  // two sequences; the 'earlier-only' rule leaves segment-0 memory rows with no key
  const segments = i32([0, 0, 0, 1, 1, 1, 2, 2, /* second */ 0, 0, 1, 1, 1]);
  const roles = u8([ITEM, ITEM, MEM, ITEM, ITEM, MEM, TGT, TGT, ITEM, MEM, ITEM, MEM, TGT]);
  const layout = { offsets: i32([0, 8, 13]), segments, roles };
  const Tn = 13, H = 4, Hkv = 2, D = 8, Dv = 3;
  const q = T(rng.floats(Tn * H * D, 3), [Tn, H, D]), k = T(rng.floats(Tn * Hkv * D, 3), [Tn, Hkv, D]);
  const ones = T(new Float64Array(Tn * Hkv * Dv).fill(1), [Tn, Hkv, Dv]);
  for (const rule of ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'] as PresetName[]) {
    const r = reference.maskedAttention(q, k, ones, { q: layout, rule, returnLse: true });
    t.true(maxDiff(r.output.data, new Float64Array(Tn * H * Dv).fill(1)) < 1e-14, rule);
    t.true(r.lse!.data.every(Number.isFinite), rule);
  }
  const memEarlier = { memory: { item: { seg: 'earlier' as const, causal: true } } };
  const r = reference.maskedAttention(q, k, ones, { q: layout, rule: memEarlier, returnLse: true });
  for (let i = 0; i < Tn; i++) {
    const hasKey = roles[i] === MEM && segments[i] > 0;
    for (let h = 0; h < H; h++) {
      for (let c = 0; c < Dv; c++) t.true(Math.abs(r.output.data[(i * H + h) * Dv + c] - (hasKey ? 1 : 0)) < 1e-14, `row ${i}`);
      t.is(Number.isFinite(r.lse!.data[i * H + h]), hasKey, `lse row ${i}`);
    }
  }
});

test("'full' on one sequence equals naïve dense attention", (t) => {
  const rng = new Rng(11);
  const L = 6, H = 2, D = 5, Dv = 3, scale = 0.7;
  const q = rng.floats(L * H * D, 2), k = rng.floats(L * H * D, 2), v = rng.floats(L * H * Dv);
  const want = new Float64Array(L * H * Dv), wantLse = new Float64Array(L * H);
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < L; i++) {
      const e: number[] = [];
      for (let j = 0; j < L; j++) {
        let s = 0;
        for (let d = 0; d < D; d++) s += q[(i * H + h) * D + d] * k[(j * H + h) * D + d];
        e.push(Math.exp(s * scale)); // small scores: no max subtraction needed here
      }
      const z = e.reduce((a, b) => a + b, 0);
      wantLse[i * H + h] = Math.log(z);
      for (let j = 0; j < L; j++) for (let c = 0; c < Dv; c++) want[(i * H + h) * Dv + c] += (e[j] / z) * v[(j * H + h) * Dv + c];
    }
  }
  const r = reference.maskedAttention(T(q, [L, H, D]), T(k, [L, H, D]), T(v, [L, H, Dv]), { q: { offsets: i32([0, L]) }, rule: 'full', scale, returnLse: true });
  t.true(maxDiff(r.output.data, want) < 1e-13);
  t.true(maxDiff(r.lse!.data, wantLse) < 1e-13);
});

test('softmax is stable: huge scores give finite outputs', (t) => {
  const q = T([1000], [1, 1, 1]), k = T([1000, 999], [2, 1, 1]), v = T([1, 3], [2, 1, 1]);
  const r = reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 1]) }, kv: { offsets: i32([0, 2]) }, scale: 1, returnLse: true });
  // weights ∝ exp(1e6) and exp(999000): the second is e^-1000 smaller
  t.is(r.output.data[0], 1);
  t.true(Math.abs(r.lse!.data[0] - 1e6) < 1e-6);
});

test('cross attention with Lq < Lk equals the last Lq rows of self-attention (PerSRec inference)', (t) => {
  const rng = new Rng(5);
  // KV memory of the summary tokens M0 M1, then recent items and a target in segment 2
  const segs = [0, 1, 2, 2, 2], roles = [MEM, MEM, ITEM, ITEM, TGT];
  const L = 5, Lq = 3, H = 2, D = 4, Dv = 2;
  const x = rng.floats(L * H * D), k = rng.floats(L * H * D), v = rng.floats(L * H * Dv);
  for (const rule of ['causal', 'persrec'] as PresetName[]) {
    const self = reference.maskedAttention(T(x, [L, H, D]), T(k, [L, H, D]), T(v, [L, H, Dv]),
      { q: { offsets: i32([0, L]), segments: i32(segs), roles: u8(roles) }, rule, returnLse: true });
    const cross = reference.maskedAttention(T(x.slice((L - Lq) * H * D), [Lq, H, D]), T(k, [L, H, D]), T(v, [L, H, Dv]), {
      q: { offsets: i32([0, Lq]), segments: i32(segs.slice(L - Lq)), roles: u8(roles.slice(L - Lq)) },
      kv: { offsets: i32([0, L]), segments: i32(segs), roles: u8(roles) }, rule, returnLse: true,
    });
    t.deepEqual(Array.from(cross.output.data), Array.from(self.output.data.slice((L - Lq) * H * Dv)), rule);
    t.deepEqual(Array.from(cross.lse!.data), Array.from(self.lse!.data.slice((L - Lq) * H)), rule);
  }
  // and with Lq > Lk the first queries stand before every key: no causal key, zeros
  const r = reference.maskedAttention(T([1, 1, 1], [3, 1, 1]), T([1], [1, 1, 1]), T([5], [1, 1, 1]),
    { q: { offsets: i32([0, 3]) }, kv: { offsets: i32([0, 1]) }, returnLse: true });
  t.deepEqual(Array.from(r.output.data), [0, 0, 5]);
  t.deepEqual(Array.from(r.lse!.data), [-Infinity, -Infinity, 1]);
});

test('jagged batches never mix: each entry equals its own single-sequence call', (t) => {
  const rng = new Rng(9);
  const lens = [3, 0, 4], kvLens = [5, 2, 4], H = 2, D = 3, Dv = 2;
  const Tq = 7, Tk = 11;
  const q = rng.floats(Tq * H * D), k = rng.floats(Tk * H * D), v = rng.floats(Tk * H * Dv);
  const whole = reference.maskedAttention(T(q, [Tq, H, D]), T(k, [Tk, H, D]), T(v, [Tk, H, Dv]),
    { q: { offsets: i32([0, 3, 3, 7]) }, kv: { offsets: i32([0, 5, 7, 11]) }, rule: 'full' });
  let qo = 0, ko = 0;
  for (let b = 0; b < 3; b++) {
    const part = reference.maskedAttention(T(q.slice(qo * H * D, (qo + lens[b]) * H * D), [lens[b], H, D]),
      T(k.slice(ko * H * D, (ko + kvLens[b]) * H * D), [kvLens[b], H, D]), T(v.slice(ko * H * Dv, (ko + kvLens[b]) * H * Dv), [kvLens[b], H, Dv]),
      { q: { offsets: i32([0, lens[b]]) }, kv: { offsets: i32([0, kvLens[b]]) }, rule: 'full' });
    t.deepEqual(Array.from(whole.output.data.slice(qo * H * Dv, (qo + lens[b]) * H * Dv)), Array.from(part.output.data), `entry ${b}`);
    qo += lens[b]; ko += kvLens[b];
  }
});

test('silu normalisation: hand case, default divisor = longest key sequence, masked pairs add nothing', (t) => {
  const silu = (x: number) => x / (1 + Math.exp(-x));
  const q = T([1], [1, 1, 1]), k = T([2], [1, 1, 1]), v = T([3], [1, 1, 1]);
  const r = reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 1]) }, normalize: 'silu', scale: 1, siluDivisor: 4 });
  t.true(Math.abs(r.output.data[0] - silu(2) / 4 * 3) < 1e-15);
  // two sequences of 1 and 3 tokens: default divisor 3 for both
  const q2 = T([1, 1, 2, -1], [4, 1, 1]), k2 = T([1, 0.5, 1, 2], [4, 1, 1]), v2 = T([1, 2, 3, 4], [4, 1, 1]);
  const r2 = reference.maskedAttention(q2, k2, v2, { q: { offsets: i32([0, 1, 4]) }, normalize: 'silu', scale: 1 });
  t.true(Math.abs(r2.output.data[0] - silu(1) / 3 * 1) < 1e-15);
  t.true(Math.abs(r2.output.data[1] - silu(0.5) / 3 * 2) < 1e-15);
  t.true(Math.abs(r2.output.data[2] - (silu(1) * 2 + silu(2) * 3) / 3) < 1e-15);
  t.true(Math.abs(r2.output.data[3] - (silu(-0.5) * 2 + silu(-1) * 3 + silu(-2) * 4) / 3) < 1e-15);
  // weights are not normalised: v = ones does not sum to 1
  const ones = reference.maskedAttention(q2, k2, T([1, 1, 1, 1], [4, 1, 1]), { q: { offsets: i32([0, 1, 4]) }, normalize: 'silu', scale: 1, rule: 'full' });
  t.true(Math.abs(ones.output.data[3] - (silu(-0.5) + silu(-1) + silu(-2)) / 3) < 1e-15);
  // an empty batch entry does not break the divisor; all-empty keys fall back to 1
  const empty = reference.maskedAttention(T([], [0, 1, 1]), T([], [0, 1, 1]), T([], [0, 1, 1]), { q: { offsets: i32([0, 0]) }, normalize: 'silu' });
  t.is(empty.output.data.length, 0);
});

test('GQA: head h reads kv head floor(h / (H / Hkv)), equal to separate single-head calls', (t) => {
  const rng = new Rng(3);
  const L = 4, H = 6, Hkv = 2, D = 3, Dv = 2, group = H / Hkv;
  const q = rng.floats(L * H * D), k = rng.floats(L * Hkv * D), v = rng.floats(L * Hkv * Dv);
  const r = reference.maskedAttention(T(q, [L, H, D]), T(k, [L, Hkv, D]), T(v, [L, Hkv, Dv]), { q: { offsets: i32([0, L]) }, returnLse: true });
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / group);
    const pick = (src: number[], heads: number, head: number, w: number) =>
      Array.from({ length: L * w }, (_, n) => src[(Math.floor(n / w) * heads + head) * w + (n % w)]);
    const one = reference.maskedAttention(T(pick(q, H, h, D), [L, 1, D]), T(pick(k, Hkv, g, D), [L, 1, D]), T(pick(v, Hkv, g, Dv), [L, 1, Dv]),
      { q: { offsets: i32([0, L]) }, returnLse: true });
    t.deepEqual(pick(Array.from(r.output.data), H, h, Dv), Array.from(one.output.data), `head ${h} → kv head ${g}`);
  }
  // hand check: one key, v distinct per kv head → heads 0..2 read 7, heads 3..5 read 9
  const hand = reference.maskedAttention(T(new Array(6).fill(0), [1, 6, 1]), T([0, 0], [1, 2, 1]), T([7, 9], [1, 2, 1]), { q: { offsets: i32([0, 1]) } });
  t.deepEqual(Array.from(hand.output.data), [7, 7, 7, 9, 9, 9]);
});

test('maskedAttention input errors name the argument', (t) => {
  const q = T(new Array(16).fill(0), [4, 1, 4]), k = q, v = T(new Array(4).fill(0), [4, 1, 1]);
  const ok = { q: { offsets: i32([0, 4]) } };
  t.throws(() => reference.maskedAttention(T([0], [1, 1]), k, v, ok), { instanceOf: RangeError, message: /^q: expected rank 3/ });
  t.throws(() => reference.maskedAttention(T([0, 0], [1, 1, 1]), k, v, ok), { instanceOf: RangeError, message: /^q: shape/ });
  t.throws(() => reference.maskedAttention(q, T(new Array(8).fill(0), [4, 1, 2]), v, ok), { instanceOf: RangeError, message: /^k: head size/ });
  t.throws(() => reference.maskedAttention(q, k, T([0, 0, 0], [3, 1, 1]), ok), { instanceOf: RangeError, message: /^v: shape/ });
  t.throws(() => reference.maskedAttention(T(new Array(48).fill(0), [4, 3, 4]), T(new Array(32).fill(0), [4, 2, 4]), T(new Array(8).fill(0), [4, 2, 1]), ok),
    { instanceOf: RangeError, message: /^k: kv heads 2 must divide/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 3]) } }), { instanceOf: RangeError, message: /^options\.q\.offsets: the last offset/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 3, 1, 4]) } }), { instanceOf: RangeError, message: /^options\.q\.offsets: must be nondecreasing/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: { offsets: [0, 4] as never } }), { instanceOf: TypeError, message: /^options\.q\.offsets: expected an Int32Array/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 4]), roles: u8([0, 3, 0, 0]) } }), { instanceOf: RangeError, message: /^options\.q\.roles/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: { offsets: i32([0, 4]), segments: i32([0, 1]) } }), { instanceOf: RangeError, message: /^options\.q\.segments: expected 4 entries/ });
  t.throws(() => reference.maskedAttention(q, k, v, { q: ok.q, kv: { offsets: i32([0, 2, 4]) } }), { instanceOf: RangeError, message: /^options\.kv: batch 2 differs/ });
  t.throws(() => reference.maskedAttention(q, T(new Array(8).fill(0), [2, 1, 4]), T([0, 0], [2, 1, 1]), ok), { instanceOf: RangeError, message: /^k: self-attention/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, rule: 'diagonal' as never }), { instanceOf: RangeError, message: /^options\.rule: unknown preset 'diagonal'/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, rule: { user: {} } as never }), { instanceOf: RangeError, message: /^options\.rule: unknown query role 'user'/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, rule: { item: { item: { seg: 'later' as never, causal: true } } } }), { instanceOf: RangeError, message: /^options\.rule\.item\.item\.seg/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, normalize: 'silu', returnLse: true }), { instanceOf: RangeError, message: /^options\.returnLse/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, normalize: 'silu', siluDivisor: 0 }), { instanceOf: RangeError, message: /^options\.siluDivisor/ });
  t.throws(() => reference.maskedAttention(q, k, v, { ...ok, scale: Number.NaN }), { instanceOf: TypeError, message: /^options\.scale/ });
});

// ---------------------------------------------------------------------------------------------
// SPEC §5

test('indexerScores: hand case with relu, weights, jagged entries and a -Infinity tail', (t) => {
  // B = 2: query 0 → keys 0..2, queries 1, 2 → key 3 only; Hi = 2, Di = 2
  const qI = T([1, 0, 0, 1, /* q1 */ 1, 1, -1, -1, /* q2 */ 2, 0, 0, 0], [3, 2, 2]);
  const kI = T([1, 2, -3, 1, 0.5, -1, /* entry 1 */ 2, 3], [4, 2]);
  const w = T([1, 10, 0.5, 4, -1, 1], [3, 2]);
  const r = reference.indexerScores(qI, kI, w, { qOffsets: i32([0, 1, 3]), kOffsets: i32([0, 3, 4]) });
  t.deepEqual(r.shape, [3, 3]);
  t.deepEqual(Array.from(r.data), [
    1 * 1 + 10 * 2, 0 + 10 * 1, 1 * 0.5 + 0, // relu(-3) = 0, relu(-1) = 0
    0.5 * 5 + 4 * 0, -Infinity, -Infinity,  // relu(-5) = 0
    -1 * 4 + 1 * 0, -Infinity, -Infinity,
  ]);
  t.throws(() => reference.indexerScores(qI, kI, T([1, 2], [1, 2]), { qOffsets: i32([0, 1, 3]), kOffsets: i32([0, 3, 4]) }), { instanceOf: RangeError, message: /^w:/ });
  t.throws(() => reference.indexerScores(qI, kI, w, { qOffsets: i32([0, 3]), kOffsets: i32([0, 3, 4]) }), { instanceOf: RangeError, message: /^options\.kOffsets: batch/ });
  t.throws(() => reference.indexerScores(qI, kI, w, { qOffsets: i32([0, 1, 2]), kOffsets: i32([0, 3, 4]) }), { instanceOf: RangeError, message: /^options\.qOffsets/ });
});

test('topK: descending, ties by lower index, NaN and -Infinity never, +Infinity yes, -1 padding, lengths', (t) => {
  const r = reference.topK(T([1, NaN, 3, 3, -Infinity, Infinity, 0, 1], [1, 8]), 6);
  t.deepEqual(Array.from(r.indices.data), [5, 2, 3, 0, 7, 6]);
  t.deepEqual(Array.from(r.values.data), [Infinity, 3, 3, 1, 1, 0]);
  t.deepEqual(r.indices.shape, [1, 6]);
  // more k than candidates: padding
  const pad = reference.topK(T([NaN, 2, -Infinity, -5, /* row 1 */ 4, 4, 4, 4], [2, 4]), 5);
  t.deepEqual(Array.from(pad.indices.data), [1, 3, -1, -1, -1, 0, 1, 2, 3, -1]);
  t.deepEqual(Array.from(pad.values.data), [2, -5, -Infinity, -Infinity, -Infinity, 4, 4, 4, 4, -Infinity]);
  // lengths: row 0 only its first 2 columns, row 1 none, row 2 all
  const short = reference.topK(T([5, NaN, 7, 1, 2, 3, 9, 8, 7], [3, 3]), 2, { lengths: i32([2, 0, 3]) });
  t.deepEqual(Array.from(short.indices.data), [0, -1, -1, -1, 0, 1]);
  t.deepEqual(Array.from(short.values.data), [5, -Infinity, -Infinity, -Infinity, 9, 8]);
  // signed zeros tie and keep index order
  t.deepEqual(Array.from(reference.topK(T([-0, 0, -0], [1, 3]), 3).indices.data), [0, 1, 2]);
  // errors
  t.throws(() => reference.topK(T([1, 2], [1, 2]), 0), { instanceOf: RangeError, message: /^k:/ });
  t.throws(() => reference.topK(T([1, 2], [1, 2]), 1, { lengths: i32([3]) }), { instanceOf: RangeError, message: /^options\.lengths/ });
  t.throws(() => reference.topK(T([1, 2], [1, 2]), 1, { lengths: i32([1, 1]) }), { instanceOf: RangeError, message: /^options\.lengths/ });
});

test('topK agrees with a full stable sort on random rows with many ties', (t) => {
  const rng = new Rng(21);
  const N = 6, M = 50;
  const data = Array.from({ length: N * M }, () => (rng.next() < 0.1 ? NaN : Math.round(rng.next() * 8) - 4));
  for (const k of [1, 5, 50, 60]) {
    const r = reference.topK(T(data, [N, M]), k);
    for (let row = 0; row < N; row++) {
      const idx = Array.from({ length: M }, (_, j) => j).filter((j) => !Number.isNaN(data[row * M + j]));
      idx.sort((a, b) => data[row * M + b] - data[row * M + a] || a - b);
      const want = Array.from({ length: k }, (_, n) => (n < idx.length ? idx[n] : -1));
      t.deepEqual(Array.from(r.indices.data.slice(row * k, row * k + k)), want, `row ${row} k ${k}`);
    }
  }
});

test('sparseAttention equals maskedAttention over the gathered selected keys (duplicates, -1, empty rows)', (t) => {
  const rng = new Rng(13);
  const H = 4, Hkv = 2, D = 5, Dv = 3, K = 4;
  const qOffsets = i32([0, 2, 3, 5]), kOffsets = i32([0, 6, 6, 9]); // entry 1 has no keys
  const Nq = 5, Tk = 9;
  const q = rng.floats(Nq * H * D, 2), k = rng.floats(Tk * Hkv * D, 2), v = rng.floats(Tk * Hkv * Dv);
  const indices = i32([
    5, 0, -1, 2,   // entry 0
    3, 3, 1, -1,   // duplicate 3: counted twice
    -1, -1, -1, -1, // entry 1 (no keys): nothing
    2, 0, 1, -1,   // entry 2 (keys 6..8)
    -1, -1, 1, -1,
  ]);
  const r = reference.sparseAttention(T(q, [Nq, H, D]), T(k, [Tk, Hkv, D]), T(v, [Tk, Hkv, Dv]), T(indices, [Nq, K]), { qOffsets, kOffsets, returnLse: true });
  // the same via maskedAttention: every query its own batch entry, kv = its selected keys, rule full
  const entryOf = (i: number) => (i < 2 ? 0 : i < 3 ? 1 : 2);
  const gk: number[] = [], gv: number[] = [], kvOff = [0];
  for (let i = 0; i < Nq; i++) {
    for (let n = 0; n < K; n++) {
      const j = indices[i * K + n];
      if (j < 0) continue;
      const row = kOffsets[entryOf(i)] + j;
      gk.push(...k.slice(row * Hkv * D, (row + 1) * Hkv * D));
      gv.push(...v.slice(row * Hkv * Dv, (row + 1) * Hkv * Dv));
    }
    kvOff.push(gk.length / (Hkv * D));
  }
  const Tg = kvOff[Nq];
  const m = reference.maskedAttention(T(q, [Nq, H, D]), T(gk, [Tg, Hkv, D]), T(gv, [Tg, Hkv, Dv]),
    { q: { offsets: i32([0, 1, 2, 3, 4, 5]) }, kv: { offsets: i32(kvOff) }, rule: 'full', returnLse: true });
  t.true(maxDiff(r.output.data, m.output.data) < 1e-14);
  t.true(maxDiff(r.lse!.data, m.lse!.data) < 1e-14);
  t.deepEqual(Array.from(r.output.data.slice(2 * H * Dv, 3 * H * Dv)), new Array(H * Dv).fill(0));
  t.deepEqual(Array.from(r.lse!.data.slice(2 * H, 3 * H)), new Array(H).fill(-Infinity));
  // a duplicate really counts twice: [3, 3, 1] differs from [3, 1]
  const once = reference.sparseAttention(T(q.slice(H * D, 2 * H * D), [1, H, D]), T(k, [Tk, Hkv, D]), T(v, [Tk, Hkv, Dv]), T([3, 1], [1, 2]),
    { qOffsets: i32([0, 1, 1, 1]), kOffsets });
  t.true(maxDiff(once.output.data, r.output.data.slice(H * Dv, 2 * H * Dv)) > 1e-6);
});

test('sparseAttention rejects indices outside [-1, L(i)) with a RangeError naming indices', (t) => {
  const q = T([1, 1], [2, 1, 1]), k = T([1, 2, 3], [3, 1, 1]), v = k;
  const opts = { qOffsets: i32([0, 1, 2]), kOffsets: i32([0, 2, 3]) };
  t.notThrows(() => reference.sparseAttention(q, k, v, T([1, -1, 0, -1], [2, 2]), opts));
  t.throws(() => reference.sparseAttention(q, k, v, T([2, 0, 0, 0], [2, 2]), opts), { instanceOf: RangeError, message: /^indices: entry \[0, 0\] = 2/ });
  t.throws(() => reference.sparseAttention(q, k, v, T([0, 0, 1, 0], [2, 2]), opts), { instanceOf: RangeError, message: /^indices: entry \[1, 0\] = 1/ }); // entry 1 has one key
  t.throws(() => reference.sparseAttention(q, k, v, T([0, -2, 0, 0], [2, 2]), opts), { instanceOf: RangeError, message: /^indices:/ });
  t.throws(() => reference.sparseAttention(q, k, v, T([0, 0], [1, 2]), opts), { instanceOf: RangeError, message: /^indices: expected 2 rows/ });
});

test('indexedCrossAttention = indexerScores → topK → sparseAttention', (t) => {
  const rng = new Rng(17);
  const Nq = 4, Tk = 12, Hi = 2, Di = 4, H = 2, D = 4, Dv = 2, topk = 3;
  const qOffsets = i32([0, 3, 4]), kOffsets = i32([0, 10, 12]);
  const ix = { q: T(rng.floats(Nq * Hi * Di), [Nq, Hi, Di]), k: T(rng.floats(Tk * Di), [Tk, Di]), w: T(rng.floats(Nq * Hi), [Nq, Hi]) };
  const q = T(rng.floats(Nq * H * D), [Nq, H, D]), k = T(rng.floats(Tk * H * D), [Tk, H, D]), v = T(rng.floats(Tk * H * Dv), [Tk, H, Dv]);
  const r = reference.indexedCrossAttention(q, k, v, { indexer: ix, topK: topk, qOffsets, kOffsets, scale: 0.3 });
  const scores = reference.indexerScores(ix.q, ix.k, ix.w, { qOffsets, kOffsets });
  const chosen = reference.topK(scores, topk);
  const want = reference.sparseAttention(q, k, v, chosen.indices, { qOffsets, kOffsets, scale: 0.3 });
  t.deepEqual(Array.from(r.indices.data), Array.from(chosen.indices.data));
  t.deepEqual(Array.from(r.output.data), Array.from(want.output.data));
  // the selection really is the best-scoring keys of each query's own entry
  for (let i = 0; i < Nq; i++) {
    const L = i < 3 ? 10 : 2;
    const row = Array.from(scores.data.slice(i * 10, i * 10 + L));
    const best = row.map((s, j) => [s, j]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, topk).map((p) => p[1]);
    while (best.length < topk) best.push(-1);
    t.deepEqual(Array.from(r.indices.data.slice(i * topk, i * topk + topk)), best, `query ${i}`);
  }
});

// ---------------------------------------------------------------------------------------------
// float16 / bfloat16 (IEEE 754 binary16 and bfloat16, round to nearest even).

test('float16: known bit patterns, overflow, subnormals, ties to even', (t) => {
  const h = reference.float32ToFloat16Bits;
  t.is(h(1), 0x3c00);
  t.is(h(-2), 0xc000);
  t.is(h(0.5), 0x3800);
  t.is(h(65504), 0x7bff);                // largest finite
  t.is(h(65519.99), 0x7bff);             // just below the halfway point to 2^16
  t.is(h(65520), 0x7c00);                // halfway: rounds to even = infinity
  t.is(h(1e6), 0x7c00);
  t.is(h(-Infinity), 0xfc00);
  t.is(h(2 ** -14), 0x0400);             // smallest normal
  t.is(h(2 ** -24), 0x0001);             // smallest subnormal
  t.is(h(2 ** -25), 0x0000);             // halfway to 0: even
  t.is(h(2 ** -25 * 1.0001), 0x0001);    // above halfway
  t.is(h(3 * 2 ** -25), 0x0002);         // halfway between 1 and 2 ulps: even (2)
  t.is(h(2 ** -14 - 2 ** -25), 0x0400);  // largest subnormal + half ulp: rounds up into the normals
  t.is(h(1 + 2 ** -11), 0x3c00);         // halfway, even stays
  t.is(h(1 + 3 * 2 ** -11), 0x3c02);     // halfway, odd rounds up
  t.is(h(2047), 0x67ff);
  t.is(h(2049), 0x6800);                 // 2049 halfway between 2048 and 2050: even mantissa (2048)
  t.is(h(0.1), 0x2e66);
  t.is(h(-0), 0x8000);
  t.is(h(0), 0x0000);
  t.is(h(NaN), 0x7e00);
  const f = reference.float16BitsToFloat32;
  t.is(f(0x3c00), 1);
  t.is(f(0x7bff), 65504);
  t.is(f(0x0001), 2 ** -24);
  t.is(f(0x03ff), 2 ** -14 - 2 ** -24);
  t.is(f(0x7c00), Infinity);
  t.is(f(0xfc00), -Infinity);
  t.true(Object.is(f(0x8000), -0));
  t.true(Number.isNaN(f(0x7e00)) && Number.isNaN(f(0x7c01)));
});

test('bfloat16: known bit patterns, overflow, ties to even', (t) => {
  const b = reference.float32ToBfloat16Bits;
  t.is(b(1), 0x3f80);
  t.is(b(-3), 0xc040);
  t.is(b(1 + 2 ** -8), 0x3f80);          // halfway, even stays
  t.is(b(1 + 3 * 2 ** -8), 0x3f82);      // halfway, odd rounds up
  t.is(b(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  t.is(b(3.4028234663852886e38), 0x7f80); // float32 max rounds to infinity
  t.is(b(3.3895313892515355e38), 0x7f7f); // bfloat16 max
  t.is(b(2 ** -133), 0x0001);            // smallest bfloat16 subnormal
  t.is(b(2 ** -126), 0x0080);
  t.is(b(65504), 0x4780);
  t.is(b(-0), 0x8000);
  t.is(b(Infinity), 0x7f80);
  t.is(b(NaN), 0x7fc0);
  t.is(b(1 + 2 ** -30), 0x3f80); // the JS number is rounded to float32 first
  const f = reference.bfloat16BitsToFloat32;
  t.is(f(0x3f80), 1);
  t.is(f(0xc040), -3);
  t.is(f(0x0001), 2 ** -133);
  t.is(f(0xff80), -Infinity);
  t.true(Number.isNaN(f(0x7fc0)));
});

test('every 16-bit pattern round-trips, and midpoints between neighbours round to the even one', (t) => {
  for (const [name, enc, dec] of [
    ['float16', reference.float32ToFloat16Bits, reference.float16BitsToFloat32],
    ['bfloat16', reference.float32ToBfloat16Bits, reference.bfloat16BitsToFloat32],
  ] as const) {
    const inf = name === 'float16' ? 0x7c00 : 0x7f80;
    let bad = '';
    for (let bits = 0; bits < 0x10000 && !bad; bits++) {
      const x = dec(bits);
      if (Number.isNaN(x)) { if ((bits & 0x7fff) <= inf) bad = `0x${bits.toString(16)} decodes to NaN`; continue; }
      if (Math.fround(x) !== x) bad = `0x${bits.toString(16)} is not a float32 value`;
      else if (enc(x) !== bits) bad = `0x${bits.toString(16)} → ${x} → 0x${enc(x).toString(16)}`;
      const mag = bits & 0x7fff;
      if (!bad && mag < inf) {
        // next magnitude up (inf for the largest finite); the midpoint is a float32 value
        const up = dec(mag + 1), lo = dec(mag);
        const mid = (lo + up) / 2;
        if (up !== Infinity && Math.fround(mid) === mid) {
          const sign = bits & 0x8000;
          const want = sign | ((mag & 1) === 0 ? mag : mag + 1);
          if (enc(sign ? -mid : mid) !== want) bad = `midpoint above 0x${bits.toString(16)}: got 0x${enc(sign ? -mid : mid).toString(16)}`;
          const nudged = mid + (up - lo) / 8; // clearly above the midpoint
          if (enc(sign ? -nudged : nudged) !== (sign | (mag + 1))) bad = `above the midpoint of 0x${bits.toString(16)}`;
        }
      }
    }
    t.is(bad, '', name);
  }
});

test('array helpers convert element-wise', (t) => {
  const xs = [1, -2.5, 65504, 1e-8, 0.1, NaN];
  const h = reference.toFloat16Array(xs);
  t.true(h instanceof Uint16Array);
  t.deepEqual(Array.from(h), xs.map(reference.float32ToFloat16Bits));
  const bf = reference.toBfloat16Array(Float32Array.from(xs));
  t.deepEqual(Array.from(bf), xs.map(reference.float32ToBfloat16Bits));
  const back = reference.fromFloat16Array(h);
  t.true(back instanceof Float32Array);
  t.deepEqual(Array.from(back.slice(0, 5)), [1, -2.5, 65504, reference.float16BitsToFloat32(h[3]), Math.fround(reference.float16BitsToFloat32(0x2e66))]);
  t.true(Number.isNaN(back[5]));
  t.deepEqual(Array.from(reference.fromBfloat16Array(Uint16Array.from([0x3f80, 0xc040]))), [1, -3]);
});
