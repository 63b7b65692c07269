// The CPU kernel's packed key tiles and row blocking (native/cpu/attention_cpu.cc, simd.h gemm_rows):
// consecutive keys inside a packed key tile (whole tiles, a causal diagonal's gathered keys, a
// segment's run) read K^T and V from panels packed once per call, masked ones included; query tiles
// of any row count run as 6- / 4- / 2-row GEMM blocks. Lengths around the 32-row query tiles and
// 64-key key tiles (0, 1, 31..33, 63..65, ...), every preset and random custom rules, GQA, Dv != D
// (panel rows of Dv floats, or the padded copy when Dv is not a multiple of the micro-kernel's
// columns), Inf / NaN in V rows (a packed panel's finiteness flag decides whether masked keys' rows
// may be read in place), every ISA path this CPU runs, float32 / float16 / bfloat16 (half types are
// widened as panels are packed and blocks gathered, the output narrowed per row); all against the
// reference. Also few-query tiles that the heads-major kernel does not take (H 3 / 6, D or Dv not a
// multiple of 8), whose K / V rows the tiled kernel reads through the few-query and key-major paths.
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { DType, MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { checkCpuAttention, compare, makeInput, nonFiniteMismatch, pack, randomRule, randomSequence, Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
// Lengths at and around tile boundaries (query tiles of 32 rows, key tiles of 64 keys).
const EDGE_LENGTHS = [0, 1, 2, 5, 9, 31, 32, 33, 63, 64, 65, 95, 96, 127, 128, 129, 191, 257];

/** One sequence of `len` tokens: mostly items, some memory tokens / targets in a few segments. */
function sequence(rng: Rng, len: number) {
  const segments: number[] = [], roles: number[] = [];
  let seg = 0;
  for (let i = 0; i < len; i++) {
    if (i > 0 && rng.bool(0.02)) seg++;
    segments.push(seg);
    roles.push(rng.bool(0.8) ? 0 : rng.pick([1, 2]));
  }
  return { segments, roles };
}

const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];

for (const isa of PATHS) for (const dtype of DTYPES) {
  test.serial(`maskedAttention cpu on ${isa}, ${dtype}: tile-boundary lengths, packed panels, row blocks = reference`, async (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(4243 + 17 * isa.length + 101 * dtype.length);
    for (let round = 0; round < (dtype === 'float32' ? 14 : 9); round++) {
      const rule: PresetName | MaskRule = round < PRESETS.length ? PRESETS[round] : round < 8 ? 'causal' : randomRule(rng);
      const batch = rng.int(1, 4);
      // Every round holds some boundary lengths; the first sequence is long enough for packed panels.
      const lengths = Array.from({ length: batch }, (_, b) => (b === 0 ? rng.pick([65, 96, 129, 191, 257]) : rng.pick(EDGE_LENGTHS)));
      const layout = pack(lengths.map((len) => sequence(rng, len)));
      const kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 2, 4]);
      const D = rng.pick([16, 32, 64]), Dv = rng.pick([16, 24, 48, 64]);
      const T = layout.offsets[batch];
      const vData = rng.floats(T * kvHeads * Dv);
      const special = round % 3 === 1 ? NaN : round % 3 === 2 ? Infinity : 0;
      if (special !== 0) for (let n = 0; n < 3 && T > 0; n++) vData[rng.int(0, T - 1) * kvHeads * Dv + rng.int(0, kvHeads * Dv - 1)] = special;
      const q = await makeInput(rng.floats(T * heads * D, 2), [T, heads, D], dtype, 'cpu');
      const k = await makeInput(rng.floats(T * kvHeads * D, 2), [T, kvHeads, D], dtype, 'cpu');
      const v = await makeInput(vData, [T, kvHeads, Dv], dtype, 'cpu');
      const options = { q: { offsets: layout.offsets, segments: layout.segments, roles: layout.roles }, rule, returnLse: true };
      const got = await maskedAttention(q.t, k.t, v.t, options);
      const ref = reference.maskedAttention({ data: q.exact, shape: [T, heads, D] }, { data: k.exact, shape: [T, kvHeads, D] },
        { data: v.exact, shape: [T, kvHeads, Dv] }, options);
      const what = `round ${round} on ${isa}, ${dtype}: rule ${typeof rule === 'string' ? rule : 'custom'} lengths ${lengths} H=${heads}/${kvHeads} D=${D} Dv=${Dv} V special ${special}`;
      const out = await got.output.float32();
      const refOut = Float64Array.from(ref.output.data);
      t.is(nonFiniteMismatch(out, refOut), '', what);
      t.is(compare(out, refOut, dtype, 'output'), '', what);
      t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', what);
      for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
    }
  });

  test.serial(`maskedAttention cpu on ${isa}, ${dtype}: few-query tiles outside the heads-major kernel (H 3 / 6, D or Dv off 8) = reference`, async (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(911 + 13 * isa.length + 7 * dtype.length);
    for (let round = 0; round < 6; round++) {
      const rule: PresetName | MaskRule = round < 3 ? rng.pick(PRESETS) : randomRule(rng);
      const batch = rng.int(1, 5);
      const kSeqs = Array.from({ length: batch }, () => (rng.bool(0.2) ? { segments: [], roles: [] } : randomSequence(rng, 'mixed', rng.int(1, 150))));
      const qSeqs = kSeqs.map(() => (rng.bool(0.15) ? { segments: [], roles: [] } : randomSequence(rng, 'mixed', rng.pick([1, 2, 4, 8]))));
      const kvHeads = rng.pick([1, 3]), heads = kvHeads === 1 ? 3 : rng.pick([3, 6]);
      const D = rng.pick([12, 20, 64]), Dv = D === 64 ? rng.pick([12, 36]) : rng.pick([8, 12, 64]);
      await checkCpuAttention(t, { rule, qSeqs, kSeqs, heads, kvHeads, D, Dv }, dtype, rng, `round ${round} on ${isa}, ${dtype}`);
    }
  });
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
