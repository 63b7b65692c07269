// SPEC §3: "cost must follow the number of allowed pairs (never the number of empty sequences or of
// padding tiles)". 131,072 sequences of which all but one are empty — a few MiB of input — must not
// cost memory in proportion to sequences x the longest sequence's tiles. Each run is a child process
// (its peak RSS is its own), measured around one maskedAttention call after a warm-up call.
// A generous memory bound, not a timing assertion; the child's wall time is only reported (and
// bounded by a timeout that only a per-sequence cost could reach).
import test from 'ava';
import { spawnSync } from 'child_process';
import { backends } from '../lib/index';
import type { Device } from '../lib/index';
import { parityDevices } from './helpers';

const SEQUENCES = 131072;
const LIMIT_MB = 128;

function child(device: Device, sequences: number, length: number): string {
  return `const lk = require(${JSON.stringify(require.resolve('../lib/index'))});
(async () => {
  const B = ${sequences}, L = ${length}, H = 1, D = 32;
  const x = new Float32Array(L * H * D);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i) / 4;
  const q = lk.tensor(x, [L, H, D], { device: '${device}' });
  const offsets = new Int32Array(B + 1);
  offsets[B] = L;  // sequences 0 .. B - 2 are empty, the last holds every token
  // Warm-up: the addon, the thread pool and the kernels' first allocations, on one sequence.
  const warm = await lk.maskedAttention(q, q, q, { q: { offsets: new Int32Array([0, L]) } });
  const expected = await warm.output.float32();
  global.gc && global.gc();
  const before = process.memoryUsage().rss;
  const t0 = performance.now();
  const r = await lk.maskedAttention(q, q, q, { q: { offsets } });
  const ms = performance.now() - t0;
  const peak = process.resourceUsage().maxRSS * 1024;
  const out = await r.output.float32();
  let same = out.length === expected.length;
  for (let i = 0; same && i < out.length; i++) same = out[i] === expected[i];
  console.log(JSON.stringify({ grewMB: (peak - before) / 2 ** 20, ms, same }));
})().catch((e) => { console.error(e); process.exit(1); });`;
}

// The CPU's fused indexedCrossAttention keeps the score rows of a run of a user's queries per worker:
// runs are bounded (4 MiB of rows), never queries x keys of a whole user (2 users x 120k queries x
// 120k keys asked for 57 GB). One user of 8,000 queries over 8,000 keys (256 MB of score rows
// before); the bound allows each worker its run. (CUDA's fused kernel keeps one query's row in
// shared memory: nothing per user to measure.)
test('indexedCrossAttention cpu: one user of 8,000 queries over 8,000 keys keeps bounded score rows', (t) => {
  const threads = backends().cpu.threads;
  const limit = 48 + 8 * threads;
  const script = `const lk = require(${JSON.stringify(require.resolve('../lib/index'))});
(async () => {
  const N = 8000, Hi = 2, Di = 32, H = 2, D = 16, k = 64;
  const f = (n) => { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.37) / 2; return a; };
  const t = (n, shape) => lk.tensor(f(n), shape);
  const q = t(N * H * D, [N, H, D]), kk = t(N * H * D, [N, H, D]), v = t(N * H * D, [N, H, D]);
  const qI = t(N * Hi * Di, [N, Hi, Di]), kI = t(N * Di, [N, Di]), w = t(N * Hi, [N, Hi]);
  const n = 100, few = new Int32Array([0, n]);  // warm-up on a small user
  await lk.indexedCrossAttention(t(n * H * D, [n, H, D]), t(n * H * D, [n, H, D]), t(n * H * D, [n, H, D]),
    { indexer: { q: t(n * Hi * Di, [n, Hi, Di]), k: t(n * Di, [n, Di]), w: t(n * Hi, [n, Hi]) }, topK: k, qOffsets: few, kOffsets: few });
  global.gc && global.gc();
  const before = process.memoryUsage().rss;
  const offsets = new Int32Array([0, N]);
  const t0 = performance.now();
  const r = await lk.indexedCrossAttention(q, kk, v, { indexer: { q: qI, k: kI, w }, topK: k, qOffsets: offsets, kOffsets: offsets });
  const ms = performance.now() - t0;
  const peak = process.resourceUsage().maxRSS * 1024;
  const idx = await r.indices.data();
  console.log(JSON.stringify({ grewMB: (peak - before) / 2 ** 20, ms, chosen: idx.every((j) => j >= 0 && j < N) }));
})().catch((e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['--import=tsx', '--expose-gc', '-e', script], { env: { ...process.env, LIFELONG_DEVICE: 'cpu' }, encoding: 'utf8', timeout: 300_000 });
  t.is(r.error, undefined, `child process: ${r.error?.message}`);
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.log(`cpu (${threads} threads): peak RSS grew ${out.grewMB.toFixed(1)} MB, ${out.ms.toFixed(0)} ms`);
  t.true(out.chosen, 'every query chose k keys of its own sequence');
  t.true(out.grewMB < limit, `peak RSS grew ${out.grewMB.toFixed(1)} MB (limit ${limit} MB)`);
});

for (const device of parityDevices()) {
  // The emulator runs every CUDA thread as a fiber: one sequence of 2,048 tokens (32 real query tiles
  // against 131,072 x 32 before), where the CPU takes 16,384 (the 2 MiB of input).
  const length = device === 'cuda' && backends().cuda.emulated ? 2048 : 16384;
  test(`maskedAttention ${device}: ${SEQUENCES.toLocaleString('en')} sequences, all empty but one of ${length} tokens, grow RSS by < ${LIMIT_MB} MB`, (t) => {
    const r = spawnSync(process.execPath, ['--import=tsx', '--expose-gc', '-e', child(device, SEQUENCES, length)],
      { env: process.env, encoding: 'utf8', timeout: 300_000 });
    t.is(r.error, undefined, `child process: ${r.error?.message} (a cost per empty sequence?)`);
    t.is(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    t.log(`${device}: peak RSS grew ${out.grewMB.toFixed(1)} MB, ${out.ms.toFixed(0)} ms`);
    t.true(out.same, 'the output equals the one-sequence call');
    t.true(out.grewMB < LIMIT_MB, `peak RSS grew ${out.grewMB.toFixed(1)} MB`);
  });
}
