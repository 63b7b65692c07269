// Part of `npm run bench`: the CPU path's targets of issue #14, each a ratio measured within one run
// (the machine's load drifts between runs), the whole set repeated BENCH_RUNS times (default 3) and
// reported as median and spread. Useful FLOP/s count allowed pairs only: 4 * D per (pair, head).
// BENCH_TARGETS picks groups (comma-separated: causal, heads, cross; default all); run alone with
// `npm run build:ts && node dist/bench/cpu-targets.js` (writes bench/results/cpu-targets-*.json).
// Ratios are also given by process CPU time per call (all threads), steadier than wall time when
// other processes share the cores.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { maskedAttention, presets, reference, tensor, DType, Tensor } from '../lib/index';
import type { PresetName } from '../lib/index';
import { createDenseMaskedAttention, measureSgemmPeak, timeIt } from './ort-peer';

export interface Layout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array }

export function randomFloats(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; a[i] = s / 2147483648 - 1; }
  return a;
}

/** Per user, `blocks` of (role, count) repeated until `tokens`; one segment per repetition. */
export function layoutOf(users: number, tokens: number, blocks: [number, number][]): Layout {
  const segments: number[] = [], roles: number[] = [];
  for (let u = 0; u < users; u++) {
    let n = 0;
    for (let seg = 0; n < tokens; seg++)
      for (const [role, count] of blocks) for (let i = 0; i < count && n < tokens; i++, n++) { segments.push(seg); roles.push(role); }
  }
  return { offsets: Int32Array.from({ length: users + 1 }, (_, i) => i * tokens), segments: Int32Array.from(segments), roles: Uint8Array.from(roles) };
}

function allowedPairs(rule: PresetName, l: Layout): number {
  const r = presets[rule];
  let n = 0;
  for (let b = 0; b + 1 < l.offsets.length; b++) {
    const o = l.offsets[b], len = l.offsets[b + 1] - o;
    for (let i = 0; i < len; i++)
      for (let j = 0; j < len; j++) if (reference.refAllowed(r, l.roles[o + i], l.roles[o + j], l.segments[o + i], l.segments[o + j], i, j)) n++;
  }
  return n;
}

function inputs(tokens: number, heads: number, dim: number, dtype: DType, seed: number): Tensor[] {
  return [0, 1, 2].map((i) => tensor(randomFloats(tokens * heads * dim, seed + i), [tokens, heads, dim], { dtype }));
}

/** Median wall time per call and mean process CPU time per call (all threads, warm-up included):
 * on a shared machine the CPU time swings less than the wall time. */
interface CallTime { wallMs: number; cpuMs: number }
async function timeCalls(fn: () => Promise<unknown>): Promise<CallTime> {
  let calls = 0;
  const cpu0 = process.cpuUsage();
  const { medianMs } = await timeIt(async () => { calls++; await fn(); });
  const cpu = process.cpuUsage(cpu0);
  return { wallMs: medianMs, cpuMs: (cpu.user + cpu.system) / 1000 / calls };
}

async function attentionTime(x: Tensor[], layout: Layout, rule: PresetName): Promise<CallTime> {
  return timeCalls(async () => { const r = await maskedAttention(x[0], x[1], x[2], { q: layout, rule }); r.output.dispose(); });
}

/** value: the ratio by wall time; cpuValue: the same ratio by process CPU time per call, where it applies. */
interface Target { name: string; value: number; cpuValue?: number; goal: string; met: boolean; times?: Record<string, number> }

const GROUPS = ['causal', 'heads', 'cross'];
function selectedGroups(): Set<string> {
  const names = (process.env.BENCH_TARGETS ?? GROUPS.join(',')).split(',').map((x) => x.trim()).filter(Boolean);
  for (const n of names) if (!GROUPS.includes(n)) throw new RangeError(`BENCH_TARGETS: unknown group '${n}' (expected ${GROUPS.join(', ')})`);
  return new Set(names);
}

