// `npm run bench`: maskedAttention on Rec2PM / PerSRec shapes, native CPU vs onnxruntime-node dense
// masked attention (MatMul -> Add mask -> Softmax -> MatMul) on the same inputs in the same run, and
// a dense sgemm anchor for this machine's practical peak. Useful FLOP/s count allowed pairs only.
// Then one training step (forward with lse + maskedAttentionBackward) on the Rec2PM stage-1
// (`rec2pm-reference`), stage-2 (`rec2pm-update`) and causal layouts, per device, with backward ÷
// forward (FlashAttention-2's backward costs about 2.5x its forward; the CPU target is <= 3x).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, maskedAttention, maskedAttentionBackward, presets, reference, tensor, Tensor } from '../lib/index';
import type { Device, PresetName } from '../lib/index';
import { cpuTargets } from './cpu-targets';
import { buildAdditiveMask, createDenseMaskedAttention, measureSgemmPeak, padPacked, timeIt } from './ort-peer';
import { writeAttentionChart } from './chart';

const H = 4, D = 64, SEGMENT_ITEMS = 200, MEMORY_TOKENS = 4;
const SHAPES = [{ users: 8, tokens: 1024 }, { users: 1, tokens: 4096 }];
const RULES: PresetName[] = ['causal', 'persrec', 'rec2pm-update'];

interface Layout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array }

/** Per user: PerSRec `S0 M0 S1 M1 ...` or Rec2PM-update blocks `[memory; S_h; Q]`, 200 items a segment. */
function buildLayout(rule: PresetName, users: number, tokens: number): Layout {
  const segments: number[] = [], roles: number[] = [];
  for (let u = 0; u < users; u++) {
    let n = 0, seg = 0;
    const push = (role: number, count: number) => { for (let i = 0; i < count && n < tokens; i++, n++) { segments.push(seg); roles.push(role); } };
    while (n < tokens) {
      if (rule === 'rec2pm-update') { push(1, MEMORY_TOKENS); push(0, SEGMENT_ITEMS); push(1, MEMORY_TOKENS); }
      else { push(0, SEGMENT_ITEMS); push(1, MEMORY_TOKENS); }
      seg++;
    }
  }
  const offsets = new Int32Array(users + 1).map((_, i) => i * tokens);
  return { offsets, segments: Int32Array.from(segments), roles: Uint8Array.from(roles) };
}

function countAllowed(rule: PresetName, layout: Layout, users: number, tokens: number): number {
  let allowed = 0;
  for (let u = 0; u < users; u++) {
    const base = layout.offsets[u];
    for (let i = 0; i < tokens; i++)
      for (let j = 0; j < tokens; j++)
        if (reference.refAllowed(presets[rule], layout.roles[base + i], layout.roles[base + j], layout.segments[base + i], layout.segments[base + j], i, j)) allowed++;
  }
  return allowed;
}

function randomFloats(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; a[i] = s / 2147483648 - 1; }
  return a;
}

const TRAIN_RULES: PresetName[] = ['rec2pm-reference', 'rec2pm-update', 'causal'];
const TRAIN_SHAPE = { users: 8, tokens: 1024 };

interface TrainRow { device: Device; shape: string; rule: PresetName; forwardMs: number; backwardMs: number; stepMs: number; backwardOverForward: number; skipped?: string }

