// The CPU's heads-in-lanes kernel (native/cpu/attention_lanes_cpu.cc): several small heads (2..8,
// D and Dv <= 16) over short sequences (a transposed K + V of at most 128 KiB; fewer than 4 heads:
// at most 64 keys), 8 (key, head) scores per vector. Forced onto
// every instruction-set path this CPU runs and compared with the reference on randomized jagged
// batches: every preset and random custom rules, self and cross attention, GQA, Dv != D, D in
// {4, 8, 12, 16}, heads 2..8 (padding lanes for 3, 5, 6, 7), empty and length-1 sequences, keys
// past one 64-key mask block, lse, float32 / float16 / bfloat16. Every case checks through
// _cpuHeadsLanesCalls that the call ran on this kernel. A V holding Inf on keys that a row may not
// see must leave that row finite (P V leaves masked lanes out).
import test from 'ava';
import { backends, DType, maskedAttention, reference, tensor } from '../lib/index';
import type { MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { checkCpuAttention, compare, pack, randomLength, randomRule, randomSequence, Rng, Seq } from './helpers';

const PATHS = backends().cpu.isaPaths;
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];
const calls = () => native()._cpuHeadsLanesCalls();
const kindOf = (rule: PresetName | MaskRule) => (typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed');

// Jagged sequences of up to maxLen tokens (at least 12): some empty, some of length 1, and one longer than 8 rows
// (few-query batches go to the heads-major kernel first).
function sequences(rng: Rng, kind: PresetName | 'mixed', batch: number, maxLen: number): Seq[] {
  const seqs = Array.from({ length: batch }, () => {
    if (rng.bool(0.3)) {
      // randomLength also draws tile edges (up to 65) past maxLen: clamped, so the batch stays in this kernel's limits.
      const n = rng.pick([0, 1, Math.min(maxLen, randomLength(rng, maxLen))]);
      return { segments: Array.from({ length: n }, (_, i) => Math.floor((i * 3) / Math.max(1, n))), roles: Array.from({ length: n }, () => rng.pick([0, 0, 1, 2])) };
    }
    const s = randomSequence(rng, kind, Math.max(1, Math.floor(maxLen / 3)));
    return { segments: s.segments.slice(0, maxLen), roles: s.roles.slice(0, maxLen) };
  });
  const n = Math.max(12, Math.min(maxLen, 40));
  seqs[0] = { segments: Array.from({ length: n }, (_, i) => Math.floor(i / 10)), roles: Array.from({ length: n }, (_, i) => (i < 3 ? 0 : i % 7 === 6 ? 2 : 1)) };
  return seqs;
}
function heads(rng: Rng): { heads: number; kvHeads: number } {
  const h = rng.int(2, 8);
  return { heads: h, kvHeads: rng.pick([1, 2, 4, h].filter((g) => h % g === 0)) };
}

for (const isa of PATHS) {
  for (const dtype of DTYPES) {
    test.serial(`heads in lanes (2..8 heads, D <= 16) on ${isa}, ${dtype} = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 9311 + dtype.length * 57);
      for (let round = 0; round < 10; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const batch = rng.int(3, 9);
        const h = heads(rng);
        // Up to 120 keys (the most 8 heads x D 16 + Dv 16 take); fewer than 4 heads: one 64-key block.
        const maxKeys = h.heads >= 4 ? 120 : 64;
        const cross = rng.bool(0.35);
        const qSeqs = sequences(rng, kindOf(rule), batch, cross ? rng.pick([20, 150]) : rng.pick([20, maxKeys]));
        const kSeqs = cross ? sequences(rng, kindOf(rule), batch, rng.pick([30, maxKeys])) : undefined;
        const D = rng.pick([4, 8, 12, 16]);
        const before = calls();
        await checkCpuAttention(t, { rule, qSeqs, kSeqs, ...h, D, Dv: rng.pick([4, 8, 12, 16].filter((x) => x !== D || rng.bool())) },
          dtype, rng, `round ${round} on ${isa}`);
        t.is(calls(), before + 1, `round ${round} on ${isa}: ran on the heads-in-lanes kernel`);
      }
    });
  }

  // Half types are widened per sequence / row as the kernel loads them and narrowed per output row:
  // fixed shapes so that GQA, Dv != D, empty and length-1 sequences (self and cross, a query sequence
  // with no keys) are covered on every path whatever the random rounds above draw.
  for (const dtype of ['float16', 'bfloat16'] as DType[]) {
    test.serial(`heads in lanes on ${isa}, ${dtype}: GQA, Dv != D, empty and length-1 sequences = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 313 + dtype.length);
      const seq = (n: number): Seq => ({ segments: Array.from({ length: n }, (_, i) => Math.floor(i / 29)),
        roles: Array.from({ length: n }, (_, i) => (i < 4 || i >= n - 4 ? 1 : 0)) });
      const shapes = [{ heads: 8, kvHeads: 2, D: 8, Dv: 12 }, { heads: 4, kvHeads: 1, D: 16, Dv: 4 }, { heads: 6, kvHeads: 3, D: 12, Dv: 16 },
        { heads: 3, kvHeads: 1, D: 4, Dv: 8 }];
      for (const shape of shapes) {
        for (const rule of ['rec2pm-update', 'causal'] as PresetName[]) {
          const selfSeqs = [0, 1, 58, 1, 0, 13, 40].map(seq);
          const before = calls();
          await checkCpuAttention(t, { rule, qSeqs: selfSeqs, ...shape }, dtype, rng, `self, ${rule} on ${isa}`);
          t.is(calls(), before + 1, `self ${JSON.stringify(shape)} ${rule} on ${isa}: ran on the heads-in-lanes kernel`);
        }
        const before = calls();
        await checkCpuAttention(t, { rule: 'full', qSeqs: [3, 0, 1, 20, 5].map(seq), kSeqs: [0, 1, 1, 58, 9].map(seq), ...shape }, dtype, rng,
          `cross on ${isa}`);
        t.is(calls(), before + 1, `cross ${JSON.stringify(shape)} on ${isa}: ran on the heads-in-lanes kernel`);
      }
    });
  }

  test.serial(`heads in lanes on ${isa}: Inf in V on keys a row may not see leaves the row finite`, async (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(isa.length * 71 + 5);
    for (const H of [2, 3, 4, 8]) {
      const D = 8, Dv = 12;
      const lengths = [0, 1, 13, 40, 64];
      const layout = pack(lengths.map((n) => ({ segments: Array(n).fill(0), roles: Array(n).fill(1) })));
      const tq = layout.offsets[lengths.length];
      const q = rng.floats(tq * H * D, 2), k = rng.floats(tq * H * D, 2), v = rng.floats(tq * H * Dv, 1);
      // The last key of each sequence: causal rows before it never see it.
      for (let b = 0; b < lengths.length; b++) {
        if (!lengths[b]) continue;
        const last = layout.offsets[b + 1] - 1;
        for (let i = 0; i < H * Dv; i++) v[last * H * Dv + i] = i % 2 ? Infinity : -Infinity;
      }
      const options = { q: { offsets: layout.offsets, segments: layout.segments, roles: layout.roles }, rule: 'causal' as const, returnLse: true };
      const before = calls();
      const got = await maskedAttention(tensor(q, [tq, H, D]), tensor(k, [tq, H, D]), tensor(v, [tq, H, Dv]), options);
      t.is(calls(), before + 1, `H=${H}: ran on the heads-in-lanes kernel`);
      const ref = reference.maskedAttention({ data: q, shape: [tq, H, D] }, { data: k, shape: [tq, H, D] }, { data: v, shape: [tq, H, Dv] }, options);
      const out = await got.output.float32();
      const lastRows = new Set(lengths.map((n, b) => (n ? layout.offsets[b + 1] - 1 : -1)));
      const keep = (_: number, i: number) => !lastRows.has(Math.floor(i / (H * Dv)));
      t.is(compare(Array.from(out).filter(keep), Array.from(ref.output.data).filter(keep), 'float32', 'output'), '', `H=${H}`);
      for (const row of lastRows) {
        if (row < 0) continue;
        for (let i = 0; i < H * Dv; i++) t.false(Number.isFinite(out[row * H * Dv + i]), `H=${H}: row ${row} sees its Inf value`);
      }
      t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', `H=${H}`);
      got.output.dispose();
      got.lse?.dispose();
    }
  });
}

