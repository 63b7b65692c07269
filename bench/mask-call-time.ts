// CPU time per call of one memory-token-mask shape of issue #14 (8 users x 1024 tokens, H4, D64), for
// A/B runs of two builds in alternating processes (LIFELONG_ADDON picks the build): user and system
// CPU time per call (all threads) and wall time, after 3 warm-up calls. System time is reported
// apart because page faults swing it between processes. Writes bench/results/mask-call-time.json.
// Run: `npm run build:ts && LIFELONG_DEVICE=cpu node dist/bench/mask-call-time.js persrec 10`
// (rule: causal | persrec | rec2pm-update; DT=float16 | bfloat16 for half types).
import * as fs from 'fs';
import * as path from 'path';
import { maskedAttention, tensor, DType } from '../lib/index';
import { layoutOf, randomFloats } from './cpu-targets';  // the #14 shapes' layouts, as the targets bench builds them

const LAYOUTS = {
  causal: layoutOf(8, 1024, [[0, 1024]]),
  persrec: layoutOf(8, 1024, [[0, 200], [1, 4]]),
  'rec2pm-update': layoutOf(8, 1024, [[1, 4], [0, 200], [1, 4]]),
};
type Rule = keyof typeof LAYOUTS;

async function main(): Promise<void> {
  const rule = (process.argv[2] ?? 'persrec') as Rule;
  if (!(rule in LAYOUTS)) throw new RangeError(`rule: expected one of ${Object.keys(LAYOUTS).join(', ')}, got ${rule}`);
  const calls = Number(process.argv[3] ?? 10);
  if (!Number.isInteger(calls) || calls < 1) throw new RangeError(`calls: expected a positive integer, got ${process.argv[3]}`);
  const dtype = (process.env.DT ?? 'float32') as DType;
  const x = [0, 1, 2].map((i) => tensor(randomFloats(8192 * 256, 1 + i), [8192, 4, 64], { dtype }));
  const call = async () => (await maskedAttention(x[0], x[1], x[2], { q: LAYOUTS[rule], rule })).output.dispose();
  for (let i = 0; i < 3; i++) await call();
  const cpu0 = process.cpuUsage(), t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) await call();
  const cpu = process.cpuUsage(cpu0), wallMs = Number(process.hrtime.bigint() - t0) / 1e6 / calls;
  const result = { rule, dtype, calls, userMs: cpu.user / 1000 / calls, systemMs: cpu.system / 1000 / calls, wallMs, addon: process.env.LIFELONG_ADDON ?? null };
  console.table([result]);
  fs.mkdirSync(path.join(__dirname, '..', '..', 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname, '..', '..', 'bench', 'results', 'mask-call-time.json'), JSON.stringify(result, null, 2) + '\n');
  for (const t of x) t.dispose();
}

main().catch((e) => { console.error(e); process.exit(1); });
