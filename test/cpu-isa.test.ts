// The CPU kernels' instruction-set dispatch (native/cpu/isa.h): every path this CPU runs is forced in
// turn and checked against the reference on randomized jagged batches, every dtype. (scripts/test.cjs
// also reruns the whole CPU parity suites once per path through LK_CPU_ISA.)
import test from 'ava';
import { spawnSync } from 'child_process';
import { backends, indexerScores, maskedAttention, reference, sparseAttention, topK, DType } from '../lib/index';
import type { PresetName } from '../lib/index';
import { native } from '../lib/native';
import { compare, makeInput, pack, randomLength, randomRule, randomSequence, Rng } from './helpers';

const PATHS = backends().cpu.isaPaths;
const KNOWN = ['portable', 'neon', 'avx2', 'avx512', 'avx512bf16'];
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];

test.serial('the active path is one this CPU runs, and LK_CPU_ISA is honoured when set', (t) => {
  const cpu = backends().cpu;
  t.true(PATHS.includes('portable'));
  t.true(PATHS.every((p) => KNOWN.includes(p)), PATHS.join());
  t.true(PATHS.includes(cpu.simd), `${cpu.simd} among ${PATHS.join()}`);
  if (process.env.LK_CPU_ISA) t.is(cpu.simd, process.env.LK_CPU_ISA);
  else t.is(cpu.simd, PATHS[PATHS.length - 1], 'the best path by default');
});

test.serial('forcing an unknown or unsupported path: clear errors, nothing changed', (t) => {
  const before = backends().cpu.simd;
  t.throws(() => native()._setCpuIsa('sse9'), { instanceOf: RangeError, message: /isa: unknown instruction set 'sse9'/ });
  t.throws(() => native()._setCpuIsa(3 as unknown as string), { instanceOf: TypeError, message: /isa: expected a string/ });
  const missing = KNOWN.filter((p) => !PATHS.includes(p));
  for (const p of missing) t.throws(() => native()._setCpuIsa(p), { instanceOf: RangeError, message: /cannot run/ });
  t.is(backends().cpu.simd, before);
  // The addon refuses to load under an LK_CPU_ISA it cannot honour, so a forced run never falls back.
  for (const bad of ['sse9', ...missing]) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', "require('./lib/native').native()"], {
      cwd: `${__dirname}/..`, env: { ...process.env, LK_CPU_ISA: bad }, encoding: 'utf8',
    });
    t.not(r.status, 0, bad);
    t.regex(r.stderr, bad === 'sse9' ? /LK_CPU_ISA: unknown instruction set 'sse9'/ : /LK_CPU_ISA: this CPU or build cannot run/, bad);
  }
});

function randomLayout(rng: Rng, kind: PresetName | 'mixed', batch: number) {
  const seqs = [];
  for (let b = 0; b < batch; b++) {
    let s = randomSequence(rng, kind, 45);
    if (rng.bool(0.3)) {  // lengths at tile edges, empty, single
      const n = randomLength(rng, 100);
      s = { segments: Array.from({ length: n }, (_, i) => Math.floor((i * 3) / Math.max(1, n))), roles: Array.from({ length: n }, () => rng.pick([0, 0, 1, 2])) };
    }
    seqs.push(s);
  }
  return pack(seqs);
}

