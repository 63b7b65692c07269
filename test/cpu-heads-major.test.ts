// The CPU's heads-major kernel (native/cpu/attention_heads_cpu.cc): few-query cross attention (at
// most 8 queries per sequence: 4-row kernels per group of 4 rows, a lone row (1 or 5 rows) at a
// time; rows of a group whose allowed keys differ take their values a row at a time), every head of
// a row per key block. Forced onto every instruction-set
// path this CPU runs and compared with the reference on randomized jagged batches: every preset and
// random custom rules, GQA, Dv != D, heads 1 / 2 / 4 / 8 / 16, empty and length-1 sequences, lse,
// float32 / float16 / bfloat16, and batches of 1 or 2 users with long histories, whose keys are split
// over the pool and combined by split softmax.
import test from 'ava';
import { backends, DType } from '../lib/index';
import type { MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { checkCpuAttention, randomRule, randomSequence, Rng, Seq } from './helpers';

const PATHS = backends().cpu.isaPaths;
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];


const kindOf = (rule: PresetName | MaskRule) => (typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed');
// Query sequences of 0..maxQ tokens (a few empty, a few of length 1) cut from a layout of `kind`.
function fewQueries(rng: Rng, kind: PresetName | 'mixed', batch: number, maxQ: number): Seq[] {
  return Array.from({ length: batch }, () => {
    const s = randomSequence(rng, kind, 6);
    const n = Math.min(s.roles.length, rng.pick([0, 1, rng.int(1, maxQ), maxQ]));
    return { segments: s.segments.slice(0, n), roles: s.roles.slice(0, n) };
  });
}
function histories(rng: Rng, kind: PresetName | 'mixed', batch: number, maxItems: number): Seq[] {
  return Array.from({ length: batch }, () => (rng.bool(0.15) ? { segments: [], roles: [] } : randomSequence(rng, kind, rng.int(1, maxItems))));
}
function heads(rng: Rng, choices: number[]): { heads: number; kvHeads: number } {
  const h = rng.pick(choices);
  return { heads: h, kvHeads: rng.pick([1, 2, 4, 8, 16].filter((g) => g <= h && h % g === 0)) };
}

for (const isa of PATHS) {
  for (const dtype of DTYPES) {
    test.serial(`few-query cross attention, all heads per key block, on ${isa}, ${dtype} = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 7717 + dtype.length * 31);
      for (let round = 0; round < 8; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const batch = rng.int(6, 14);
        await checkCpuAttention(t, { rule, qSeqs: fewQueries(rng, kindOf(rule), batch, rng.pick([4, 8])), kSeqs: histories(rng, kindOf(rule), batch, 60),
          ...heads(rng, [1, 2, 4, 8, 16]), D: rng.pick([8, 16, 32, 64]), Dv: rng.pick([8, 24, 64, 72]) }, dtype, rng, `round ${round} on ${isa}`);
      }
    });

    test.serial(`few users with long histories (keys split over the pool, split softmax) on ${isa}, ${dtype} = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 613 + dtype.length * 97);
      for (let round = 0; round < 6; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const batch = rng.int(1, 2);
        await checkCpuAttention(t, { rule, qSeqs: fewQueries(rng, kindOf(rule), batch, rng.pick([4, 5, 8])).map((s) => (s.roles.length ? s : { segments: [0], roles: [0] })),
          kSeqs: Array.from({ length: batch }, () => randomSequence(rng, kindOf(rule), rng.int(600, 1200))),
          ...heads(rng, [1, 4, 8]), D: rng.pick([16, 64]), Dv: rng.pick([8, 64]) }, dtype, rng, `round ${round} on ${isa}`);
      }
    });

    test.serial(`few queries (5..8 rows: 4-row groups and a lone 5th row) of 8 or 16 small heads (D <= 32) on ${isa}, ${dtype} = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 4513 + dtype.length * 7);
      for (let round = 0; round < 7; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const batch = rng.int(4, 12);
        const qSeqs = Array.from({ length: batch }, () => {
          const s = randomSequence(rng, kindOf(rule), 12);
          const n = Math.min(s.roles.length, rng.pick([0, 1, rng.int(5, 8), 8]));
          return { segments: s.segments.slice(0, n), roles: s.roles.slice(0, n) };
        });
        const D = rng.pick([8, 16, 32]);
        await checkCpuAttention(t, { rule, qSeqs, ...heads(rng, [8, 16]), D, Dv: rng.pick([8, 16, 32].filter((x) => x !== D || rng.bool())) },
          dtype, rng, `round ${round} on ${isa}`);
      }
    });
  }
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