async function oneRun(threads: number, crossKeys: number, groups: Set<string>): Promise<Target[]> {
  const out: Target[] = [];
  const peak = await measureSgemmPeak(threads);  // this run's anchor: the load drifts between runs
  if (groups.has('causal')) await causalTargets(peak, out);
  if (groups.has('heads')) await headTargets(out);
  if (groups.has('cross')) {
    await crossTarget(threads, crossKeys, 4, peak, out);
    await crossTarget(threads, crossKeys, 8, peak, out);  // 5-8 query rows: two 4-row groups per chunk
    await crossHalfTarget(crossKeys, out);
  }
  return out;
}

async function causalTargets(peak: number, out: Target[]): Promise<void> {
  // 1-3: causal / memory-token masks on 8 users x 1024 tokens, H4 D64, and causal in bfloat16.
  const users = 8, tokens = 1024, T = users * tokens;
  const f32 = inputs(T, 4, 64, 'float32', 1), bf16 = inputs(T, 4, 64, 'bfloat16', 1);
  const layouts: Record<string, Layout> = {
    causal: layoutOf(users, tokens, [[0, tokens]]),
    persrec: layoutOf(users, tokens, [[0, 200], [1, 4]]),
    'rec2pm-update': layoutOf(users, tokens, [[1, 4], [0, 200], [1, 4]]),
  };
  const gflops: Record<string, number> = {}, cpuGflops: Record<string, number> = {}, times: Record<string, CallTime> = {};
  for (const rule of ['causal', 'persrec', 'rec2pm-update'] as PresetName[]) {
    const flops = allowedPairs(rule, layouts[rule]) * 4 * 4 * 64;
    times[rule] = await attentionTime(f32, layouts[rule], rule);
    gflops[rule] = flops / (times[rule].wallMs * 1e6);
    cpuGflops[rule] = flops / (times[rule].cpuMs * 1e6);
  }
  const callTimes = (...rules: string[]) =>
    Object.fromEntries(rules.flatMap((r) => [[`${r}WallMs`, times[r].wallMs], [`${r}CpuMs`, times[r].cpuMs]]));
  out.push({ name: 'causal / sgemm anchor', value: gflops.causal / peak, goal: '>= 0.75', met: gflops.causal / peak >= 0.75, times: callTimes('causal') });
  for (const rule of ['persrec', 'rec2pm-update'])
    out.push({ name: `${rule} / causal (useful GFLOP/s)`, value: gflops[rule] / gflops.causal, cpuValue: cpuGflops[rule] / cpuGflops.causal,
      goal: '>= 0.75', met: gflops[rule] / gflops.causal >= 0.75, times: callTimes(rule, 'causal') });
  const bf = await attentionTime(bf16, layouts.causal, 'causal'), f = await attentionTime(f32, layouts.causal, 'causal');
  const bfRatio = bf.wallMs / f.wallMs;
  out.push({ name: 'bfloat16 / float32 time (causal)', value: bfRatio, cpuValue: bf.cpuMs / f.cpuMs, goal: '<= 0.7 (AVX512-BF16 machines)', met: bfRatio <= 0.7,
    times: { bfloat16WallMs: bf.wallMs, bfloat16CpuMs: bf.cpuMs, float32WallMs: f.wallMs, float32CpuMs: f.cpuMs } });
  for (const x of [...f32, ...bf16]) x.dispose();
}

