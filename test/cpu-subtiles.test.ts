// The CPU kernel's sub-tile classification (native/cpu/attention_cpu.cc): query tiles whose rows span
// several segments run one row range per segment, and keys of partial key tiles that every row of
// the range may see run as unmasked blocks (in place when consecutive). Long segmented sequences,
// so that these lists fill whole blocks, tiles with more segments than row ranges (the fallback),
// cross attention, every ISA path this CPU runs; NaN in some V rows must reach exactly the rows the
// reference makes NaN (an unmasked block may only hold keys every row sees).
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { compare, makeInput, pack, randomRule, Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const ITEM = 0, MEMORY = 1, TARGET = 2;

/** One user: segments of 1..maxItems items, each with a few memory tokens at its start or end. */
function segmented(rng: Rng, maxItems: number, kind: 'persrec' | 'rec2pm-update' | 'mixed') {
  const segments: number[] = [], roles: number[] = [];
  const nSeg = rng.int(1, 9), mem = rng.int(1, 6);
  const push = (seg: number, role: number, n: number) => { for (let i = 0; i < n; i++) { segments.push(seg); roles.push(role); } };
  for (let s = 0; s < nSeg; s++) {
    // Short segments now and then: more than four segments inside one 32-row query tile.
    const items = rng.bool(0.25) ? rng.int(1, 6) : rng.int(1, maxItems);
    if (kind === 'rec2pm-update') { push(s, MEMORY, mem); push(s, ITEM, items); }
    else if (kind === 'persrec') { push(s, ITEM, items); push(s, MEMORY, mem); }
    else for (let i = 0; i < items + mem; i++) push(s, rng.pick([ITEM, ITEM, MEMORY, TARGET]), 1);
  }
  if (kind !== 'rec2pm-update') push(nSeg - 1, TARGET, rng.int(0, 3));
  return { segments, roles };
}

function nanRows(out: Float32Array, ref: Float64Array | Float32Array, what: string): string {
  for (let i = 0; i < ref.length; i++)
    if (Number.isNaN(ref[i]) !== Number.isNaN(out[i])) return `${what}[${i}]: got ${out[i]}, reference ${ref[i]}`;
  return '';
}

for (const isa of PATHS) {
  test.serial(`maskedAttention cpu on ${isa}: long segmented sequences (row ranges, unmasked gathers) = reference`, async (t) => {
    native()._setCpuIsa(isa);
    const rng = new Rng(7919 + isa.length);
    const rules: (PresetName | MaskRule)[] = ['persrec', 'rec2pm-update', 'rec2pm-reference', 'causal'];
    for (let round = 0; round < 10; round++) {
      const rule = round < rules.length ? rules[round] : randomRule(rng);
      const kind = rule === 'persrec' ? 'persrec' : rule === 'rec2pm-update' ? 'rec2pm-update' : 'mixed';
      const batch = rng.int(1, 3);
      const ql = pack(Array.from({ length: batch }, () => segmented(rng, 150, kind)));
      const cross = round >= 6 && rng.bool(0.5);
      const kl = cross ? pack(Array.from({ length: batch }, () => segmented(rng, 150, kind))) : ql;
      const kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 2]);
      const D = rng.pick([8, 16, 64]), Dv = rng.pick([16, 24, 64]);
      const tq = ql.offsets[batch], tk = kl.offsets[batch];
      const withNaN = round % 3 === 2;
      const vData = rng.floats(tk * kvHeads * Dv);
      if (withNaN) for (let n = 0; n < 3 && tk > 0; n++) vData[rng.int(0, tk - 1) * kvHeads * Dv + rng.int(0, kvHeads * Dv - 1)] = NaN;
      const q = await makeInput(rng.floats(tq * heads * D, 2), [tq, heads, D], 'float32', 'cpu');
      const k = await makeInput(rng.floats(tk * kvHeads * D, 2), [tk, kvHeads, D], 'float32', 'cpu');
      const v = await makeInput(vData, [tk, kvHeads, Dv], 'float32', 'cpu');
      const lay = (l: typeof ql) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });
      const options = { q: lay(ql), kv: cross ? lay(kl) : undefined, rule, returnLse: true };
      const got = await maskedAttention(q.t, k.t, v.t, options);
      const ref = reference.maskedAttention({ data: q.exact, shape: [tq, heads, D] }, { data: k.exact, shape: [tk, kvHeads, D] },
        { data: v.exact, shape: [tk, kvHeads, Dv] }, options);
      const what = `round ${round} on ${isa}: rule ${typeof rule === 'string' ? rule : 'custom'} B=${batch} Tq=${tq} Tk=${tk} H=${heads}/${kvHeads} D=${D} Dv=${Dv}${withNaN ? ' NaN in V' : ''}`;
      const out = await got.output.float32();
      const refOut = ref.output.data;
      t.is(nanRows(out, refOut, 'output'), '', what);
      if (withNaN) {  // NaN where the reference is NaN (checked above); the rest within tolerance
        for (let i = 0; i < refOut.length; i++) if (Number.isNaN(refOut[i])) { out[i] = 0; refOut[i] = 0; }
      }
      t.is(compare(out, refOut, 'float32', 'output'), '', what);
      t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', what);
      for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
    }
  });
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
