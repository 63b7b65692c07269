#!/usr/bin/env node
// Fails when any CUDA kernel spills registers or uses a local-memory stack frame, on any target
// architecture, and prints one line per kernel and arch with its registers and shared memory.
//
//   node scripts/check-spills.cjs               compiles every .cu with `ptxas -v` for every arch
//   node scripts/check-spills.cjs --from-build  reads the reports the node-gyp build already wrote
//                                               (build/Release/ptxas/, scripts/nvcc-report.cjs), so
//                                               CI compiles the CUDA kernels once per run; a source
//                                               whose report is missing or older than the CUDA
//                                               sources is compiled here instead.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const os = require('os');

const root = path.join(__dirname, '..');
const fromBuild = process.argv.includes('--from-build');
const reportDir = path.join(root, 'build', 'Release', 'ptxas');
const addonSources = JSON.parse(fs.readFileSync(path.join(root, 'sources.gypi'), 'utf8')).variables.lk_cuda_sources;
// Also the tensor-core selftest's kernels: proves mma.cuh's inline PTX assembles for every arch.
const sources = [...addonSources, 'cuda/emu/selftest_mma.cu'];
const ARCHS = ['75', '80', '86', '89', '90'];
const nvcc = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' }).stdout.trim();
if (!nvcc) { console.log('check-spills: nvcc not found; nothing to check'); process.exit(0); }

// Newest CUDA source or header: a build report older than this describes other code.
function newestMtime(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) { if (entry.name !== 'emu') newest = Math.max(newest, newestMtime(file)); }
    else if (/\.(cu|cuh|h)$/.test(entry.name)) newest = Math.max(newest, fs.statSync(file).mtimeMs);
  }
  return newest;
}
const cudaNewest = fromBuild ? newestMtime(path.join(root, 'cuda')) : 0;

function buildReport(src) {
  if (!fromBuild || !addonSources.includes(src)) return null;
  const file = path.join(reportDir, path.basename(src, '.cu') + '.txt');
  if (!fs.existsSync(file) || fs.statSync(file).mtimeMs < cudaNewest) return null;
  return fs.readFileSync(file, 'utf8');
}

function compile(src) {
  const args = ['-std=c++17', '-O3', '-I', path.join(root, 'cuda'), '-Xptxas', '-v', '-c', path.join(root, src), '-o', path.join(os.tmpdir(), `lk-spill-check-${process.pid}.o`)];
  for (const a of ARCHS) args.push('-gencode', `arch=compute_${a},code=sm_${a}`);
  const r = spawnSync(nvcc, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) { process.stderr.write(r.stderr); console.error(`check-spills: ${src} failed to compile`); process.exit(1); }
  return r.stderr;
}

let bad = 0, kernels = 0, reused = 0;
const lines = [];
for (const src of sources) {
  let report = buildReport(src);
  if (report !== null) reused++;
  else report = compile(src);
  const archsSeen = new Set();
  let kernel = '', arch = '', frame = 0, stores = 0, loads = 0;
  for (const line of report.split('\n')) {
    const entry = line.match(/Compiling entry function '([^']+)' for '(sm_\d+)'/);
    if (entry) { [, kernel, arch] = entry; archsSeen.add(arch); continue; }
    const spill = line.match(/(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/);
    // Summed over the entry and any non-inlined callee reported with it.
    if (spill && kernel) { const [f, s, l] = spill.slice(1).map(Number); frame += f; stores += s; loads += l; continue; }
    const used = line.match(/Used (\d+) registers/);
    if (used && kernel) {
      kernels++;
      const smem = (line.match(/(\d+) bytes smem/) || [0, 0])[1];
      const ok = stores === 0 && loads === 0;
      if (!ok) bad++;
      lines.push(`${ok ? 'ok  ' : 'SPILL'} ${arch} ${kernel}: ${used[1]} registers, ${smem} B static smem, stack ${frame} B, spill stores ${stores} B, loads ${loads} B`);
      kernel = ''; frame = stores = loads = 0;
    }
  }
  const missing = ARCHS.filter((a) => !archsSeen.has(`sm_${a}`));
  if (archsSeen.size > 0 && missing.length) { console.error(`check-spills: ${src}: no report for sm_${missing.join(', sm_')}`); bad++; }
}
// Readable kernel names when binutils' c++filt is there.
const filt = spawnSync('c++filt', [], { input: lines.join('\n'), encoding: 'utf8', maxBuffer: 1 << 28 });
console.log(filt.status === 0 ? filt.stdout.trimEnd() : lines.join('\n'));
console.log(`check-spills: ${kernels} kernel builds, ${bad} with spills` +
  (fromBuild ? ` (${reused} of ${sources.length} sources from the build's ptxas reports, the rest compiled here)` : ''));
// exitCode, not exit(): a piped stdout still has the report to flush.
if (kernels === 0) console.error('check-spills: no ptxas report parsed');
process.exitCode = kernels === 0 || bad ? 1 : 0;
