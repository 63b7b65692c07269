// Host-side hazards of the CUDA path (issue #9 part 4), on CUDA when it is available (the emulator
// counts: LIFELONG_CUDA_EMULATE=1), skipped with the reason otherwise:
// - grid dimensions: more than 65,535 queries (CUDA's grid.y limit) must work as on the CPU;
// - a failed device allocation is that call's error, never the next op's.
// Tiny dims keep the emulated run short (~45 s): the grid, not the arithmetic, is under test.
import test from 'ava';
import { indexedCrossAttention, indexerScores, tensor, Tensor } from '../lib/index';
import { native } from '../lib/native';
import { compare, cudaSkipReason, Rng } from './helpers';

const reason = cudaSkipReason();
const NQ = 70000;  // > 65,535
// Under AddressSanitizer (npm run test:asan) the emulator runs these grids about 10x slower.
const asan = /libasan/.test(process.env.LD_PRELOAD ?? '');

function offsetsOf(lengths: number[]): Int32Array {
  const o = new Int32Array(lengths.length + 1);
  lengths.forEach((l, i) => { o[i + 1] = o[i] + l; });
  return o;
}

if (reason) {
  test.skip(`CUDA host-side hazards (skipped: ${reason}; set LIFELONG_CUDA_EMULATE=1 or use a GPU)`, () => {});
} else {
  test(`indexerScores cuda: ${NQ.toLocaleString('en-US')} queries (grid.y limit 65,535) = cpu`, async (t) => {
    const rng = new Rng(70000);
    // Entries of 30,000 / 0 / 40,000 queries over 5 / 3 / 9 keys: rows on both sides of 65,535.
    const qOffsets = offsetsOf([30000, 0, 40000]), kOffsets = offsetsOf([5, 3, 9]);
    const Hi = 2, Di = 8, Tk = kOffsets[3];
    const qI = rng.floats(NQ * Hi * Di), kI = rng.floats(Tk * Di), w = rng.floats(NQ * Hi);
    const run = async (device: 'cpu' | 'cuda') => {
      const s = await indexerScores(tensor(qI, [NQ, Hi, Di], { device }), tensor(kI, [Tk, Di], { device }), tensor(w, [NQ, Hi], { device }), { qOffsets, kOffsets });
      t.deepEqual(s.shape, [NQ, 9]);
      const out = await s.float32();
      s.dispose();
      return out;
    };
    const cpu = await run('cpu');
    const cuda = await run('cuda');
    t.is(compare(cuda, cpu, 'float32', 'scores'), '');
  });

  const icaTitle = `indexedCrossAttention cuda: ${NQ.toLocaleString('en-US')} queries on the unfused path (topK 513 > 512) = cpu`;
  (asan ? test.skip : test)(asan ? `${icaTitle} (skipped under AddressSanitizer: about 5 minutes there; the plain emulated run and a GPU run it)` : icaTitle, async (t) => {
    // The unfused path scores rows with the indexer kernel (grid.y = rows); topK above the fused
    // kernel's 512 takes it with few keys. Rows 62,000 .. 69,999 have keys and straddle 65,535; the
    // first 62,000 attend to an empty sequence (cheap on the emulator, and still every grid row).
    const rng = new Rng(513);
    const qOffsets = offsetsOf([62000, 0, 8000]), kOffsets = offsetsOf([0, 7, 12]);
    const Hi = 1, Di = 8, H = 2, D = 8, Tk = kOffsets[3], K = 513;
    const data = { qI: rng.floats(NQ * Hi * Di), kI: rng.floats(Tk * Di), w: rng.floats(NQ * Hi), q: rng.floats(NQ * H * D), k: rng.floats(Tk * H * D), v: rng.floats(Tk * H * D) };
    const run = async (device: 'cpu' | 'cuda') => {
      const x = (a: Float32Array, shape: number[]) => tensor(a, shape, { device });
      const ins: Tensor[] = [x(data.q, [NQ, H, D]), x(data.k, [Tk, H, D]), x(data.v, [Tk, H, D]), x(data.qI, [NQ, Hi, Di]), x(data.kI, [Tk, Di]), x(data.w, [NQ, Hi])];
      const r = await indexedCrossAttention(ins[0], ins[1], ins[2], { indexer: { q: ins[3], k: ins[4], w: ins[5] }, topK: K, qOffsets, kOffsets });
      const out = { output: await r.output.float32(), indices: (await r.indices.data()) as Int32Array, values: (await r.values.data()) as Float32Array };
      for (const y of [...ins, r.output, r.indices, r.values]) y.dispose();
      return out;
    };
    const cpu = await run('cpu');
    const cuda = await run('cuda');
    // Selections equal except where rounding flips near-equal scores (then the values agree).
    let differ = 0;
    for (let i = 0; i < cpu.indices.length; i++)
      if (cpu.indices[i] !== cuda.indices[i] && Math.abs(cpu.values[i] - cuda.values[i]) > 1e-5 * (1 + Math.abs(cpu.values[i]))) differ++;
    t.is(differ, 0, 'selected indices');
    t.is(compare(cuda.values, cpu.values, 'float32', 'selected values'), '');
    t.is(compare(cuda.output, cpu.output, 'float32', 'output'), '');
    t.true(cuda.indices[65535 * K] >= 0 && cuda.indices[(NQ - 1) * K] >= 0, 'rows past 65,535 selected keys');
  });

  // A refused device allocation (1e15 bytes: more than any GPU, and more address space than the
  // emulator's host has) rejects that call, leaves nothing allocated, and the next op on the device
  // runs clean. Under AddressSanitizer the emulator's allocator aborts on such a size instead of
  // returning null, so that run skips this test.
  (asan ? test.skip : test)(`cuda: a failed device allocation does not fail the next op${asan ? ' (skipped under AddressSanitizer: its allocator aborts on 1e15 bytes)' : ''}`, async (t) => {
    const addon = native();
    const live = addon.liveMemory();
    t.throws(() => new addon.Storage('cuda', 1e15), { message: /cudaMalloc|out of memory/i });
    t.deepEqual(addon.liveMemory(), live, 'nothing left allocated');
    const qOffsets = offsetsOf([3, 2]), kOffsets = offsetsOf([4, 5]);
    const qI = tensor(new Float32Array(5 * 8).fill(0.5), [5, 1, 8], { device: 'cuda' });
    const kI = tensor(new Float32Array(9 * 8).fill(0.25), [9, 8], { device: 'cuda' });
    const w = tensor(new Float32Array(5).fill(1), [5, 1], { device: 'cuda' });
    const s = await indexerScores(qI, kI, w, { qOffsets, kOffsets });
    const got = await s.float32();
    t.is(got[0], 1);  // 8 x 0.5 x 0.25
    t.is(got[4], -Infinity);  // query 0's sequence has 4 keys
    for (const x of [qI, kI, w, s]) x.dispose();
  });
}
