#!/usr/bin/env node
// Compiles every CUDA source for every target architecture with `ptxas -v` and fails when any
// kernel spills registers or uses a local-memory stack frame. Prints one line per kernel and arch.
const { spawnSync } = require('child_process');
const path = require('path');
const os = require('os');

const root = path.join(__dirname, '..');
const sources = JSON.parse(require('fs').readFileSync(path.join(root, 'sources.gypi'), 'utf8')).variables.lk_cuda_sources;
// Also the tensor-core selftest's kernels: proves mma.cuh's inline PTX assembles for every arch.
sources.push('cuda/emu/selftest_mma.cu');
const ARCHS = ['75', '80', '86', '89', '90'];
const nvcc = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).stdout.trim();
if (!nvcc) { console.log('check-spills: nvcc not found; nothing to check'); process.exit(0); }

let bad = 0, kernels = 0;
for (const src of sources) {
  const args = ['-std=c++17', '-O3', '-I', path.join(root, 'cuda'), '-Xptxas', '-v', '-c', path.join(root, src), '-o', path.join(os.tmpdir(), 'lk-spill-check.o')];
  for (const a of ARCHS) args.push('-gencode', `arch=compute_${a},code=sm_${a}`);
  const r = spawnSync(nvcc, args, { encoding: 'utf8' });
  if (r.status !== 0) { process.stderr.write(r.stderr); console.error(`check-spills: ${src} failed to compile`); process.exit(1); }
  let kernel = '', arch = '';
  for (const line of r.stderr.split('\n')) {
    const entry = line.match(/Compiling entry function '([^']+)' for '(sm_\d+)'/);
    if (entry) { [, kernel, arch] = entry; continue; }
    const spill = line.match(/(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/);
    if (spill && kernel) {
      kernels++;
      const [frame, stores, loads] = spill.slice(1).map(Number);
      const ok = stores === 0 && loads === 0;
      if (!ok) bad++;
      console.log(`${ok ? 'ok  ' : 'SPILL'} ${arch} ${kernel}: stack ${frame} B, spill stores ${stores} B, loads ${loads} B`);
    }
  }
}
console.log(`check-spills: ${kernels} kernel builds, ${bad} with spills`);
if (kernels === 0) { console.error('check-spills: no ptxas report parsed'); process.exit(1); }
process.exit(bad ? 1 : 0);
