// The CUDA host path (issue #10 point 3; cuda/runtime.cu): one stream per device, a caching
// allocator, pinned staging, completion by events. On the emulator (LIFELONG_CUDA_EMULATE=1) queued
// work executes only when some host thread waits for it, so "nothing executed yet" proves that no
// thread waited: the tests below hold the completion thread (the one thread that waits), queue
// ops, and check that the issuing side got through all of them with no kernel run and no wait.
// The first test needs no device: it keeps allocation, frees and device-wide waits out of op files.
import test from 'ava';
import * as fs from 'fs';
import * as path from 'path';
import { backends, reference, tensor, zeros, Tensor } from '../lib/index';
import { native, NativeStorage } from '../lib/native';
import { encodeRule } from '../lib/rules';
import type { MaskRule, PresetName } from '../lib/index';
import { compare, cudaSkipReason, randomRule, Rng } from './helpers';

// The emulated device gets 96 MiB (LK_EMU_DEVICE_MEMORY, read at the first device allocation), so
// the allocator's out-of-memory path runs here; every other test in this file stays far below it.
process.env.LK_EMU_DEVICE_MEMORY ??= String(96 << 20);

const root = path.join(__dirname, '..');

// ---------------------------------------------------------------- the grep-able guarantee

// Op files: everything under cuda/ and native/ but the runtime module and the emulator.
function opFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (rel !== path.join('cuda', 'emu')) out.push(...opFiles(rel));
    } else if (/\.(cu|cuh|cc|h)$/.test(entry.name) && rel !== path.join('cuda', 'runtime.cu')) {
      out.push(rel);
    }
  }
  return out;
}

const stripComments = (src: string) => src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
// Allocation, frees and host waits belong to cuda/runtime.cu; a synchronous cudaMemcpy / cudaMemset
// would order against the legacy stream and wait.
const FORBIDDEN = /\b(cudaMalloc|cudaMallocHost|cudaFree|cudaFreeHost|cudaDeviceSynchronize|cudaStreamSynchronize|cudaEventSynchronize|cudaMemcpy|cudaMemset)\s*\(/;

test('no op file allocates, frees or waits for the device (only cuda/runtime.cu does)', (t) => {
  const files = [...opFiles('cuda'), ...opFiles('native')];
  t.true(files.includes(path.join('cuda', 'attention', 'masked_attention.cu')), 'the attention op file is scanned');
  t.true(files.includes(path.join('native', 'storage.cc')), 'native/storage.cc is scanned');
  const offenders: string[] = [];
  for (const f of files) {
    const lines = stripComments(fs.readFileSync(path.join(root, f), 'utf8')).split('\n');
    lines.forEach((line, i) => { if (FORBIDDEN.test(line)) offenders.push(`${f}:${i + 1}: ${line.trim()}`); });
  }
  t.deepEqual(offenders, [], offenders.join('\n'));
  // The check itself can fail: the runtime module holds each of these calls.
  t.regex(stripComments(fs.readFileSync(path.join(root, 'cuda', 'runtime.cu'), 'utf8')), FORBIDDEN);
});

// ---------------------------------------------------------------- device tests

const reason = cudaSkipReason();
const addon = native();
const emulated = backends().cuda.emulated;

const PRESETS: PresetName[] = ['causal', 'full', 'persrec', 'rec2pm-reference', 'rec2pm-update'];
const H = 2, D = 16;

interface Layout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array }

// T tokens split over B sequences at random cut points (empty sequences included), random
// nondecreasing segments and random roles: every op of a chain has the same shapes, other contents.
function randomLayout(rng: Rng, T: number, B: number): Layout {
  const cuts = Array.from({ length: B - 1 }, () => rng.int(0, T)).sort((a, b) => a - b);
  const offsets = Int32Array.from([0, ...cuts, T]);
  const segments = new Int32Array(T), roles = new Uint8Array(T);
  for (let b = 0; b < B; b++) {
    let seg = 0;
    for (let i = offsets[b]; i < offsets[b + 1]; i++) {
      if (rng.bool(0.15)) seg++;
      segments[i] = seg;
      roles[i] = rng.pick([0, 0, 0, 1, 2]);
    }
  }
  return { offsets, segments, roles };
}