async function headTargets(out: Target[]): Promise<void> {
  // 5: recommender-sized heads, 256 users x [4 memory; 50 items; 4 queries], rec2pm-update, same tokens.
  const small = layoutOf(256, 58, [[1, 4], [0, 50], [1, 4]]);
  const pairs = allowedPairs('rec2pm-update', small);
  const headGflops: Record<number, number> = {}, headCpuGflops: Record<number, number> = {};
  const headTimes: Record<string, number> = {};
  for (const [H, D] of [[1, 64], [2, 32], [4, 16], [8, 8]]) {
    const x = inputs(256 * 58, H, D, 'float32', 7);
    const time = await attentionTime(x, small, 'rec2pm-update');
    headGflops[D] = pairs * H * 4 * D / (time.wallMs * 1e6);
    headCpuGflops[D] = pairs * H * 4 * D / (time.cpuMs * 1e6);
    headTimes[`${H}x${D}WallMs`] = time.wallMs;
    headTimes[`${H}x${D}CpuMs`] = time.cpuMs;
    x.forEach((t) => t.dispose());
  }
  for (const D of [32, 16, 8])
    out.push({ name: `${64 / D} heads x ${D} / 1 head x 64 (useful GFLOP/s)`, value: headGflops[D] / headGflops[64], cpuValue: headCpuGflops[D] / headCpuGflops[64],
      goal: '>= 0.75', met: headGflops[D] / headGflops[64] >= 0.75, times: headTimes });
}

async function crossTarget(threads: number, crossKeys: number, Lq: number, peak: number, out: Target[]): Promise<void> {
  // 6: few-query cross attention, 64 users x Lq queries x crossKeys keys, H8 D64, rule full, vs onnxruntime.
  const B = 64, Lk = crossKeys, H = 8, D = 64;
  const q = randomFloats(B * Lq * H * D, 11), k = randomFloats(B * Lk * H * D, 12), v = randomFloats(B * Lk * H * D, 13);
  const qt = tensor(q, [B * Lq, H, D]), kt = tensor(k, [B * Lk, H, D]), vt = tensor(v, [B * Lk, H, D]);
  const qo = Int32Array.from({ length: B + 1 }, (_, i) => i * Lq), ko = Int32Array.from({ length: B + 1 }, (_, i) => i * Lk);
  const oursTime = await timeCalls(async () => { const r = await maskedAttention(qt, kt, vt, { q: { offsets: qo }, kv: { offsets: ko }, rule: 'full' }); r.output.dispose(); });
  const ours = oursTime.wallMs;
  for (const x of [qt, kt, vt]) x.dispose();
  // The peer's [B, H, L, D] layout: packed rows are [b][i][h][d]; a transpose per user.
  const toBHLD = (x: Float32Array, L: number) => {
    const y = new Float32Array(x.length);
    for (let b = 0; b < B; b++) for (let i = 0; i < L; i++) for (let h = 0; h < H; h++)
      y.set(x.subarray(((b * L + i) * H + h) * D, ((b * L + i) * H + h + 1) * D), ((b * H + h) * L + i) * D);
    return y;
  };
  const peer = await createDenseMaskedAttention({ heads: H, headDim: D, threads });
  const qp = toBHLD(q, Lq), kp = toBHLD(k, Lk), vp = toBHLD(v, Lk), mask = new Float32Array(B * Lq * Lk);
  const ortTime = await timeCalls(() => peer.runCross(qp, kp, vp, mask, B, Lq, Lk));
  const ort = ortTime.wallMs;
  await peer.release();
  const crossGflops = B * Lq * Lk * H * 4 * D / (ours * 1e6);
  out.push({ name: `cross ${B}x${Lq}x${Lk} H8 D64 speed-up vs onnxruntime (first run: ours ${ours.toFixed(0)} ms, ${crossGflops.toFixed(1)} GF/s, ${(crossGflops / peak).toFixed(2)} of sgemm; onnxruntime ${ort.toFixed(0)} ms)`,
    value: ort / ours, cpuValue: ortTime.cpuMs / oursTime.cpuMs, goal: '>= 1.2', met: ort / ours >= 1.2,
    times: { oursMs: ours, onnxruntimeMs: ort, oursCpuMs: oursTime.cpuMs, onnxruntimeCpuMs: ortTime.cpuMs } });
}