/** Forward (returnLse) and backward medians per rule on `device`, float32 (CPU) / float16 (GPU). */
async function trainingStep(device: Device): Promise<TrainRow[]> {
  const { users, tokens } = TRAIN_SHAPE, T = users * tokens;
  const dtype = device === 'cpu' ? 'float32' : 'float16';
  const make = (seed: number, width: number) => tensor(randomFloats(T * H * width, seed), [T, H, width], { device, dtype });
  const q = make(11, D), k = make(12, D), v = make(13, D), dOutput = make(14, D);
  const out: TrainRow[] = [];
  for (const rule of TRAIN_RULES) {
    const opts = { q: buildLayout(rule, users, tokens), rule };
    const fwd = await maskedAttention(q, k, v, { ...opts, returnLse: true });
    const forward = await timeIt(async () => { const r = await maskedAttention(q, k, v, { ...opts, returnLse: true }); r.output.dispose(); r.lse?.dispose(); });
    const backward = await timeIt(async () => {
      const g = await maskedAttentionBackward({ q, k, v, output: fwd.output, lse: fwd.lse, dOutput }, opts);
      g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
    });
    fwd.output.dispose(); fwd.lse?.dispose();
    out.push({ device, shape: `${users}x${tokens}`, rule, forwardMs: forward.medianMs, backwardMs: backward.medianMs, stepMs: forward.medianMs + backward.medianMs,
      backwardOverForward: backward.medianMs / forward.medianMs });
  }
  for (const x of [q, k, v, dOutput]) x.dispose();
  return out;
}

async function trainingRows(): Promise<TrainRow[]> {
  const rows = await trainingStep('cpu');
  const cuda = backends().cuda;
  const gpuSkip = !cuda.available ? `CUDA unavailable (${cuda.reason ?? 'no reason given'})`
    : cuda.emulated ? 'CUDA is the CPU emulator (LIFELONG_CUDA_EMULATE=1): no GPU timing' : '';
  if (gpuSkip) {
    console.log(`training step on cuda: skipped: ${gpuSkip}`);
    for (const rule of TRAIN_RULES) rows.push({ device: 'cuda', shape: `${TRAIN_SHAPE.users}x${TRAIN_SHAPE.tokens}`, rule, forwardMs: NaN, backwardMs: NaN, stepMs: NaN, backwardOverForward: NaN, skipped: gpuSkip });
  } else {
    rows.push(...await trainingStep('cuda'));
  }
  console.log(`\ntraining step (forward with lse + backward), H=${H}, D=${D}; CPU float32, GPU float16`);
  console.log('device shape    rule              fwd ms    bwd ms   step ms  bwd/fwd');
  for (const r of rows)
    console.log(r.skipped ? `${r.device.padEnd(6)} ${r.shape.padEnd(8)} ${r.rule.padEnd(16)} skipped: ${r.skipped}`
      : `${r.device.padEnd(6)} ${r.shape.padEnd(8)} ${r.rule.padEnd(16)} ${r.forwardMs.toFixed(2).padStart(8)} ${r.backwardMs.toFixed(2).padStart(9)} ${r.stepMs.toFixed(2).padStart(9)} ${('x' + r.backwardOverForward.toFixed(2)).padStart(8)}${r.device === 'cpu' && r.backwardOverForward > 3 ? '  (above the 3x target)' : ''}`);
  return rows;
}

