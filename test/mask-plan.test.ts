// Mask plans (SPEC §3 "Plans", cuda/common/mask_plan.h): maskPlan() built once and reused gives
// the reference's results and the same bits as a call without a plan, on every device, in every
// dtype, for every preset and random rules over jagged batches with empty and length-1 sequences;
// the tile lists follow the rule (checked against a brute-force count of the allowed pairs); empty
// sequences cost nothing; short query rows over 16k keys take the split-KV path on CUDA (the plan's
// stats say so) and still equal the reference; a mismatched or disposed plan is refused by name.
import test from 'ava';
import { maskedAttention, maskedAttentionBackward, maskPlan, MaskPlan, reference, tensor } from '../lib/index';
import type { DType, Device, MaskRule, PresetName } from '../lib/index';
import { compare, makeInput, pack, parityDevices, randomLength, randomRule, randomSequence, Rng } from './helpers';
import type { PackedLayout, Seq } from './helpers';

const devices = parityDevices();
const DTYPES: DType[] = ['float32', 'float16', 'bfloat16'];
const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const layoutOf = (l: PackedLayout) => ({ offsets: l.offsets, segments: l.segments, roles: l.roles });

interface Case {
  ql: PackedLayout; kl?: PackedLayout;
  rule: MaskRule | PresetName;
  H: number; Hkv: number; D: number; Dv: number;
}

/** maskedAttention with `plan` and without, and the reference, on the same rounded inputs. */
async function runCase(c: Case, dtype: DType, device: Device, plan: MaskPlan, rng: Rng) {
  const tq = c.ql.offsets[c.ql.lengths.length], tk = (c.kl ?? c.ql).offsets[c.ql.lengths.length];
  const q = await makeInput(rng.floats(tq * c.H * c.D, 2), [tq, c.H, c.D], dtype, device);
  const k = await makeInput(rng.floats(tk * c.Hkv * c.D, 2), [tk, c.Hkv, c.D], dtype, device);
  const v = await makeInput(rng.floats(tk * c.Hkv * c.Dv), [tk, c.Hkv, c.Dv], dtype, device);
  const layouts = { q: layoutOf(c.ql), kv: c.kl ? layoutOf(c.kl) : undefined, rule: c.rule };
  const planned = await maskedAttention(q.t, k.t, v.t, { plan, returnLse: true });
  const direct = await maskedAttention(q.t, k.t, v.t, { ...layouts, returnLse: true });
  const ref = reference.maskedAttention({ data: q.exact, shape: [tq, c.H, c.D] }, { data: k.exact, shape: [tk, c.Hkv, c.D] },
    { data: v.exact, shape: [tk, c.Hkv, c.Dv] }, { ...layouts, returnLse: true });
  const out = await planned.output.float32(), lse = await planned.lse!.float32();
  const outDirect = await direct.output.float32(), lseDirect = await direct.lse!.float32();
  for (const x of [q.t, k.t, v.t, planned.output, planned.lse, direct.output, direct.lse]) x?.dispose();
  return { out, lse, outDirect, lseDirect, ref };
}

const sameBits = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((x, i) => Object.is(x, b[i]));

function jagged(rng: Rng, kind: PresetName | 'mixed', batch: number, maxItems: number): PackedLayout {
  const seqs: Seq[] = [];
  for (let b = 0; b < batch; b++) {
    const pick = rng.int(0, 5);
    if (pick === 0) seqs.push({ segments: [], roles: [] });                          // empty
    else if (pick === 1) seqs.push({ segments: [0], roles: [rng.pick([0, 1, 2])] });  // length 1
    else seqs.push(randomSequence(rng, kind, maxItems));
  }
  return pack(seqs);
}

