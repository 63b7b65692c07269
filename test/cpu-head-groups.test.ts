// The CPU attention's head groups (native/cpu/attention_cpu.cc, group_heads): small heads are computed
// several per task, and when every query tile holds a few queries all heads of a (sequence, query
// tile) share each key block. Forced onto every instruction-set path this CPU runs and compared with
// the reference on randomized jagged batches: every preset and random custom rules, GQA, Dv != D,
// empty and length-1 sequences, lse. Batches hold many query tiles so that groups are not shrunk
// for lack of tasks on machines with a few cores.
import test from 'ava';
import { backends, DType } from '../lib/index';
import type { PresetName } from '../lib/index';
import { native } from '../lib/native';
import { checkCpuAttention, randomLength, randomRule, randomSequence, Rng, Seq } from './helpers';

const PATHS = backends().cpu.isaPaths;
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];

function sequences(rng: Rng, kind: PresetName | 'mixed', batch: number, maxLen: number): Seq[] {
  return Array.from({ length: batch }, () => {
    if (rng.bool(0.25)) {  // empty, length 1, tile edges
      const n = Math.min(maxLen, randomLength(rng, maxLen));
      return { segments: Array.from({ length: n }, (_, i) => Math.floor((i * 2) / Math.max(1, n))), roles: Array.from({ length: n }, () => rng.pick([0, 0, 1, 2])) };
    }
    const s = randomSequence(rng, kind, 20);
    return { segments: s.segments.slice(0, maxLen), roles: s.roles.slice(0, maxLen) };
  });
}


for (const isa of PATHS) {
  for (const dtype of ['float32', 'bfloat16'] as DType[]) {
    test.serial(`small heads (D <= 32) grouped per task on ${isa}, ${dtype} = reference (every preset, custom rules, GQA)`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 7919 + dtype.length * 13);
      for (let round = 0; round < 9; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
        const batch = rng.int(12, 30);
        const qSeqs = sequences(rng, kind, batch, 90);
        const kSeqs = rng.bool(0.25) ? sequences(rng, kind, batch, 90) : undefined;
        const kvHeads = rng.pick([1, 2, 4]), heads = kvHeads * rng.pick([1, 2, 4]);
        await checkCpuAttention(t, { rule, qSeqs, kSeqs, heads: Math.max(2, heads), kvHeads: heads < 2 ? 1 : kvHeads,
          D: rng.pick([4, 8, 16, 32]), Dv: rng.pick([4, 8, 16, 24, 32]), silu: rng.bool(0.15) }, dtype, rng, `round ${round} on ${isa}`);
      }
    });

    test.serial(`heads of D 40-128 grouped up to 256 columns per task on ${isa}, ${dtype} = reference (every preset, custom rules, GQA, Dv != D)`, async (t) => {
      // Sequences over several query and key tiles (packed panels, partial tiles, per-segment row
      // ranges), so that a task's heads share every kind of key block.
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 6151 + dtype.length * 29);
      for (let round = 0; round < 7; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
        const batch = rng.int(6, 12);
        const qSeqs = sequences(rng, kind, batch, 200).map((s) => (rng.bool(0.5) ? s : randomSequence(rng, kind, 60)));
        const kSeqs = rng.bool(0.25) ? qSeqs.map((s) => (rng.bool(0.7) ? s : randomSequence(rng, kind, 60))) : undefined;
        const kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 2, 4]);
        await checkCpuAttention(t, { rule, qSeqs, kSeqs, heads: Math.max(2, heads), kvHeads: heads < 2 ? 1 : kvHeads,
          D: rng.pick([40, 64, 128]), Dv: rng.pick([48, 64, 72, 128]), silu: rng.bool(0.15) }, dtype, rng, `round ${round} on ${isa}`);
      }
    });

    test.serial(`few-query tiles (<= 8 queries) with all heads per task on ${isa}, ${dtype} = reference (long keys, every preset, custom rules)`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 104729 + dtype.length * 3);
      for (let round = 0; round < 8; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
        const batch = rng.int(10, 20);
        // Keys: long histories (several key tiles), some empty or length 1; queries: 0..8 per sequence.
        const kSeqs = sequences(rng, kind, batch, 400).map((s) => (rng.bool(0.5) ? s : randomSequence(rng, kind, 150)));
        const qSeqs = Array.from({ length: batch }, () => { const s = randomSequence(rng, kind, 3); const n = Math.min(s.roles.length, rng.int(0, 8)); return { segments: s.segments.slice(0, n), roles: s.roles.slice(0, n) }; });
        const kvHeads = rng.pick([1, 2, 4]), heads = kvHeads * rng.pick([1, 2, 3]);
        await checkCpuAttention(t, { rule, qSeqs, kSeqs, heads, kvHeads, D: rng.pick([8, 16, 64]), Dv: rng.pick([8, 64, 72]), silu: rng.bool(0.15) },
          dtype, rng, `round ${round} on ${isa}`);
      }
    });
  }
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
