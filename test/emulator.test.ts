// The emulated-CUDA build's execution counters (SPEC §8): backends().cuda.emulator says how many
// launches, warp-wide mma / ldmatrix instructions and per-thread cp.async copies the emulator ran.
import test from 'ava';
import { backends, maskedAttention, tensor } from '../lib/index';

const cuda = backends().cuda;
const why = cuda.emulated ? '' : ' (skipped: not the emulated-CUDA build; run with LIFELONG_CUDA_EMULATE=1 after `npm run build:emu`)';

test('backends().cuda.emulator is present exactly in the emulated build', (t) => {
  if (!cuda.emulated) {
    t.is(cuda.emulator, undefined, 'no counters outside the emulator');
    return;
  }
  const e = cuda.emulator;
  t.truthy(e);
  for (const key of ['launches', 'mma', 'ldmatrix', 'cpAsync'] as const) t.true(Number.isInteger(e![key]) && e![key] >= 0, key);
});

(cuda.emulated ? test : test.skip)(`the emulator's counters move when a CUDA kernel runs${why}`, async (t) => {
  const before = backends().cuda.emulator!;
  const T = 6, H = 2, D = 16;
  const values = Array.from({ length: T * H * D }, (_, i) => Math.sin(i));
  const q = tensor(values, [T, H, D], { device: 'cuda' });
  const { output } = await maskedAttention(q, q, q, { q: { offsets: new Int32Array([0, 2, T]) } });
  t.is((await output.data()).length, T * H * D);
  const after = backends().cuda.emulator!;
  t.true(after.launches > before.launches, `launches ${before.launches} -> ${after.launches}`);
  for (const key of ['mma', 'ldmatrix', 'cpAsync'] as const) t.true(after[key] >= before[key], `${key} never decreases`);
  const again = backends().cuda.emulator!;
  t.not(again, after, 'each call returns a fresh object');
  t.deepEqual(again, after, 'nothing ran in between');
});