async function crossHalfTarget(crossKeys: number, out: Target[]): Promise<void> {
  // 7 (informational): the 4-query cross shape in bfloat16 / float16 against float32, same values. The
  // kernel is memory-bound there, so half types (half the bytes, widened per key block) should take
  // well under the float32 time.
  const B = 64, Lq = 4, Lk = crossKeys, H = 8, D = 64;
  const layout = { q: { offsets: Int32Array.from({ length: B + 1 }, (_, i) => i * Lq) }, kv: { offsets: Int32Array.from({ length: B + 1 }, (_, i) => i * Lk) }, rule: 'full' as const };
  const values = [randomFloats(B * Lq * H * D, 11), randomFloats(B * Lk * H * D, 12), randomFloats(B * Lk * H * D, 13)];
  const time: Record<string, CallTime> = {};
  for (const dtype of ['float32', 'bfloat16', 'float16'] as DType[]) {
    const [q, k, v] = values.map((x, i) => tensor(x, [i === 0 ? B * Lq : B * Lk, H, D], { dtype }));
    time[dtype] = await timeCalls(async () => { const r = await maskedAttention(q, k, v, layout); r.output.dispose(); });
    for (const x of [q, k, v]) x.dispose();
  }
  for (const dtype of ['bfloat16', 'float16']) {
    const ratio = time[dtype].wallMs / time.float32.wallMs;
    out.push({ name: `${dtype} / float32 time (cross ${B}x${Lq}x${Lk} H8 D64)`, value: ratio, cpuValue: time[dtype].cpuMs / time.float32.cpuMs,
      goal: '<= 0.7', met: ratio <= 0.7,
      times: { [`${dtype}WallMs`]: time[dtype].wallMs, [`${dtype}CpuMs`]: time[dtype].cpuMs, float32WallMs: time.float32.wallMs, float32CpuMs: time.float32.cpuMs } });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Runs the targets `runs` times; prints median [min, max] of each ratio. */
export async function cpuTargets(threads: number): Promise<Record<string, unknown>[]> {
  const runs = Math.max(1, Number(process.env.BENCH_RUNS ?? 3));
  const crossKeys = Math.max(1, Number(process.env.BENCH_CROSS_KEYS ?? 5000));
  const groups = selectedGroups();
  const all: Target[][] = [];
  for (let r = 0; r < runs; r++) {
    all.push(await oneRun(threads, crossKeys, groups));
    console.log(`  targets run ${r + 1}/${runs}: ` + all[r].map((t) => t.value.toFixed(2)).join(' '));
  }
  console.log(`\nCPU targets (issue #14), ratios within each run; median [min, max] of ${runs} runs (each against its own sgemm anchor):`);
  const rows = all[0].map((t, i) => {
    const values = all.map((run) => run[i].value);
    const m = median(values);
    const cpuValues = all.map((run) => run[i].cpuValue).filter((x): x is number => x !== undefined);
    const cpuColumn = cpuValues.length ? `  by CPU time ${median(cpuValues).toFixed(2)} [${Math.min(...cpuValues).toFixed(2)}, ${Math.max(...cpuValues).toFixed(2)}]` : '';
    const met = all[0][i].goal.startsWith('<=') ? m <= Number(t.goal.split(' ')[1]) : m >= Number(t.goal.split(' ')[1]);
    console.log(`  ${t.name.padEnd(92)} ${m.toFixed(2).padStart(6)} [${Math.min(...values).toFixed(2)}, ${Math.max(...values).toFixed(2)}]  goal ${t.goal}: ${met ? 'met' : 'NOT met'}${cpuColumn}`);
    const times = all.map((run) => run[i].times).filter((x) => x !== undefined);
    return { target: t.name, median: m, min: Math.min(...values), max: Math.max(...values), values, goal: t.goal, met, ...(cpuValues.length ? { cpuMedian: median(cpuValues), cpuValues } : {}), ...(times.length ? { times } : {}) };
  });
  return rows;
}

async function main(): Promise<void> {
  const threads = os.cpus().length;
  const targets = await cpuTargets(threads);
  console.log(`load average at the end: ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} on ${threads} CPUs (other processes share them)`);
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `cpu-targets-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ bench: 'cpu-targets', date: new Date().toISOString(), threads, groups: [...selectedGroups()], targets, loadAverage: os.loadavg() }, null, 2));
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

if (require.main === module) main().catch((e) => { console.error(e); process.exit(1); });