function nativeAttention(q: NativeStorage, k: NativeStorage, v: NativeStorage, out: NativeStorage, T: number, layout: Layout, rule: Uint8Array): Promise<void> {
  return addon.maskedAttention({
    device: 'cuda', dtype: 0, q, k, v, out, batch: layout.offsets.length - 1, tq: T, tk: T, heads: H, kvHeads: H, headDim: D, valueDim: D,
    qOffsets: layout.offsets, qSegments: layout.segments, qRoles: layout.roles,
    kvOffsets: layout.offsets, kvSegments: layout.segments, kvRoles: layout.roles,
    rule, scale: 1 / Math.sqrt(D), normalize: 0, siluInvDivisor: 1,
  });
}

const stats = () => addon._cudaHostPath!();
const launchesRun = () => backends().cuda.emulator?.launches ?? 0;

// Polls `done` on the event loop (the issuing side runs on the addon's own threads).
async function until(done: () => boolean, what: string, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!done()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// Holds completions while `body` queues work; releases them even when `body` throws.
async function held<T>(body: () => Promise<T>): Promise<T> {
  addon._cudaHoldCompletions!(true);
  try {
    return await body();
  } finally {
    addon._cudaHoldCompletions!(false);
  }
}

if (reason) {
  test.skip(`CUDA host path (skipped: ${reason}; set LIFELONG_CUDA_EMULATE=1 or use a GPU)`, () => {});
} else {
  // Tests share one device queue: serial, so each sees its own counters.
  test.serial('a chain of 8 dependent ops is issued without any wait for the device, then completes in order = reference', async (t) => {
    const rng = new Rng(10);
    const N = 8, T = 150, B = 5;
    const kData = rng.floats(T * H * D), vData = rng.floats(T * H * D), q0 = rng.floats(T * H * D);
    const live0 = addon.liveMemory();
    const k = tensor(kData, [T, H, D], { device: 'cuda' }), v = tensor(vData, [T, H, D], { device: 'cuda' });
    const outs: Tensor[] = [tensor(q0, [T, H, D], { device: 'cuda' })];
    for (let i = 0; i < N; i++) outs.push(zeros([T, H, D], { device: 'cuda' }));
    const layouts = Array.from({ length: N }, () => randomLayout(rng, T, B));
    const rules: (MaskRule | PresetName)[] = Array.from({ length: N }, (_, i) => (i % 3 === 2 ? randomRule(rng) : rng.pick(PRESETS)));
    // The uploads above are queued too: let them finish, so the counters below are the chain's.
    await until(() => stats().inFlight === 0, 'the uploads');
    const before = stats(), launchesBefore = launchesRun();

    const { done, during } = await held(async () => {
      // op i reads op i-1's output: a true chain, queued in one go.
      const done = layouts.map((layout, i) => nativeAttention(outs[i].storage(), k.storage(), v.storage(), outs[i + 1].storage(), T, layout, encodeRule(rules[i])));
      await until(() => stats().submitted - before.submitted >= N, 'the queue thread to issue the chain');
      return { done, during: { s: stats(), launches: launchesRun() } };
    });
    t.is(during.s.submitted - before.submitted, N, 'every op issued while completions were held');
    t.is(during.s.issuerWaits, before.issuerWaits, 'no issuing thread waited for the device');
    t.is(during.s.completed, before.completed, 'nothing completed before the completion thread could wait');
    if (emulated) t.is(during.launches, launchesBefore, 'no kernel executed: nobody waited for the stream (emulator)');
    await Promise.all(done);
    const after = stats();
    t.is(after.completionWaits - before.completionWaits, N, 'one event wait per op, on the completion thread');
    t.is(after.issuerWaits, before.issuerWaits);
    if (emulated) t.true(launchesRun() - launchesBefore >= 2 * N, 'the chain executed once completions were released');

    // Each step against the reference, fed with the step's own input as the device holds it.
    const values = await Promise.all(outs.map((o) => o.float32()));
    for (let i = 0; i < N; i++) {
      const ref = reference.maskedAttention({ data: values[i], shape: [T, H, D] }, { data: kData, shape: [T, H, D] }, { data: vData, shape: [T, H, D] },
        { q: layouts[i], rule: rules[i] });
      t.is(compare(values[i + 1], ref.output.data, 'float32', `step ${i} (${typeof rules[i] === 'string' ? rules[i] : 'custom rule'})`), '');
    }
    for (const x of [k, v, ...outs]) x.dispose();
    t.deepEqual(addon.liveMemory(), live0, 'every tensor freed');
  });

  test.serial('inputs disposed right after the ops are queued, uploads staged at the call: results stay right', async (t) => {
    const rng = new Rng(11);
    const T = 70, B = 3;
    const live0 = addon.liveMemory();
    const cases = Array.from({ length: 4 }, () => ({ q: rng.floats(T * H * D), k: rng.floats(T * H * D), v: rng.floats(T * H * D), layout: randomLayout(rng, T, B), rule: rng.pick(PRESETS) }));
    const outs = cases.map(() => zeros([T, H, D], { device: 'cuda' }));
    const done = await held(async () => cases.map((c, i) => {
      const data = { q: c.q.slice(), k: c.k.slice(), v: c.v.slice() };
      const q = tensor(data.q, [T, H, D], { device: 'cuda' }), k = tensor(data.k, [T, H, D], { device: 'cuda' }), v = tensor(data.v, [T, H, D], { device: 'cuda' });
      data.q.fill(NaN); data.k.fill(NaN); data.v.fill(NaN);  // the caller reuses its arrays at once
      const p = nativeAttention(q.storage(), k.storage(), v.storage(), outs[i].storage(), T, c.layout, encodeRule(c.rule));
      q.dispose(); k.dispose(); v.dispose();  // and its tensors: their memory stays until the op completes
      return p;
    }));
    await Promise.all(done);
    for (let i = 0; i < cases.length; i++) {
      const c = cases[i];
      const ref = reference.maskedAttention({ data: c.q, shape: [T, H, D] }, { data: c.k, shape: [T, H, D] }, { data: c.v, shape: [T, H, D] }, { q: c.layout, rule: c.rule });
      t.is(compare(await outs[i].float32(), ref.output.data, 'float32', `op ${i} (${c.rule})`), '');
      outs[i].dispose();
    }
    t.deepEqual(addon.liveMemory(), live0, 'inputs freed once their ops completed, outputs on dispose');
  });

  test.serial('data() and to() are queued after the ops called before them and settle only when the stream gets there', async (t) => {
    const rng = new Rng(12);
    const T = 40, B = 2;
    const q = rng.floats(T * H * D), k = rng.floats(T * H * D), v = rng.floats(T * H * D), layout = randomLayout(rng, T, B);
    const [qt, kt, vt] = [q, k, v].map((x) => tensor(x, [T, H, D], { device: 'cuda' }));
    const out = zeros([T, H, D], { device: 'cuda' });
    const hostQ = tensor(q, [T, H, D]);
    let settled = 0;
    const pending = await held(async () => {
      const op = nativeAttention(qt.storage(), kt.storage(), vt.storage(), out.storage(), T, layout, encodeRule('persrec'));
      const read = out.float32().finally(() => { settled++; });  // called before the op completed
      const toCpu = out.to('cpu').finally(() => { settled++; });
      const roundTrip = hostQ.to('cuda').finally(() => { settled++; });
      await new Promise((r) => setTimeout(r, 50));
      t.is(settled, 0, 'nothing settles while the stream has not executed it');
      return { op, read, toCpu, roundTrip };
    });
    await pending.op;
    const ref = reference.maskedAttention({ data: q, shape: [T, H, D] }, { data: k, shape: [T, H, D] }, { data: v, shape: [T, H, D] }, { q: layout, rule: 'persrec' });
    t.is(compare(await pending.read, ref.output.data, 'float32', 'data() after the op'), '');
    const host = await pending.toCpu;
    t.is(host.device, 'cpu');
    t.is(compare(await host.float32(), ref.output.data, 'float32', 'to(cpu) after the op'), '');
    const back = await pending.roundTrip;
    t.deepEqual(await back.float32(), q, 'cpu -> cuda copy');
    const again = await back.to('cuda');
    t.deepEqual(await again.float32(), q, 'cuda -> cuda copy');
    for (const x of [qt, kt, vt, out, hostQ, host, back, again]) x.dispose();
  });

  test.serial('an op failing at launch or in its kernel rejects that op only; the ops around it resolve', async (t) => {
    const rng = new Rng(13);
    const T = 33, B = 2;
    const q = rng.floats(T * H * D), k = rng.floats(T * H * D), v = rng.floats(T * H * D), layout = randomLayout(rng, T, B);
    const [qt, kt, vt] = [q, k, v].map((x) => tensor(x, [T, H, D], { device: 'cuda' }));
    const outs = [0, 1, 2].map(() => zeros([T, H, D], { device: 'cuda' }));
    const good = (i: number) => nativeAttention(qt.storage(), kt.storage(), vt.storage(), outs[i].storage(), T, layout, encodeRule('causal'));
    // On a GPU __trap() leaves the context unusable (sticky), so the op after it would fail too:
    // the kernel-failure case runs on the emulator only; the refused launch runs everywhere.
    const settled = await held(async () => {
      const ops: Promise<void>[] = [good(0), addon._cudaFaultOp!(1), good(1)];
      if (emulated) ops.push(addon._cudaFaultOp!(0), good(2));
      return ops.map((p) => p.then(() => 'ok', (e: Error) => e.message));
    });
    const results = await Promise.all(settled);
    t.is(results[0], 'ok');
    t.regex(results[1], /^fault op: .*(invalid configuration|configuration)/, 'the refused launch rejects its own op');
    t.is(results[2], 'ok', 'the op after a refused launch runs');
    if (emulated) {
      t.regex(results[3], /^fault op: .*launch failure/, 'the trapping kernel rejects its own op');
      t.is(results[4], 'ok', 'the op after a failed kernel runs');
    }
    const ref = reference.maskedAttention({ data: q, shape: [T, H, D] }, { data: k, shape: [T, H, D] }, { data: v, shape: [T, H, D] }, { q: layout, rule: 'causal' });
    for (let i = 0; i < (emulated ? 3 : 2); i++) t.is(compare(await outs[i].float32(), ref.output.data, 'float32', `good op ${i}`), '');
    for (const x of [qt, kt, vt, ...outs]) x.dispose();
  });

  test.serial('caching allocator: a freed block is reused, accounting follows tensors, an allocation failure empties the cache and retries', async (t) => {
    const MiB = 1 << 20;
    addon._cudaSetCacheLimit!(1 << 30);  // no idle trim during this test
    try {
      await until(() => stats().inFlight === 0, 'earlier work');
      const live0 = addon.liveMemory();
      // Reuse: the same size again comes from the cache, not cudaMalloc.
      const a = new addon.Storage('cuda', 3 * MiB + 5);
      const s1 = stats();
      a.dispose();
      t.deepEqual(addon.liveMemory(), live0, 'a disposed tensor is no live memory, though its block stays cached');
      t.true(stats().cachedBytes >= s1.cachedBytes + 3 * MiB, 'the block went to the cache');
      const b = new addon.Storage('cuda', 3 * MiB + 5);
      const s2 = stats();
      t.is(s2.cacheHits, s1.cacheHits + 1, 'served from the cache');
      t.is(s2.deviceMallocs, s1.deviceMallocs, 'no cudaMalloc');
      t.deepEqual(addon.liveMemory(), { buffers: live0.buffers + 1, bytes: live0.bytes + 3 * MiB + 5 });
      b.dispose();

      if (!emulated) return;  // the failure below needs the emulator's 96 MiB device
      // 56 MiB cached + 48 MiB asked > 96 MiB: cudaMalloc fails, the cache is emptied, the retry succeeds.
      const big = new addon.Storage('cuda', 56 * MiB);
      big.dispose();
      const s3 = stats();
      t.true(s3.cachedBytes >= 56 * MiB);
      const c = new addon.Storage('cuda', 48 * MiB);
      const s4 = stats();
      t.is(s4.allocRetries, s3.allocRetries + 1, 'one failed cudaMalloc, then a retry');
      t.true(s4.trims > s3.trims, 'the cache was emptied');
      t.is(s4.cachedBytes, 0, 'nothing left cached');
      t.is(c.bytes, 48 * MiB);
      // Past the device's memory even with an empty cache: the call's own error, nothing allocated.
      t.throws(() => new addon.Storage('cuda', 200 * MiB), { message: /out of memory/ });
      t.deepEqual(addon.liveMemory(), { buffers: live0.buffers + 1, bytes: live0.bytes + 48 * MiB });
      // Bounded: with a bound of 1 MiB, the idle device trims what is cached above it.
      c.dispose();
      addon._cudaSetCacheLimit!(MiB);
      await until(() => stats().cachedBytes <= MiB, 'the idle trim', 10_000);
      t.true(stats().reservedBytes < 48 * MiB, 'the blocks went back to the device');
      // And the device still works after all that.
      const x = tensor(Float32Array.from({ length: 1000 }, (_, i) => i), [1000], { device: 'cuda' });
      t.deepEqual(Array.from((await x.data()).slice(0, 4)), [0, 1, 2, 3]);
      x.dispose();
      t.deepEqual(addon.liveMemory(), live0);
    } finally {
      addon._cudaSetCacheLimit!(256 << 20);
    }
  });

  test.serial('ops whose staging is reused from the pool: many small ops queued at once all match the reference', async (t) => {
    // 24 ops of identical shapes: their layout blocks come from the cache and their pinned staging
    // from the pool. A staging buffer given back before its copy executed would feed one op another's
    // layout (on the emulator copies read their source when they execute).
    const rng = new Rng(14);
    const T = 20, B = 3, N = 24;
    const q = rng.floats(T * H * D), k = rng.floats(T * H * D), v = rng.floats(T * H * D);
    const [qt, kt, vt] = [q, k, v].map((x) => tensor(x, [T, H, D], { device: 'cuda' }));
    const cases = Array.from({ length: N }, () => ({ layout: randomLayout(rng, T, B), rule: rng.pick(PRESETS), out: zeros([T, H, D], { device: 'cuda' }) }));
    await until(() => stats().inFlight === 0, 'the uploads');
    const before = stats();
    await Promise.all(cases.map((c) => nativeAttention(qt.storage(), kt.storage(), vt.storage(), c.out.storage(), T, c.layout, encodeRule(c.rule))));
    const after = stats();
    t.true(after.pinnedHits > before.pinnedHits, 'pinned staging reused');
    t.is(after.issuerWaits, before.issuerWaits, 'no issuing thread waited');
    for (const c of cases) {
      const ref = reference.maskedAttention({ data: q, shape: [T, H, D] }, { data: k, shape: [T, H, D] }, { data: v, shape: [T, H, D] }, { q: c.layout, rule: c.rule });
      t.is(compare(await c.out.float32(), ref.output.data, 'float32', c.rule), '');
      c.out.dispose();
    }
    for (const x of [qt, kt, vt]) x.dispose();
  });
}
