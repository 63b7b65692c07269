// The CPU kernel's gathered blocks of partial key tiles (native/cpu/attention_cpu.cc, attend_rows /
// attend_keys / attend_head_keys): long segments (several 32-row query tiles each), so that every
// query tile of a segment gathers earlier segments' memory keys and its boundary tile's keys, some
// as consecutive runs of a packed panel and some transposed / copied per tile; GQA so that one kv
// head serves several heads of a group; every ISA path this CPU runs, float32 and the half types
// (widened when gathered); NaN / Inf in the K or V rows of some tokens must reach exactly the
// outputs and lse the reference makes non-finite (a masked key's NaN / Inf never leaks, SPEC §3).
// Repeated calls must agree bit for bit (the two workers' task split must not change a result).
import test from 'ava';
import { backends, maskedAttention, reference } from '../lib/index';
import type { DType, MaskRule, PresetName } from '../lib/index';
import { native } from '../lib/native';
import { compare, makeInput, pack, randomRule, Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const ITEM = 0, MEMORY = 1, TARGET = 2;

/** One user: segments of long item runs (several 32-row query tiles) with memory tokens. */
function longSegments(rng: Rng, kind: 'persrec' | 'rec2pm-update' | 'mixed') {
  const segments: number[] = [], roles: number[] = [];
  const nSeg = rng.int(1, 5), mem = rng.int(1, 6);
  const push = (seg: number, role: number, n: number) => { for (let i = 0; i < n; i++) { segments.push(seg); roles.push(role); } };
  for (let s = 0; s < nSeg; s++) {
    const items = rng.bool(0.2) ? rng.int(0, 40) : rng.int(60, 230);
    if (kind === 'rec2pm-update') { push(s, MEMORY, mem); push(s, ITEM, items); push(s, MEMORY, mem); }
    else if (kind === 'persrec') { push(s, ITEM, items); push(s, MEMORY, mem); }
    else for (let i = 0; i < items + mem; i++) push(s, rng.pick([ITEM, ITEM, ITEM, MEMORY, TARGET]), 1);
  }
  return { segments, roles };
}

function nonFiniteMismatch(out: Float32Array, ref: ArrayLike<number>, what: string): string {
  for (let i = 0; i < ref.length; i++)
    if (Number.isFinite(ref[i]) !== Number.isFinite(out[i]) || Number.isNaN(ref[i]) !== Number.isNaN(out[i]))
      return `${what}[${i}]: got ${out[i]}, reference ${ref[i]}`;
  return '';
}

const HEADS: [number, number][] = [[1, 1], [2, 1], [4, 1], [4, 2], [4, 4], [6, 2]];  // [heads, kv heads]

for (const isa of PATHS) {
  for (const dtype of ['float32', 'float16', 'bfloat16'] as DType[]) {
    test.serial(`maskedAttention cpu on ${isa}, ${dtype}: gathered blocks over long segments = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(4099 + 31 * isa.length + dtype.length);
      const presets: PresetName[] = ['persrec', 'rec2pm-update', 'persrec', 'rec2pm-update', 'rec2pm-reference', 'causal'];
      const rounds = dtype === 'float32' ? 12 : 6;
      for (let round = 0; round < rounds; round++) {
        const rule: PresetName | MaskRule = round < presets.length ? presets[round] : randomRule(rng);
        const kind = rule === 'persrec' ? 'persrec' : rule === 'rec2pm-update' ? 'rec2pm-update' : 'mixed';
        const batch = rng.int(1, 3);
        const ql = pack(Array.from({ length: batch }, () => longSegments(rng, kind)));
        const cross = round >= 8 && rng.bool(0.5);
        const kl = cross ? pack(Array.from({ length: batch }, () => longSegments(rng, kind))) : ql;
        const [heads, kvHeads] = rng.pick(HEADS);
        const D = rng.pick([8, 16, 64]), Dv = rng.pick([16, 24, 40, 64]);
        const tq = ql.offsets[batch], tk = kl.offsets[batch];
        // Every third round: NaN / Inf in some tokens' K and V rows (reaching only rows allowed to see them).
        const nonFinite = round % 3 === 2;
        const kData = rng.floats(tk * kvHeads * D, 2), vData = rng.floats(tk * kvHeads * Dv);
        if (nonFinite) {
          for (let n = 0; n < 4 && tk > 0; n++) {
            const bad = rng.pick([NaN, Infinity, -Infinity]);
            if (rng.bool(0.5)) vData[rng.int(0, tk - 1) * kvHeads * Dv + rng.int(0, kvHeads * Dv - 1)] = bad;
            else kData[rng.int(0, tk - 1) * kvHeads * D + rng.int(0, kvHeads * D - 1)] = bad;
          }
        }
        const q = await makeInput(rng.floats(tq * heads * D, 2), [tq, heads, D], dtype, 'cpu');
        const k = await makeInput(kData, [tk, kvHeads, D], dtype, 'cpu');
        const v = await makeInput(vData, [tk, kvHeads, Dv], dtype, 'cpu');
        const lay = (l: typeof ql) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });
        const options = { q: lay(ql), kv: cross ? lay(kl) : undefined, rule, returnLse: true };
        const got = await maskedAttention(q.t, k.t, v.t, options);
        const again = await maskedAttention(q.t, k.t, v.t, options);
        const ref = reference.maskedAttention({ data: q.exact, shape: [tq, heads, D] }, { data: k.exact, shape: [tk, kvHeads, D] },
          { data: v.exact, shape: [tk, kvHeads, Dv] }, options);
        const what = `round ${round} on ${isa} ${dtype}: rule ${typeof rule === 'string' ? rule : 'custom'} B=${batch} Tq=${tq} Tk=${tk} H=${heads}/${kvHeads} D=${D} Dv=${Dv}${nonFinite ? ' non-finite K/V' : ''}`;
        const out = await got.output.float32(), lse = await got.lse!.float32();
        t.deepEqual(await again.output.float32(), out, `${what}: a repeated call differs`);
        t.deepEqual(await again.lse!.float32(), lse, `${what}: a repeated call's lse differs`);
        const refOut = Float32Array.from(ref.output.data), refLse = Float32Array.from(ref.lse!.data);
        t.is(nonFiniteMismatch(out, refOut, 'output'), '', what);
        t.is(nonFiniteMismatch(lse, refLse, 'lse'), '', what);
        // Non-finite where the reference is (checked above); the rest within tolerance.
        for (let i = 0; i < refOut.length; i++) if (!Number.isFinite(refOut[i])) { out[i] = 0; refOut[i] = 0; }
        for (let i = 0; i < refLse.length; i++) if (Number.isNaN(refLse[i]) || refLse[i] === Infinity) { lse[i] = 0; refLse[i] = 0; }
        t.is(compare(out, refOut, dtype, 'output'), '', what);
        t.is(compare(lse, refLse, 'float32', 'lse'), '', what);
        for (const x of [q.t, k.t, v.t, got.output, got.lse, again.output, again.lse]) x?.dispose();
      }
    });
  }
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});
