// Native bfloat16 attention on the AVX512-BF16 path (native/cpu/attention_cpu.cc bf16_scores /
// bf16_pv: vdpbf16ps on bf16 pair panels, float32 accumulation). Blocks whose K^T and V the float32
// path would read from packed panels in place run natively; the rest keeps the float32 code. Randomized
// jagged batches against the reference at SPEC §7's bfloat16 tolerance: every preset, random custom
// rules, GQA, Dv != D, odd D, empty and length-1 sequences, lengths off multiples of 64, lse, silu,
// and NaN / Inf in V on keys some rows may not see. Every case checks through _cpuBf16NativeBlocks
// that native blocks ran.
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { checkCpuAttention, compare, makeInput, nonFiniteMismatch, pack, randomLength, randomRule, randomSequence, Rng, Seq } from './helpers';

const PATHS = backends().cpu.isaPaths;
const ISA = 'avx512bf16';
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const blocks = () => native()._cpuBf16NativeBlocks();
// D (odd ones included) and Dv (the native path takes multiples of 32, the AVX-512 GEMM's width).
const SHAPES = [{ heads: 4, kvHeads: 4, D: 64, Dv: 64 }, { heads: 4, kvHeads: 2, D: 64, Dv: 32 }, { heads: 2, kvHeads: 1, D: 33, Dv: 64 },
  { heads: 3, kvHeads: 3, D: 16, Dv: 32 }, { heads: 2, kvHeads: 2, D: 7, Dv: 96 }, { heads: 6, kvHeads: 3, D: 128, Dv: 32 }];

// A batch whose first sequence is long (whole key tiles, so packed panels) with one segment of items
// first; then empty, length-1, tile-edge and preset-shaped sequences.
function batchOf(rng: Rng, kind: PresetName | 'mixed'): Seq[] {
  const n = rng.pick([97, 130, 191, 257, 300]);
  // An odd cut puts the second segment's keys at odd panel columns: V pairs do not line up there, so
  // those blocks widen their rows (bfloat16 calls pack no float32 V panels).
  const cut = rng.pick([150, 149, 107, 131]);
  const long: Seq = { segments: [], roles: [] };
  for (let i = 0; i < n; i++) {
    long.segments.push(i < cut ? 0 : 1);
    long.roles.push(i < cut || rng.bool(0.8) ? 0 : rng.pick([1, 2]));
  }
  const seqs = [long, { segments: [], roles: [] }, { segments: [0], roles: [0] }];
  for (let b = rng.int(1, 3); b > 0; b--) {
    if (rng.bool(0.4)) {
      const len = randomLength(rng, 140);
      seqs.push({ segments: Array.from({ length: len }, (_, i) => Math.floor(i / 70)), roles: Array.from({ length: len }, () => rng.pick([0, 0, 0, 1, 2])) });
    } else {
      seqs.push(randomSequence(rng, kind, 120));
    }
  }
  return seqs;
}

// A random rule in which items see earlier items of their segment (or more): the long sequence's
// first segment then has whole key tiles, and the native path something to take.
function ruleWithItems(rng: Rng): MaskRule {
  const rule = randomRule(rng);
  rule.item = { ...(rule.item ?? {}), item: { seg: rng.pick(['same', 'same-or-earlier', 'any'] as const), causal: rng.bool() } };
  return rule;
}