test.serial('heads in lanes: shapes it does not take go elsewhere', async (t) => {
  const rng = new Rng(3);
  const qSeqs = sequences(rng, 'mixed', 4, 30);
  for (const c of [{ heads: 1, kvHeads: 1, D: 8, Dv: 8 }, { heads: 16, kvHeads: 16, D: 8, Dv: 8 }, { heads: 4, kvHeads: 4, D: 32, Dv: 8 },
    { heads: 4, kvHeads: 2, D: 8, Dv: 24 }]) {
    const before = calls();
    await checkCpuAttention(t, { rule: 'causal', qSeqs, ...c }, 'float32', rng, JSON.stringify(c));
    t.is(calls(), before, `${JSON.stringify(c)}: not the heads-in-lanes kernel`);
  }
  // Longer sequences than it takes: 2 heads past one 64-key block, 8 x (16 + 16) past 128 KiB.
  for (const [c, n] of [[{ heads: 2, kvHeads: 1, D: 16, Dv: 16 }, 65], [{ heads: 8, kvHeads: 4, D: 16, Dv: 16 }, 129]] as const) {
    const seqs = [{ segments: Array(n).fill(0), roles: Array(n).fill(0) }, ...qSeqs];
    const before = calls();
    await checkCpuAttention(t, { rule: 'causal', qSeqs: seqs, ...c }, 'float32', rng, `${JSON.stringify(c)} over ${n} keys`);
    t.is(calls(), before, `${JSON.stringify(c)} over ${n} keys: not the heads-in-lanes kernel`);
  }
  const before = calls();
  await checkCpuAttention(t, { rule: 'causal', qSeqs, heads: 4, kvHeads: 4, D: 8, Dv: 8, silu: true }, 'float32', rng, 'silu');
  t.is(calls(), before, 'silu: not the heads-in-lanes kernel');
});

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
