// The host caching allocator (native/storage.cc HostBlockCache): disposed CPU blocks of 2 MiB and more
// are kept, up to a bound, for the next request of the same size, so a serving loop's outputs do not
// page-fault fresh memory on every call. A reused block must never leak its old contents (zeros()
// zeroes, op outputs overwrite every element), never count as live memory, and the bound holds.
import test from 'ava';
import { maskedAttention, reference, tensor, zeros } from '../lib/index';
import { native } from '../lib/native';
import { compare, Rng } from './helpers';

const MiB = 1 << 20;
const stats = () => native()._hostCache();
const floatsOf = (bytes: number) => bytes / 4;

test.serial('a disposed large block serves the next request of its size; zeros() still zeroes it', async (t) => {
  native()._hostCacheSetLimit(64 * MiB);
  const n = floatsOf(3 * MiB);
  const filled = tensor(new Float32Array(n).fill(7), [n]);
  const live = native().liveMemory();
  filled.dispose();
  t.is(native().liveMemory().bytes, live.bytes - 3 * MiB, 'a cached block is not live memory');
  const before = stats();
  t.true(before.blocks >= 1 && before.cachedBytes >= 4 * MiB, 'the 3 MiB block (a 4 MiB huge-page block) is cached');
  const z = zeros([n]);
  const after = stats();
  t.is(after.hits, before.hits + 1, 'served from the cache');
  t.is(after.cachedBytes, before.cachedBytes - 4 * MiB);
  const data = (await z.data()) as Float32Array;
  t.true(data.every((x) => x === 0), 'the reused block was zeroed');
  z.dispose();
});

test.serial('op outputs in reused blocks are whole: repeated attention calls equal the reference', async (t) => {
  native()._hostCacheSetLimit(64 * MiB);
  const rng = new Rng(11);
  const T = 2100, H = 4, D = 64;  // an output of 2.05 MiB: a cached size class
  const [qa, ka, va] = [rng.floats(T * H * D), rng.floats(T * H * D), rng.floats(T * H * D)];
  const q = tensor(qa, [T, H, D]), k = tensor(ka, [T, H, D]), v = tensor(va, [T, H, D]);
  const offsets = Int32Array.from([0, 700, 1400, T]);
  const shape = [T, H, D];
  const want = reference.maskedAttention({ data: qa, shape }, { data: ka, shape }, { data: va, shape }, { q: { offsets }, rule: 'causal' }).output.data;
  const hits0 = stats().hits;
  for (let call = 0; call < 3; call++) {
    // a block full of NaN disposed first: whatever the output's block held must be overwritten
    const poison = tensor(new Float32Array(T * H * D).fill(NaN), [T, H, D]);
    poison.dispose();
    const { output } = await maskedAttention(q, k, v, { q: { offsets }, rule: 'causal' });
    t.is(compare((await output.data()) as Float32Array, want, 'float32', `call ${call}`), '');
    output.dispose();
  }
  t.true(stats().hits >= hits0 + 3, 'the outputs reused cached blocks');
  for (const x of [q, k, v]) x.dispose();
});

test.serial('the bound holds: oldest blocks are freed past it, and 0 caches nothing', (t) => {
  native()._hostCacheSetLimit(5 * MiB);
  const n = floatsOf(2 * MiB);
  const made = [0, 1, 2].map(() => tensor(new Float32Array(n), [n]));
  for (const x of made) x.dispose();
  t.true(stats().cachedBytes <= 5 * MiB, `cached ${stats().cachedBytes} bytes under a 5 MiB bound`);
  t.true(stats().blocks >= 1, 'blocks up to the bound stay');
  native()._hostCacheSetLimit(0);
  t.is(stats().cachedBytes, 0);
  t.is(stats().blocks, 0);
  const hits = stats().hits;
  const again = tensor(new Float32Array(n), [n]);
  again.dispose();
  t.is(stats().hits, hits, 'nothing cached to reuse');
  t.is(stats().blocks, 0, 'a disposed block past the bound is freed at once');
  native()._hostCacheSetLimit(256 * MiB);
});

test.serial('small blocks are left to malloc', (t) => {
  native()._hostCacheSetLimit(64 * MiB);
  const before = stats();
  const small = tensor(new Float32Array(floatsOf(MiB)), [floatsOf(MiB)]);
  small.dispose();
  t.is(stats().cachedBytes, before.cachedBytes);
  t.throws(() => native()._hostCacheSetLimit(-1), { instanceOf: TypeError, message: /bytes/ });
});