for (const device of devices) {
  for (const dtype of DTYPES) {
    test(`${device} ${dtype}: one plan per layout, reused by several calls (GQA, Dv != D, small heads) = reference and = no plan, bit for bit; every preset and random rules`, async (t) => {
      const rng = new Rng(dtype.length * 131 + (device === 'cuda' ? 7 : 0));
      const rules: Array<MaskRule | PresetName> = [...PRESETS, randomRule(rng), randomRule(rng)];
      for (const rule of rules) {
        const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
        const ql = jagged(rng, kind, rng.int(3, 6), 40);
        const plan = await maskPlan({ q: layoutOf(ql), rule }, { device, dtype, headDim: 16 });
        // Two calls of different head shapes share the plan (different tile sizes on CUDA: a second geometry).
        for (const [H, Hkv, D, Dv] of [[4, 2, 16, 8], [2, 1, 64, 32]]) {
          const r = await runCase({ ql, rule, H, Hkv, D, Dv }, dtype, device, plan, rng);
          const what = `${JSON.stringify(rule)} H${H}/${Hkv} D${D} Dv${Dv} lengths ${ql.lengths}`;
          t.is(compare(r.out, r.ref.output.data, dtype, 'output'), '', what);
          t.is(compare(r.lse, r.ref.lse!.data, 'float32', 'lse'), '', `${what} lse`);
          t.true(sameBits(r.out, r.outDirect), `${what}: with and without a plan differ`);
          t.true(sameBits(r.lse, r.lseDirect), `${what}: lse with and without a plan differ`);
        }
        t.true(plan.stats().length >= 1);
        plan.dispose();
      }
    });
  }

  test(`${device}: cross attention plans (bottom-right alignment, kv layout of its own) = reference in every dtype`, async (t) => {
    const rng = new Rng(404);
    for (const rule of ['causal', 'rec2pm-update', randomRule(rng)] as Array<MaskRule | PresetName>) {
      const batch = 5;
      const qSeqs: Seq[] = [], kSeqs: Seq[] = [];
      for (let b = 0; b < batch; b++) {
        const lk = randomLength(rng, 150), lq = Math.min(lk, randomLength(rng, 70));
        const segs = (n: number) => Array.from({ length: n }, (_, i) => Math.floor((3 * i) / Math.max(1, n)));
        kSeqs.push({ segments: segs(lk), roles: Array.from({ length: lk }, () => rng.pick([0, 0, 1, 2])) });
        qSeqs.push({ segments: segs(lq), roles: Array.from({ length: lq }, () => rng.pick([0, 1, 2])) });
      }
      const ql = pack(qSeqs), kl = pack(kSeqs);
      const plan = await maskPlan({ q: layoutOf(ql), kv: layoutOf(kl), rule }, { device });
      for (const dtype of DTYPES) {
        const r = await runCase({ ql, kl, rule, H: 2, Hkv: 2, D: 32, Dv: 32 }, dtype, device, plan, rng);
        t.is(compare(r.out, r.ref.output.data, dtype, 'output'), '', `${dtype} ${JSON.stringify(rule)}`);
        t.is(compare(r.lse, r.ref.lse!.data, 'float32', 'lse'), '', `${dtype} lse`);
        t.true(sameBits(r.out, r.outDirect), `${dtype}: with and without a plan differ`);
      }
      plan.dispose();
    }
  });

  test(`${device}: short query rows over 16k keys (GEMs candidates / Rec2PM targets over a history) = reference; on CUDA the split-KV path is taken`, async (t) => {
    const rng = new Rng(16384);
    // Lq 4, 1, 16 over 16k-ish keys split; an empty pair; 40 queries (not split: more than 16 rows).
    const lq = [4, 1, 0, 16, 40], lk = [16384, 16000, 0, 9000, 3000];
    const segsOf = (n: number, every: number) => Array.from({ length: n }, (_, j) => Math.floor(j / every));
    const kl = pack(lk.map((n) => ({ segments: segsOf(n, 1000), roles: Array.from({ length: n }, (_, j) => (j % 97 === 5 ? 1 : 0)) })));
    const ql = pack(lq.map((n) => ({ segments: new Array(n).fill(20), roles: Array.from({ length: n }, (_, i) => (i === n - 1 ? 2 : 0)) })));
    const custom: MaskRule = {
      item: { item: { seg: 'earlier', causal: true }, memory: { seg: 'any', causal: true } },
      target: { item: { seg: 'any', causal: true }, memory: { seg: 'same-or-earlier', causal: false } },
    };
    for (const rule of ['causal', 'full', custom] as Array<MaskRule | PresetName>) {
      for (const dtype of DTYPES) {
        const plan = await maskPlan({ q: layoutOf(ql), kv: layoutOf(kl), rule }, { device, dtype, headDim: 16, valueDim: 8 });
        const r = await runCase({ ql, kl, rule, H: 2, Hkv: 1, D: 16, Dv: 8 }, dtype, device, plan, rng);
        t.is(compare(r.out, r.ref.output.data, dtype, 'output'), '', `${dtype} ${JSON.stringify(rule)}`);
        t.is(compare(r.lse, r.ref.lse!.data, 'float32', 'lse'), '', `${dtype} ${JSON.stringify(rule)} lse`);
        t.true(sameBits(r.out, r.outDirect), `${dtype}: with and without a plan differ`);
        const stats = plan.stats();
        t.is(stats.length, 1, 'one geometry: the one prepared is the one the call used');
        if (device === 'cuda') {
          // Sequences 0, 1, 3 hold <= 16 queries over thousands of keys: split; 4 (40 queries) is not.
          t.is(stats[0].splitTiles, 3, JSON.stringify(stats[0]));
          t.true(stats[0].splitItems >= 3 * 8, JSON.stringify(stats[0]));
          t.is(stats[0].workItems, stats[0].queryTiles - stats[0].splitTiles + stats[0].splitItems);
        } else {
          t.is(stats[0].splitTiles, 0, 'the CPU walks whole rows');
        }
        plan.dispose();
      }
    }
  });

  test(`${device}: a NaN / Inf in masked keys of a split window never reaches the output`, async (t) => {
    const rng = new Rng(99);
    const Lk = 5000, Lq = 3, H = 1, D = 16, Dv = 16;
    const kl = pack([{ segments: new Array(Lk).fill(0), roles: Array.from({ length: Lk }, (_, j) => (j >= 2000 && j < 2100 ? 1 : 0)) }]);
    const ql = pack([{ segments: [0, 0, 0], roles: [0, 0, 0] }]);
    const rule: MaskRule = { item: { item: { seg: 'any', causal: true } } };  // memory keys masked
    const vData = rng.floats(Lk * Dv);
    for (let j = 2000; j < 2100; j++) vData[j * Dv + (j % Dv)] = j % 2 ? NaN : Infinity;
    for (const dtype of DTYPES) {
      const plan = await maskPlan({ q: layoutOf(ql), kv: layoutOf(kl), rule }, { device, dtype, headDim: D });
      const q = await makeInput(rng.floats(Lq * H * D), [Lq, H, D], dtype, device);
      const k = await makeInput(rng.floats(Lk * H * D), [Lk, H, D], dtype, device);
      const v = await makeInput(vData, [Lk, H, Dv], dtype, device);
      const got = await maskedAttention(q.t, k.t, v.t, { plan });
      const ref = reference.maskedAttention({ data: q.exact, shape: [Lq, H, D] }, { data: k.exact, shape: [Lk, H, D] },
        { data: v.exact, shape: [Lk, H, Dv] }, { q: layoutOf(ql), kv: layoutOf(kl), rule });
      t.is(compare(await got.output.float32(), ref.output.data, dtype, 'output'), '', dtype);
      for (const x of [q.t, k.t, v.t, got.output]) x.dispose();
      plan.dispose();
    }
  });

  test(`${device}: the plan lists tiles as the rule says (brute force over every pair), and empty sequences cost nothing`, async (t) => {
    const rng = new Rng(31);
    for (const rule of [...PRESETS, randomRule(rng), randomRule(rng)] as Array<MaskRule | PresetName>) {
      const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
      const ql = jagged(rng, kind, 4, 90);
      const plan = await maskPlan({ q: layoutOf(ql), rule }, { device, dtype: 'float32', headDim: 32 });
      const [s] = plan.stats();
      // Brute force: tiles of blockM x blockN with some allowed pair must be listed; tiles with every
      // pair allowed may be full, others must not.
      const resolved = reference.resolveRule(rule);
      let some = 0, every = 0, tiles = 0;
      for (let b = 0; b < ql.lengths.length; b++) {
        const L = ql.lengths[b], o = ql.offsets[b];
        tiles += Math.ceil(L / s.blockM);
        for (let q0 = 0; q0 < L; q0 += s.blockM)
          for (let k0 = 0; k0 < L; k0 += s.blockN) {
            let any = false, all = true;
            for (let i = q0; i < Math.min(L, q0 + s.blockM); i++)
              for (let j = k0; j < Math.min(L, k0 + s.blockN); j++) {
                const ok = reference.refAllowed(resolved, ql.roles[o + i], ql.roles[o + j], ql.segments[o + i], ql.segments[o + j], i, j);
                any ||= ok;
                all &&= ok;
              }
            if (any) some++;
            if (all) every++;
          }
      }
      t.is(s.queryTiles, tiles);
      t.true(s.fullTiles + s.partialTiles >= some, `${JSON.stringify(rule)}: listed ${s.fullTiles + s.partialTiles} < ${some} tiles with allowed pairs`);
      t.true(s.fullTiles <= every, `${JSON.stringify(rule)}: ${s.fullTiles} full tiles > ${every} tiles with every pair allowed`);
      if (rule === 'causal' || rule === 'full') {
        t.is(s.fullTiles + s.partialTiles, some, `${rule}: exactly the tiles with allowed pairs`);
        t.is(s.fullTiles, every, `${rule}: exactly the all-allowed tiles are full`);
        t.true(s.runs <= 2 * s.queryTiles, `${rule}: at most a full and a partial run per query tile`);
      }
      plan.dispose();
      // 5,000 empty sequences around the same ones: the same work.
      const padded = pack([...Array(2500).fill({ segments: [], roles: [] }),
        ...ql.lengths.map((n, b) => ({ segments: [...ql.segments.subarray(ql.offsets[b], ql.offsets[b] + n)], roles: [...ql.roles.subarray(ql.offsets[b], ql.offsets[b] + n)] })),
        ...Array(2500).fill({ segments: [], roles: [] })]);
      const plan2 = await maskPlan({ q: layoutOf(padded), rule }, { device, dtype: 'float32', headDim: 32 });
      const [s2] = plan2.stats();
      for (const key of ['queryTiles', 'fullTiles', 'partialTiles', 'runs', 'workItems'] as const) t.is(s2[key], s[key], `${key} with empty sequences`);
      plan2.dispose();
    }
  });

  test(`${device}: a plan is checked on use — other token counts, layouts, rule, device; disposed`, async (t) => {
    const ql = pack([{ segments: [0, 0, 1, 1, 1], roles: [0, 1, 0, 0, 2] }, { segments: [0, 0], roles: [0, 0] }]);
    const plan = await maskPlan({ q: layoutOf(ql), rule: 'persrec' }, { device });
    const mk = (n: number) => tensor(new Float32Array(n * 2 * 8), [n, 2, 8], { device });
    const [q, k, v] = [mk(7), mk(7), mk(7)];
    const ok = await maskedAttention(q, k, v, { plan, q: layoutOf(ql), rule: 'persrec' });  // the plan's own: accepted
    ok.output.dispose();
    const [q8, k8, v8] = [mk(8), mk(8), mk(8)];
    await t.throwsAsync(maskedAttention(q8, k8, v8, { plan }), { instanceOf: RangeError, message: /options\.plan: built for 7 queries and 7 keys/ });
    const other = pack([{ segments: [0, 0, 1, 1, 2], roles: [0, 1, 0, 0, 2] }, { segments: [0, 0], roles: [0, 0] }]);
    await t.throwsAsync(maskedAttention(q, k, v, { plan, q: layoutOf(other) }), { instanceOf: RangeError, message: /options\.q: differs/ });
    await t.throwsAsync(maskedAttention(q, k, v, { plan, kv: layoutOf(other) }), { instanceOf: RangeError, message: /options\.kv: differs/ });
    await t.throwsAsync(maskedAttention(q, k, v, { plan, rule: 'causal' }), { instanceOf: RangeError, message: /options\.rule: differs/ });
    await t.throwsAsync(maskedAttention(q, k, v, { plan: {} as MaskPlan }), { instanceOf: TypeError, message: /options\.plan: expected a MaskPlan/ });
    const otherDevice = devices.find((d) => d !== device);
    if (otherDevice) {
      const [qo, ko, vo] = [await q.to(otherDevice), await k.to(otherDevice), await v.to(otherDevice)];
      await t.throwsAsync(maskedAttention(qo, ko, vo, { plan }), { instanceOf: TypeError, message: new RegExp(`options\\.plan: built for ${device}`) });
      for (const x of [qo, ko, vo]) x.dispose();
    }
    await t.throwsAsync(maskPlan({ q: { offsets: new Int32Array([0, 3, 2]) } }, { device }), { instanceOf: RangeError, message: /layouts\.q\.offsets/ });
    await t.throwsAsync(maskPlan({ q: layoutOf(ql), rule: 'toString' as PresetName }, { device }), { instanceOf: RangeError, message: /layouts\.rule/ });
    await t.throwsAsync(maskPlan({ q: layoutOf(ql) }, { device: 'gpu' as Device }), { instanceOf: TypeError, message: /options\.device/ });
    await t.throwsAsync(maskPlan({ q: layoutOf(ql) }, { device, headDim: 0 }), { instanceOf: RangeError, message: /options\.headDim/ });
    plan.dispose();
    t.true(plan.disposed);
    await t.throwsAsync(maskedAttention(q, k, v, { plan }), { message: 'plan is disposed' });
    t.throws(() => plan.stats(), { message: 'plan is disposed' });
    for (const x of [q, k, v, q8, k8, v8]) x.dispose();
  });

  test(`${device}: maskedAttentionBackward with a plan = without one, bit for bit (softmax and silu, random rules, jagged, GQA)`, async (t) => {
    const rng = new Rng(909 + (device === 'cuda' ? 1 : 0));
    for (const rule of ['causal', 'persrec', randomRule(rng)] as Array<MaskRule | PresetName>) {
      const kind = typeof rule === 'string' && rule !== 'causal' ? rule : 'mixed';
      const ql = jagged(rng, kind, rng.int(2, 5), 30);
      const tq = ql.offsets[ql.lengths.length];
      const plan = await maskPlan({ q: layoutOf(ql), rule }, { device, dtype: 'float32', headDim: 16 });
      const [q, k, v, dOutput] = [[tq, 4, 16], [tq, 2, 16], [tq, 2, 8], [tq, 4, 8]].map((shape) =>
        tensor(rng.floats(shape[0] * shape[1] * shape[2]), shape, { device }));
      for (const normalize of ['softmax', 'silu'] as const) {
        const direct = { q: layoutOf(ql), rule, normalize };
        const fwd = await maskedAttention(q, k, v, { ...direct, returnLse: normalize === 'softmax' });
        const inputs = { q, k, v, dOutput, output: fwd.output, lse: fwd.lse };
        const planned = await maskedAttentionBackward(inputs, { plan, normalize });
        const own = await maskedAttentionBackward(inputs, direct);
        for (const name of ['dq', 'dk', 'dv'] as const)
          t.true(sameBits(await planned[name].float32(), await own[name].float32()), `${JSON.stringify(rule)} ${normalize} ${name} lengths ${ql.lengths}`);
        for (const x of [fwd.output, fwd.lse, planned.dq, planned.dk, planned.dv, own.dq, own.dk, own.dv]) x?.dispose();
      }
      for (const x of [q, k, v, dOutput]) x.dispose();
      plan.dispose();
    }
  });
}

