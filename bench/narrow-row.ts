// The CPU kernels' float32 -> float16 / bfloat16 narrowing (native/cpu/convert.h narrow_row, via the
// _cpuNarrowRow test hook) on every ISA path of this CPU, side by side in one run: the portable path
// is the scalar float_to_half loop that every path ran before the F16C entry. One call narrows one
// buffer on the calling thread; the hook allocates its output per call, which both paths pay alike.
// Run: `npm run build:ts && node dist/bench/narrow-row.js` (writes bench/results/narrow-row.json).
import * as fs from 'fs';
import * as path from 'path';
import { backends } from '../lib/index';
import { codes, native } from '../lib/native';

const SIZES = [8192, 65536, 1 << 20];  // one output row-block, a pool task's chunk, past L2
const MIN_SECONDS = 0.3;

function measure(x: Float32Array, dtype: number): number {
  const narrow = native()._cpuNarrowRow;
  for (let i = 0; i < 3; i++) narrow(x, dtype);
  let calls = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < MIN_SECONDS) {
    narrow(x, dtype);
    calls++;
    elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  }
  return (calls * x.length) / elapsed;  // elements per second
}

const rows: { isa: string; dtype: string; n: number; gElemPerS: number; gbPerS: number }[] = [];
for (const n of SIZES) {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (Math.sin(i * 0.7) * 300) / (1 + (i % 17));
  for (const dtype of ['float16', 'bfloat16'] as const)
    for (const isa of backends().cpu.isaPaths) {
      native()._setCpuIsa(isa);
      const rate = measure(x, codes().dtype[dtype]);
      rows.push({ isa, dtype, n, gElemPerS: rate / 1e9, gbPerS: (rate * 6) / 1e9 });  // 4 bytes read + 2 written
    }
}
native()._setCpuIsa(backends().cpu.isaPaths[backends().cpu.isaPaths.length - 1]);
console.table(rows.map((r) => ({ ...r, gElemPerS: r.gElemPerS.toFixed(3), gbPerS: r.gbPerS.toFixed(2) })));
// The repository's bench/results whether run compiled (dist/bench) or through tsx (bench/).
const root = path.resolve(__dirname, path.basename(path.dirname(__dirname)) === 'dist' ? '../..' : '..');
const out = path.join(root, 'bench', 'results');
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'narrow-row.json'), JSON.stringify({ date: new Date().toISOString(), rows }, null, 2));
