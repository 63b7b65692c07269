// Self-check of the onnxruntime peer: `npx tsx bench/ort-peer.check.ts`.
// 1. numerics against a naive float64 JS dense masked attention on a tiny jagged causal batch,
//    plus a row the rule leaves without keys (must come back as zeros after unpadOutput);
// 2. the sgemm anchor at m = n = k = 1024 (GFLOP/s);
// 3. the dense masked attention peer at B = 8, L = 1024, H = 4, D = 64 (ms).
import * as os from 'os';
import {
  buildAdditiveMask, createDenseMaskedAttention, createGemmAnchor, padPacked, randomFloats, timeIt, unpadOutput,
} from './ort-peer';

/** Naive packed self-attention, float64 accumulation; rows with no allowed key are zeros. */
function naiveAttention(q: Float32Array, k: Float32Array, v: Float32Array, offsets: Int32Array, H: number, D: number,
  allowed: (b: number, i: number, j: number) => boolean): Float64Array {
  const T = offsets[offsets.length - 1];
  const out = new Float64Array(T * H * D);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b + 1 < offsets.length; b++) {
    const base = offsets[b], len = offsets[b + 1] - base;
    for (let h = 0; h < H; h++)
      for (let i = 0; i < len; i++) {
        const s: number[] = [];
        let max = -Infinity;
        for (let j = 0; j < len; j++) {
          if (!allowed(b, i, j)) { s.push(-Infinity); continue; }
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[((base + i) * H + h) * D + d] * k[((base + j) * H + h) * D + d];
          s.push(dot * scale);
          max = Math.max(max, dot * scale);
        }
        if (max === -Infinity) continue;
        let sum = 0;
        const p = s.map((x) => { const e = Math.exp(x - max); sum += e; return e; });
        for (let j = 0; j < len; j++)
          for (let d = 0; d < D; d++) out[((base + i) * H + h) * D + d] += (p[j] / sum) * v[((base + j) * H + h) * D + d];
      }
  }
  return out;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return Number.isNaN(m) ? Infinity : m;
}

async function checkNumerics(): Promise<boolean> {
  const lengths = [5, 1, 7], H = 2, D = 8, B = lengths.length, Lmax = Math.max(...lengths);
  const offsets = new Int32Array(B + 1);
  lengths.forEach((l, b) => (offsets[b + 1] = offsets[b] + l));
  const T = offsets[B];
  const q = randomFloats(T * H * D, 1), k = randomFloats(T * H * D, 2), v = randomFloats(T * H * D, 3);
  const peer = await createDenseMaskedAttention({ heads: H, headDim: D, threads: 1 });
  const qp = padPacked(q, offsets, H, D, Lmax), kp = padPacked(k, offsets, H, D, Lmax), vp = padPacked(v, offsets, H, D, Lmax);

  let ok = true;
  const cases: [string, (b: number, i: number, j: number) => boolean][] = [
    ['causal', (_b, i, j) => j <= i],
    // query 2 of sequence 0 and query 0 of sequence 1 have no allowed key: expected zeros
    ['causal + empty rows', (b, i, j) => j <= i && !(b === 0 && i === 2) && b !== 1],
  ];
  for (const [name, allowed] of cases) {
    const mask = buildAdditiveMask(B, Lmax, offsets, allowed);
    const padded = await peer.run(qp, kp, vp, mask, B, Lmax);
    let finite = true;
    for (const x of padded) if (!Number.isFinite(x)) finite = false;
    const got = unpadOutput(padded, offsets, H, D, Lmax, mask);
    const err = maxAbsDiff(got, naiveAttention(q, k, v, offsets, H, D, allowed));
    const pass = err < 1e-5 && finite;
    ok &&= pass;
    console.log(`numerics [${name}] B=${B} lengths=${lengths.join(',')} H=${H} D=${D}: max abs error ${err.toExponential(2)}, all padded outputs finite: ${finite} -> ${pass ? 'OK' : 'FAIL'}`);
  }
  await peer.release();
  return ok;
}

async function main() {
  const ort = await import('onnxruntime-node');
  const threads = os.cpus().length;
  console.log(`onnxruntime-node ${ort.env.versions.node ?? '?'}, ${threads} threads (${os.cpus()[0]?.model ?? 'unknown CPU'})`);

  const ok = await checkNumerics();

  const anchor = await createGemmAnchor({ m: 1024, n: 1024, k: 1024, threads });
  const t = await timeIt(() => anchor.run(), { minMs: 500 });
  console.log(`sgemm anchor 1024^3: ${t.medianMs.toFixed(2)} ms median of ${t.runs}, ${(anchor.flops / (t.medianMs * 1e6)).toFixed(1)} GFLOP/s`);
  await anchor.release();

  const B = 8, L = 1024, H = 4, D = 64;
  const peer = await createDenseMaskedAttention({ heads: H, headDim: D, threads });
  const q = randomFloats(B * H * L * D, 4), k = randomFloats(B * H * L * D, 5), v = randomFloats(B * H * L * D, 6);
  const offsets = new Int32Array(B + 1).map((_, i) => i * L);
  const mask = buildAdditiveMask(B, L, offsets, (_b, i, j) => j <= i);
  const a = await timeIt(() => peer.run(q, k, v, mask, B, L));
  const denseFlops = 4 * B * H * L * L * D; // QK^T and PV, every pair computed
  console.log(`dense masked attention B=${B} L=${L} H=${H} D=${D} (causal mask): ${a.medianMs.toFixed(2)} ms median of ${a.runs}, ` +
    `${(denseFlops / (a.medianMs * 1e6)).toFixed(1)} dense GFLOP/s (${(denseFlops / 2 / (a.medianMs * 1e6)).toFixed(1)} useful causal GFLOP/s)`);
  await peer.release();

  if (!ok) { console.error('ort-peer check FAILED'); process.exit(1); }
  console.log('ort-peer check OK');
}

main().catch((e) => { console.error(e); process.exit(1); });