async function main() {
  const threads = os.cpus().length;
  const info = backends();
  console.log(`lifelong-kernels bench: maskedAttention, H=${H}, D=${D}, float32, ${threads} threads, CPU SIMD ${info.cpu.simd}`);
  console.log(`CUDA: ${info.cuda.available ? info.cuda.devices.map((d) => d.name).join(', ') : 'unavailable (' + info.cuda.reason + ')'}\n`);

  const peakGflops = await measureSgemmPeak(threads);
  console.log(`dense sgemm anchor (onnxruntime MatMul 1024^3): ${peakGflops.toFixed(1)} GFLOP/s\n`);

  const peer = await createDenseMaskedAttention({ heads: H, headDim: D, threads });
  const rows: Record<string, unknown>[] = [];
  for (const { users, tokens } of SHAPES) {
    const T = users * tokens;
    console.log(`-- ${users} users x ${tokens} tokens (${RULES.length} rules) …`);
    const q = randomFloats(T * H * D, 1), k = randomFloats(T * H * D, 2), v = randomFloats(T * H * D, 3);
    const qt = tensor(q, [T, H, D]), kt = tensor(k, [T, H, D]), vt = tensor(v, [T, H, D]);
    const offsetsFull = new Int32Array(users + 1).map((_, i) => i * tokens);
    const qp = padPacked(q, offsetsFull, H, D, tokens), kp = padPacked(k, offsetsFull, H, D, tokens), vp = padPacked(v, offsetsFull, H, D, tokens);
    for (const rule of RULES) {
      const layout = buildLayout(rule, users, tokens);
      const allowed = countAllowed(rule, layout, users, tokens);
      const usefulFlops = allowed * H * (2 * D + 2 * D);
      const opts = { q: layout, rule };
      const ours = await timeIt(async () => { const r = await maskedAttention(qt, kt, vt, opts); r.output.dispose(); });
      const mask = buildAdditiveMask(users, tokens, offsetsFull, (b, i, j) =>
        reference.refAllowed(presets[rule], layout.roles[b * tokens + i], layout.roles[b * tokens + j], layout.segments[b * tokens + i], layout.segments[b * tokens + j], i, j));
      const ort = await timeIt(() => peer.run(qp, kp, vp, mask, users, tokens));
      const row = {
        shape: `${users}x${tokens}`, rule, allowedPairs: allowed, density: allowed / (users * tokens * tokens),
        oursMs: ours.medianMs, oursGflops: usefulFlops / (ours.medianMs * 1e6),
        ortMs: ort.medianMs, ortGflops: usefulFlops / (ort.medianMs * 1e6), speedup: ort.medianMs / ours.medianMs,
      };
      rows.push(row);
      console.log(`${row.shape.padEnd(8)} ${rule.padEnd(14)} density ${(row.density * 100).toFixed(1).padStart(5)}%  ours ${row.oursMs.toFixed(2).padStart(8)} ms ${row.oursGflops.toFixed(1).padStart(7)} GFLOP/s | onnxruntime ${row.ortMs.toFixed(2).padStart(8)} ms ${row.ortGflops.toFixed(1).padStart(7)} GFLOP/s | x${row.speedup.toFixed(2)}`);
    }
    for (const x of [qt, kt, vt] as Tensor[]) x.dispose();
  }
  await peer.release();

  console.log('\nshape    rule           ours ms   ours GF/s   ORT ms    ORT GF/s  speed-up  ours % of sgemm peak');
  for (const r of rows as { shape: string; rule: string; oursMs: number; oursGflops: number; ortMs: number; ortGflops: number; speedup: number }[])
    console.log(`${r.shape.padEnd(8)} ${r.rule.padEnd(14)} ${r.oursMs.toFixed(2).padStart(8)} ${r.oursGflops.toFixed(1).padStart(10)} ${r.ortMs.toFixed(2).padStart(8)} ${r.ortGflops.toFixed(1).padStart(10)} ${('x' + r.speedup.toFixed(2)).padStart(9)} ${((r.oursGflops / peakGflops) * 100).toFixed(0).padStart(8)}%`);

  const training = await trainingRows();
  const targets = await cpuTargets(threads);
  console.log(`load average at the end: ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} on ${threads} CPUs (other processes share them)`);

  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `attention-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({
    bench: 'maskedAttention', date: new Date().toISOString(), machine: { cpus: os.cpus()[0]?.model, threads, simd: info.cpu.simd },
    config: { heads: H, headDim: D, segmentItems: SEGMENT_ITEMS, memoryTokens: MEMORY_TOKENS, dtype: 'float32' },
    sgemmPeakGflops: peakGflops, peer: 'onnxruntime-node dense masked attention (MatMul, Add mask, Softmax, MatMul)', rows, training, targets,
    loadAverage: os.loadavg(),
  }, null, 2));
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
  writeAttentionChart(path.relative(process.cwd(), file), rows);
}

main().catch((e) => { console.error(e); process.exit(1); });
