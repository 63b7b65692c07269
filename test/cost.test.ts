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