for (const isa of PATHS) {
  for (const dtype of DTYPES) {
    test.serial(`maskedAttention cpu on ${isa}, ${dtype} = reference (presets, custom rules, GQA, Dv != D, cross, silu)`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 1009 + dtype.length * 17);
      for (let round = 0; round < 10; round++) {
        const rule = round < PRESETS.length ? PRESETS[round] : randomRule(rng);
        const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
        const batch = rng.int(1, 6);
        const ql = randomLayout(rng, kind, batch);
        const cross = rng.bool(0.3);
        const kl = cross ? randomLayout(rng, kind, batch) : ql;
        const kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 2, 4]);
        const D = rng.pick([8, 16, 32, 64, 128]), Dv = rng.pick([8, 16, 64, 72]);
        const silu = rng.bool(0.15);
        const tq = ql.offsets[batch], tk = kl.offsets[batch];
        const q = await makeInput(rng.floats(tq * heads * D, 2), [tq, heads, D], dtype, 'cpu');
        const k = await makeInput(rng.floats(tk * kvHeads * D, 2), [tk, kvHeads, D], dtype, 'cpu');
        const v = await makeInput(rng.floats(tk * kvHeads * Dv), [tk, kvHeads, Dv], dtype, 'cpu');
        const lay = (l: typeof ql) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });
        const options = { q: lay(ql), kv: cross ? lay(kl) : undefined, rule, normalize: silu ? ('silu' as const) : ('softmax' as const), returnLse: !silu };
        t.is(backends().cpu.simd, isa);
        const got = await maskedAttention(q.t, k.t, v.t, options);
        const ref = reference.maskedAttention({ data: q.exact, shape: [tq, heads, D] }, { data: k.exact, shape: [tk, kvHeads, D] },
          { data: v.exact, shape: [tk, kvHeads, Dv] }, options);
        const what = `round ${round} on ${isa}: B=${batch} Tq=${tq} Tk=${tk} H=${heads}/${kvHeads} D=${D} Dv=${Dv}`;
        t.is(compare(await got.output.float32(), ref.output.data, dtype, 'output'), '', what);
        if (!silu) t.is(compare(await got.lse!.float32(), ref.lse!.data, 'float32', 'lse'), '', what);
        for (const x of [q.t, k.t, v.t, got.output, got.lse]) x?.dispose();
      }
    });

    test.serial(`indexerScores / sparseAttention cpu on ${isa}, ${dtype} = reference`, async (t) => {
      native()._setCpuIsa(isa);
      const rng = new Rng(isa.length * 31 + dtype.length);
      for (let round = 0; round < 4; round++) {
        const B = rng.int(1, 4);
        const keyLens = Array.from({ length: B }, () => rng.pick([0, 1, 97, 500]));
        const qLens = Array.from({ length: B }, () => rng.int(0, 9));
        const off = (ls: number[]) => Int32Array.from([0, ...ls.map((_, i) => ls.slice(0, i + 1).reduce((a, b) => a + b, 0))]);
        const qOffsets = off(qLens), kOffsets = off(keyLens), Nq = qOffsets[B], Tk = kOffsets[B];
        const Hi = rng.pick([1, 2, 4]), Di = rng.pick([8, 20, 64]), kvHeads = rng.pick([1, 2]), heads = kvHeads * rng.pick([1, 4]);
        const D = rng.pick([16, 20, 64]), Dv = rng.pick([8, 72]), K = rng.pick([1, 16, 40]);
        const qI = await makeInput(rng.floats(Nq * Hi * Di), [Nq, Hi, Di], dtype, 'cpu'), kI = await makeInput(rng.floats(Tk * Di), [Tk, Di], dtype, 'cpu');
        const w = await makeInput(rng.floats(Nq * Hi), [Nq, Hi], dtype, 'cpu');
        const q = await makeInput(rng.floats(Nq * heads * D), [Nq, heads, D], dtype, 'cpu');
        const k = await makeInput(rng.floats(Tk * kvHeads * D), [Tk, kvHeads, D], dtype, 'cpu');
        const v = await makeInput(rng.floats(Tk * kvHeads * Dv), [Tk, kvHeads, Dv], dtype, 'cpu');
        const layout = { qOffsets, kOffsets };
        const scores = await indexerScores(qI.t, kI.t, w.t, layout);
        const refScores = reference.indexerScores({ data: qI.exact, shape: [Nq, Hi, Di] }, { data: kI.exact, shape: [Tk, Di] }, { data: w.exact, shape: [Nq, Hi] }, layout);
        t.is(compare(await scores.float32(), refScores.data, 'float32', 'scores'), '', `round ${round} on ${isa}`);
        const chosen = await topK(scores, K);
        const idx = (await chosen.indices.data()) as Int32Array;
        const got = await sparseAttention(q.t, k.t, v.t, chosen.indices, { ...layout, returnLse: true });
        const want = reference.sparseAttention({ data: q.exact, shape: [Nq, heads, D] }, { data: k.exact, shape: [Tk, kvHeads, D] },
          { data: v.exact, shape: [Tk, kvHeads, Dv] }, { data: idx, shape: [Nq, K] }, { ...layout, returnLse: true });
        t.is(compare(await got.output.float32(), want.output.data, dtype, 'sparse output'), '', `round ${round} on ${isa}`);
        t.is(compare(await got.lse!.float32(), want.lse!.data, 'float32', 'sparse lse'), '', `round ${round} on ${isa}`);
        for (const x of [qI.t, kI.t, w.t, q.t, k.t, v.t, scores, chosen.indices, chosen.values, got.output, got.lse!]) x.dispose();
      }
    });
  }
}

test.serial.after.always('restore the default path', () => {
  native()._setCpuIsa(process.env.LK_CPU_ISA || PATHS[PATHS.length - 1]);
});

// Kept visible: paths this machine cannot run are not checked here (the report says which).
const unchecked = KNOWN.filter((p) => !PATHS.includes(p));
if (unchecked.length) test.skip(`CPU paths not runnable on this machine, so unchecked here: ${unchecked.join(', ')}`, () => {});
