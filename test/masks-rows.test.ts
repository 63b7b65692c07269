// The tiled CPU kernel's per-tile and per-block fixed work (native/cpu/attention_cpu.cc): key tiles are
// packed for every kv head in one task (whole K / V rows read in order, head g's panels and
// finiteness flag written apart), query rows are loaded row by row over the head group, and the
// online softmax takes a batch of 8 rows' rescale factors from one exp. Property test on random jagged
// layouts shaped like the memory-token presets (segments of items and memory tokens, several key tiles
// per sequence so that tiles get packed), every preset and random custom rules, 1-4 kv heads with
// GQA, Dv != D, Inf / NaN in one kv head's V or K rows (that head's panel is non-finite, the others
// not: a masked key's value must not leak, SPEC §3), scores growing along the keys (each row's max
// moves block after block, so the rescale factors are not 1), every ISA path this CPU runs, float32 /
// float16 / bfloat16; all against the reference.
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { DType, MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { compare, makeInput, nonFiniteMismatch, pack, randomRule, randomSequence, Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const PRESETS: PresetName[] = ['persrec', 'rec2pm-update', 'rec2pm-reference', 'causal', 'full'];
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];

for (const isa of PATHS) for (const dtype of DTYPES) {
  test.serial(`maskedAttention cpu on ${isa}, ${dtype}: panels of all kv heads per tile, row-wise Q, batched rescale = reference`, async (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(9107 + 31 * isa.length + 7 * dtype.length);
    for (let round = 0; round < (dtype === 'float32' ? 12 : 7); round++) {
      const rule: PresetName | MaskRule = round < PRESETS.length ? PRESETS[round] : rng.bool() ? rng.pick(PRESETS) : randomRule(rng);
      const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
      const batch = rng.int(1, 3);
      // The first sequence spans several 64-key tiles; the others may be empty or a single token.
      const seqs = Array.from({ length: batch }, (_, b) => {
        if (b > 0 && rng.bool(0.3)) return rng.bool() ? { segments: [], roles: [] } : { segments: [0], roles: [0] };
        for (;;) {
          const s = randomSequence(rng, kind, b === 0 ? 90 : 40);
          if (b > 0 || s.roles.length >= 130) return s;
        }
      });
      const layout = pack(seqs);
      const T = layout.offsets[batch];
      const kvHeads = rng.pick([1, 2, 3, 4, 4]), heads = kvHeads * rng.pick([1, 2]);
      // Dv a multiple of the micro-kernels' 16 columns: masked blocks may read a finite panel's V rows in place.
      const D = rng.pick([8, 16, 32, 64]), Dv = rng.pick([16, 24, 48, 64, 64, 72]);
      const qData = rng.floats(T * heads * D, 2);
      // Keys whose scores grow along the sequence: a row's running max moves in each later block.
      const kData = rng.floats(T * kvHeads * D, 2);
      if (round % 2 === 0) for (let i = 0; i < T; i++) for (let x = 0; x < kvHeads * D; x++) kData[i * kvHeads * D + x] += (3 * i) / Math.max(1, T);
      const vData = rng.floats(T * kvHeads * Dv);
      // Inf / NaN in one kv head's rows only: its panels are flagged non-finite, the other heads' not.
      const special = round % 3 === 1 ? NaN : round % 3 === 2 ? Infinity : 0;
      const specialHead = kvHeads - 1;  // past head 0: each head's flag must be its own
      if (special !== 0 && T > 0) {
        for (let n = 0; n < 6; n++) vData[(rng.int(0, T - 1) * kvHeads + specialHead) * Dv + rng.int(0, Dv - 1)] = special;
        if (rng.bool(0.5)) kData[(rng.int(0, T - 1) * kvHeads + specialHead) * D + rng.int(0, D - 1)] = -special;
      }
      const q = await makeInput(qData, [T, heads, D], dtype, 'cpu');
      const k = await makeInput(kData, [T, kvHeads, D], dtype, 'cpu');
      const v = await makeInput(vData, [T, kvHeads, Dv], dtype, 'cpu');
      const options = { q: { offsets: layout.offsets, segments: layout.segments, roles: layout.roles }, rule, returnLse: true };
      const got = await maskedAttention(q.t, k.t, v.t, options);
      const ref = reference.maskedAttention({ data: q.exact, shape: [T, heads, D] }, { data: k.exact, shape: [T, kvHeads, D] },
        { data: v.exact, shape: [T, kvHeads, Dv] }, options);
      const what = `round ${round} on ${isa}, ${dtype}: rule ${typeof rule === 'string' ? rule : JSON.stringify(rule)} lengths ${layout.lengths} ` +
        `H=${heads}/${kvHeads} D=${D} Dv=${Dv} special ${special} in kv head ${specialHead}`;
      const out = await got.output.float32();
      const refOut = Float64Array.from(ref.output.data);
      t.is(nonFiniteMismatch(out, refOut), '', what);
      t.is(compare(out, refOut, dtype, 'output'), '', what);
      const lse = await got.lse!.float32();
      const refLse = Float64Array.from(ref.lse!.data);
      t.is(nonFiniteMismatch(lse, refLse), '', what);
      t.is(compare(lse, refLse, 'float32', 'lse'), '', what);
      for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
    }
  });
}
