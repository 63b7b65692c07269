// The event loop and libuv's thread pool stay free while ops run (SPEC §6), measured the way a
// benchmark would, with generous bounds: validation is linear and runs before the call returns, and
// queued ops wait in the addon's own queue, never on a libuv thread. Host-only: the queueing is the
// same for every device, so the emulated-CUDA runs of the device suites do not repeat it.
import test from 'ava';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { maskedAttention, sparseAttention, tensor, zeros } from '../lib/index';
import { Rng } from './helpers';

test('sparseAttention validates indices in linear time: 80,000 users block the event loop briefly', async (t) => {
  const users = 80_000;
  const q = zeros([users, 1, 8]), kv = zeros([users, 1, 8]);
  const offsets = Int32Array.from({ length: users + 1 }, (_, i) => i);
  const idx = tensor(new Int32Array(users), [users, 1]);
  const start = performance.now();
  const call = sparseAttention(q, kv, kv, idx, { qOffsets: offsets, kOffsets: offsets });
  const blockedMs = performance.now() - start;
  const { output } = await call;
  t.log(`event loop blocked ${blockedMs.toFixed(1)} ms by the call for ${users} users (was ~2,100 ms with a quadratic check)`);
  t.true(blockedMs < 1000, `the call held the event loop ${blockedMs} ms`);
  for (const x of [q, kv, idx, output]) x.dispose();
});

test('ops in flight never hold libuv threads: a small file read finishes before most of 8 queued ops', async (t) => {
  const T = 3072, H = 4, D = 64;
  const q = tensor(new Rng(1).floats(T * H * D), [T, H, D]);
  const file = path.join(os.tmpdir(), `lk-libuv-${process.pid}.txt`);
  await fsp.writeFile(file, 'x'.repeat(4096));
  let settled = 0;
  const ops = Array.from({ length: 8 }, () => maskedAttention(q, q, q, { q: { offsets: new Int32Array([0, T]) } }).then((r) => { settled++; return r; }));
  const start = performance.now();
  await fsp.readFile(file);
  await fsp.stat(file);
  const readMs = performance.now() - start;
  const settledAtRead = settled;
  const outs = await Promise.all(ops);
  t.log(`4 KB read + stat took ${readMs.toFixed(1)} ms with 8 attention ops queued; ${settledAtRead} of them had settled by then`);
  t.true(settledAtRead <= 4, `the read waited for ${settledAtRead} of 8 ops`);
  for (const r of outs) r.output.dispose();
  q.dispose();
  await fsp.rm(file, { force: true });
});