if (!PATHS.includes(ISA)) {
  test.skip(`native bfloat16: skipped, this CPU / build has no ${ISA} path (isaPaths: ${PATHS.join(', ')})`, () => {});
} else {
  test.serial('native bfloat16 on avx512bf16: presets and random rules, jagged layouts = reference, native blocks ran', async (t) => {
    native()._setCpuIsa(ISA);
    const rng = new Rng(1414);
    for (let round = 0; round < 18; round++) {
      const rule: PresetName | MaskRule = round < PRESETS.length ? PRESETS[round] : round < 2 * PRESETS.length ? PRESETS[round - PRESETS.length] : ruleWithItems(rng);
      const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
      const shape = SHAPES[round % SHAPES.length];
      const silu = round % 7 === 6;
      const before = blocks();
      await checkCpuAttention(t, { rule, qSeqs: batchOf(rng, kind), ...shape, silu }, 'bfloat16', rng, `round ${round}${silu ? ' (silu)' : ''}`);
      t.true(blocks() > before, `round ${round} ${JSON.stringify(shape)}: native bfloat16 blocks ran`);
    }
  });

  // V values +-Inf / NaN on keys that only some rows may see: a packed tile whose V panel is not all
  // finite serves masked blocks through the float32 exact path and whole blocks natively (every key
  // allowed: the non-finite value reaches exactly the rows that see it, as in the reference).
  test.serial('native bfloat16 on avx512bf16: NaN / Inf in V follow SPEC §3 (allowed pairs only)', async (t) => {
    native()._setCpuIsa(ISA);
    const rng = new Rng(77);
    for (const [round, rule] of (['causal', 'persrec', 'causal', 'rec2pm-update'] as PresetName[]).entries()) {
      const { heads, kvHeads, D, Dv } = SHAPES[round % 3];
      const seqs = batchOf(rng, rule === 'causal' ? 'mixed' : rule);
      const layout = pack(seqs);
      const T = layout.offsets[seqs.length];
      const vData = rng.floats(T * kvHeads * Dv);
      // Keys 5 and 70 of the long sequence (inside its first two key tiles), and one random key.
      const special = round % 2 ? NaN : Infinity;
      for (const key of [5, 70, rng.int(0, T - 1)]) for (let c = 0; c < kvHeads * Dv; c += 3) vData[key * kvHeads * Dv + c] = c % 2 ? special : -special;
      const q = await makeInput(rng.floats(T * heads * D, 2), [T, heads, D], 'bfloat16', 'cpu');
      const k = await makeInput(rng.floats(T * kvHeads * D, 2), [T, kvHeads, D], 'bfloat16', 'cpu');
      const v = await makeInput(vData, [T, kvHeads, Dv], 'bfloat16', 'cpu');
      const options = { q: { offsets: layout.offsets, segments: layout.segments, roles: layout.roles }, rule, returnLse: true };
      const before = blocks();
      const got = await maskedAttention(q.t, k.t, v.t, options);
      const ref = reference.maskedAttention({ data: q.exact, shape: [T, heads, D] }, { data: k.exact, shape: [T, kvHeads, D] },
        { data: v.exact, shape: [T, kvHeads, Dv] }, options);
      const what = `round ${round}, ${rule}, V special ${special}, lengths ${layout.lengths}`;
      const out = await got.output.float32();
      const refOut = Float64Array.from(ref.output.data);
      t.is(nonFiniteMismatch(out, refOut), '', what);
      t.true(refOut.some((_, i) => !Number.isFinite(ref.output.data[i])), `${what}: some row sees a non-finite value`);
      t.is(compare(out, refOut, 'bfloat16', 'output'), '', what);
      t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', what);
      t.true(blocks() > before, `${what}: native bfloat16 blocks ran`);
      for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
    }
  });

  test.serial('native bfloat16: float16, float32, Dv off multiples of 32 and other paths keep the float32 code', async (t) => {
    const rng = new Rng(5);
    const seqs = batchOf(rng, 'mixed');
    native()._setCpuIsa(ISA);
    for (const [dtype, Dv] of [['float16', 64], ['float32', 64], ['bfloat16', 48]] as const) {
      const before = blocks();
      await checkCpuAttention(t, { rule: 'causal', qSeqs: seqs, heads: 2, kvHeads: 2, D: 64, Dv }, dtype, rng, `${dtype} Dv=${Dv}`);
      t.is(blocks(), before, `${dtype} Dv=${Dv}: no native bfloat16 blocks`);
    }
    native()._setCpuIsa('avx512');
    const before = blocks();
    await checkCpuAttention(t, { rule: 'causal', qSeqs: seqs, heads: 2, kvHeads: 2, D: 64, Dv: 64 }, 'bfloat16', rng, 'bfloat16 on avx512');
    t.is(blocks(), before, 'bfloat16 on avx512: no native bfloat16 blocks');
  });

  test.serial.after.always('restore the default path', () => {
    native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
  });
}
