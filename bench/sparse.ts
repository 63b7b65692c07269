// `npm run bench:sparse`: GEMs-shaped mid-term stream (8 heads, D = 64, indexer Hi = 2, Di = 64,
// 4 queries per user, 64 users; 1k / 5k / 20k keys; top-k 256 / 1,024) on the native CPU:
// indexer + top-k + sparse attention (fused and step by step) against dense cross attention over
// every key with onnxruntime-node and with our own maskedAttention(rule 'full'), in one run, beside a
// dense sgemm anchor. Useful FLOP/s count what each path must compute: the sparse path the indexer over
// every key plus attention over the selected keys only; dense attention every (query, key) pair.
// The sparse path is bound by gathering scattered K / V rows, so its bytes read per second are shown too.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, indexedCrossAttention, indexerScores, maskedAttention, sparseAttention, tensor, topK, DType, Tensor } from '../lib/index';
import { createDenseMaskedAttention, measureSgemmPeak, randomFloats, timeIt } from './ort-peer';

const USERS = 64, QUERIES = 4, H = 8, D = 64, HI = 2, DI = 64;

async function main() {
  const threads = os.cpus().length;
  const info = backends();
  // `-- --dtype float16` (or bfloat16) runs our paths on that dtype (onnxruntime stays float32).
  const dtypeArg = process.argv.indexOf('--dtype');
  const dtype = (dtypeArg >= 0 ? process.argv[dtypeArg + 1] : 'float32') as DType;
  if (!['float32', 'float16', 'bfloat16'].includes(dtype)) throw new RangeError(`--dtype: expected float32, float16 or bfloat16, got '${dtype}'`);
  const elemBytes = dtype === 'float32' ? 4 : 2;
  console.log(`lifelong-kernels bench: indexer-selected sparse cross attention, ${USERS} users x ${QUERIES} queries, H=${H}, D=${D}, indexer ${HI}x${DI}, ${dtype}, ${threads} threads`);
  console.log(`CUDA: ${info.cuda.available ? info.cuda.devices.map((d) => d.name).join(', ') : 'unavailable (' + info.cuda.reason + ')'}\n`);
  const peakGflops = await measureSgemmPeak(threads);
  console.log(`dense sgemm anchor (onnxruntime MatMul 1024^3): ${peakGflops.toFixed(1)} GFLOP/s\n`);
  const peer = await createDenseMaskedAttention({ heads: H, headDim: D, threads });
  const rows: Record<string, unknown>[] = [];
  console.log('keys    top-k  fused ms  GF/s  GB/s  steps ms  dense(ours) ms  GF/s  dense(ORT) ms  GF/s  speed-up vs ORT  vs ours');
  // `-- --keys 1000,5000` runs those key counts only (default 1,000, 5,000 and 20,000).
  const keysArg = process.argv.indexOf('--keys');
  const keyCounts = keysArg >= 0 ? process.argv[keysArg + 1].split(',').map(Number) : [1000, 5000, 20000];
  if (keyCounts.some((n) => !Number.isInteger(n) || n < 1)) throw new RangeError('--keys: expected positive integers separated by commas');
  for (const keys of keyCounts) {
    const nq = USERS * QUERIES, tk = USERS * keys;
    const qOffsets = new Int32Array(USERS + 1).map((_, i) => i * QUERIES);
    const kOffsets = new Int32Array(USERS + 1).map((_, i) => i * keys);
    const q = tensor(randomFloats(nq * H * D, 1), [nq, H, D], { dtype });
    const k = tensor(randomFloats(tk * H * D, 2), [tk, H, D], { dtype });
    const v = tensor(randomFloats(tk * H * D, 3), [tk, H, D], { dtype });
    const qI = tensor(randomFloats(nq * HI * DI, 4), [nq, HI, DI], { dtype });
    const kI = tensor(randomFloats(tk * DI, 5), [tk, DI], { dtype });
    const w = tensor(randomFloats(nq * HI, 6), [nq, HI], { dtype });
    const layout = { qOffsets, kOffsets };
    // Dense baselines: every query attends to all keys of its user.
    const denseOurs = await timeIt(async () => {
      const r = await maskedAttention(q, k, v, { q: { offsets: qOffsets }, kv: { offsets: kOffsets }, rule: 'full' });
      r.output.dispose();
    });
    // onnxruntime: the same dense cross attention, users as the batch, [64, H, 4, D] x [64, H, keys, D].
    const qp = randomFloats(USERS * H * QUERIES * D, 7);
    const kp = randomFloats(USERS * H * keys * D, 8);
    const vp = randomFloats(USERS * H * keys * D, 9);
    const mask = new Float32Array(USERS * QUERIES * keys);  // every key allowed
    const ortMs = (await timeIt(() => peer.runCross(qp, kp, vp, mask, USERS, QUERIES, keys))).medianMs;
    for (const topk of [256, 1024]) {
      const fused = await timeIt(async () => {
        const r = await indexedCrossAttention(q, k, v, { indexer: { q: qI, k: kI, w }, topK: topk, ...layout });
        for (const x of [r.output, r.indices, r.values]) x.dispose();
      });
      const steps = await timeIt(async () => {
        const s = await indexerScores(qI, kI, w, layout);
        const c = await topK(s, topk);
        const r = await sparseAttention(q, k, v, c.indices, layout);
        for (const x of [s, c.indices, c.values, r.output] as Tensor[]) x.dispose();
      });
      // Useful work: indexer 2·Hi·Di per (query, key); attention 2·(D + Dv) per (query, head, key attended).
      const selected = Math.min(topk, keys);
      const sparseFlops = nq * (2 * HI * DI * keys + 2 * H * (D + D) * selected);
      const denseFlops = nq * 2 * H * (D + D) * keys;
      // Bytes the sparse path must read: every indexer key once, each query's selected K and V rows.
      const sparseBytes = elemBytes * (tk * DI + nq * selected * H * (D + D));
      const gflops = (flops: number, ms: number) => flops / (ms * 1e6);
      const row = { keys, topK: topk, fusedMs: fused.medianMs, stepsMs: steps.medianMs, denseOursMs: denseOurs.medianMs, denseOrtMs: ortMs,
        fusedGflops: gflops(sparseFlops, fused.medianMs), fusedGBps: sparseBytes / (fused.medianMs * 1e6),
        denseOursGflops: gflops(denseFlops, denseOurs.medianMs), denseOrtGflops: gflops(denseFlops, ortMs),
        speedupVsOrt: ortMs / fused.medianMs, speedupVsOurs: denseOurs.medianMs / fused.medianMs };
      rows.push(row);
      console.log(`${String(keys).padStart(6)} ${String(topk).padStart(6)} ${fused.medianMs.toFixed(2).padStart(9)} ${row.fusedGflops.toFixed(1).padStart(5)} ${row.fusedGBps.toFixed(1).padStart(5)} ` +
        `${steps.medianMs.toFixed(2).padStart(9)} ${denseOurs.medianMs.toFixed(2).padStart(15)} ${row.denseOursGflops.toFixed(1).padStart(5)} ` +
        `${ortMs.toFixed(2).padStart(14)} ${row.denseOrtGflops.toFixed(1).padStart(5)} ${('x' + row.speedupVsOrt.toFixed(2)).padStart(16)} ${('x' + row.speedupVsOurs.toFixed(2)).padStart(8)}`);
    }
    for (const x of [q, k, v, qI, kI, w]) x.dispose();
  }
  await peer.release();
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `sparse-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ bench: 'indexedCrossAttention', date: new Date().toISOString(), dtype, users: USERS, queries: QUERIES, heads: H, headDim: D, indexerHeads: HI, indexerDim: DI, threads, sgemmPeakGflops: peakGflops,
    peer: 'onnxruntime-node dense cross attention over every key (MatMul, Add mask, Softmax, MatMul)', rows }, null, 2));
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