// The device builder (cuda/attention/mask_plan_device.cuh) against the host walk the CPU keeps
// (cuda/common/mask_plan_host.h): the same work list in the same order, the same runs, combine groups
// and stats, entry for entry; the device's lists are sized by bounds from the offsets, so their
// entries past the real ones must all be marked unused (seq -1).
if (devices.includes('cuda')) {
  test('cuda: plans built on the device equal the host walk entry for entry (jagged, empty / length-1 sequences, every preset, custom rules, cross attention, split-KV, several tile sizes)', async (t) => {
    const rng = new Rng(Number(process.env.LK_PLAN_SEED ?? 2718));
    const geometries = [[64, 64], [16, 32], [128, 64], [8, 16], [32, 128]];
    const randomSeq = (n: number, segments: number): Seq => {
      const cut = Array.from({ length: segments - 1 }, () => rng.int(0, n)).sort((a, b) => a - b);
      return {
        segments: Array.from({ length: n }, (_, i) => cut.filter((c) => c <= i).length),  // nondecreasing
        roles: Array.from({ length: n }, () => rng.pick([0, 0, 0, 1, 2])),
      };
    };
    let compared = 0, splitSeen = 0, unusedSeen = 0;
    const check = async (plan: MaskPlan, what: string, tiles = geometries) => {
      const native = plan.handle();
      for (const [bm, bn] of tiles) {
        const dev = await native._lists!(bm, bn, true), host = await native._lists!(bm, bn, false);
        const where = `${what} tiles ${bm}x${bn}`;
        t.deepEqual(dev.stats, host.stats, `${where}: stats`);
        const items = host.stats.workItems, groups = host.stats.splitTiles;
        t.is(host.work.length, 7 * items, `${where}: the host's list is exact`);
        t.deepEqual([...dev.work.subarray(0, 7 * items)], [...host.work], `${where}: work list`);
        for (let i = items; i < dev.work.length / 7; i++) t.is(dev.work[7 * i], -1, `${where}: work entry ${i} past the real ones`);
        t.deepEqual([...dev.runs.subarray(0, 2 * host.stats.runs)], [...host.runs], `${where}: runs`);
        t.deepEqual([...dev.combine.subarray(0, 4 * groups)], [...host.combine], `${where}: combine groups`);
        for (let i = groups; i < dev.combine.length / 4; i++) t.is(dev.combine[4 * i], -1, `${where}: combine entry ${i} past the real ones`);
        compared++;
        splitSeen += groups > 0 ? 1 : 0;
        unusedSeen += dev.work.length / 7 > items ? 1 : 0;
      }
    };
    const rules: Array<MaskRule | PresetName> = [...PRESETS, randomRule(rng), randomRule(rng), randomRule(rng)];
    for (const rule of rules) {
      const kind = typeof rule === 'string' && rule !== 'causal' && rule !== 'full' ? rule : 'mixed';
      // Self attention over a jagged batch.
      const ql = jagged(rng, kind, rng.int(3, 9), 120);
      const self = await maskPlan({ q: layoutOf(ql), rule }, { device: 'cuda', dtype: 'float32', headDim: 16 });
      await check(self, `self ${JSON.stringify(rule)} lengths ${ql.lengths}`);
      self.dispose();
      // Cross attention: short query rows (<= 16: split-KV candidates) over up to 3k keys, longer rows, empties.
      const batch = rng.int(3, 8);
      const qSeqs: Seq[] = [], kSeqs: Seq[] = [];
      for (let b = 0; b < batch; b++) {
        const pick = rng.int(0, 4);
        const lk = pick === 0 ? 0 : pick === 1 ? rng.int(1, 40) : rng.int(900, 3000);
        const lq = lk === 0 ? 0 : rng.pick([1, rng.int(2, 16), 16, 17, rng.int(1, Math.min(lk, 200))]);
        kSeqs.push(randomSeq(lk, 6));
        qSeqs.push(randomSeq(Math.min(lq, lk), 6));
      }
      const cq = pack(qSeqs), ck = pack(kSeqs);
      const cross = await maskPlan({ q: layoutOf(cq), kv: layoutOf(ck), rule }, { device: 'cuda', dtype: 'float32', headDim: 16 });
      await check(cross, `cross ${JSON.stringify(rule)} lq ${cq.lengths} lk ${ck.lengths}`);
      cross.dispose();
    }
    // 20,000 sequences (a quarter empty): the scans over sequences and query tiles take their
    // multi-block passes (past 16,384 entries) and the sort more than one chunk of 1,024 items.
    {
      const seqs: Seq[] = Array.from({ length: 20000 }, () => randomSeq(rng.pick([0, 1, rng.int(2, 40), rng.int(2, 90)]), 2));
      const l = pack(seqs);
      const plan = await maskPlan({ q: layoutOf(l), rule: 'rec2pm-update' }, { device: 'cuda', dtype: 'float32', headDim: 16 });
      await check(plan, '20,000 sequences', [[64, 64], [8, 16]]);
      plan.dispose();
    }
    // Only empty sequences; one sequence of one token.
    for (const seqs of [[{ segments: [], roles: [] }, { segments: [], roles: [] }], [{ segments: [0], roles: [2] }]] as Seq[][]) {
      const l = pack(seqs);
      const plan = await maskPlan({ q: layoutOf(l), rule: 'persrec' }, { device: 'cuda' });
      await check(plan, `lengths ${l.lengths}`);
      plan.dispose();
    }
    t.log(`compared ${compared} geometries, ${splitSeen} with split-KV, ${unusedSeen} with unused tails`);
    t.true(compared >= 82 && splitSeen > 0 && unusedSeen > 0, `compared ${compared} geometries, ${splitSeen} with split-KV, ${unusedSeen} with unused tails`);
  });
}
