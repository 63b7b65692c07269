#!/usr/bin/env node
// `npm run build:prebuilds` and `prepack` (not named `prebuild`: npm would run that before `build`):
// puts the addon into prebuilds/<platform>-<arch>/ for the tarball. When build/Release holds a
// node-gyp build of the current sources (npm install just made one) with the same CUDA choice a
// fresh build would make, that binary is stripped and copied, so the CUDA kernels are compiled once
// per CI run; otherwise prebuildify builds it.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const built = path.join(root, 'build', 'Release', 'lifelong_kernels.node');
const target = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'lifelong-kernels.node');

function newestMtime(file) {
  const stat = fs.statSync(file);
  if (!stat.isDirectory()) return stat.mtimeMs;
  return fs.readdirSync(file).reduce((newest, name) => Math.max(newest, newestMtime(path.join(file, name))), 0);
}

function reusable() {
  if (!fs.existsSync(built)) return 'no build/Release/lifelong_kernels.node';
  // The emulator (cuda/emu) is not part of the node-gyp build.
  const inputs = ['native', 'cuda/attention', 'cuda/common', 'cuda/memory', 'cuda/multistream', 'cuda/sparse',
    'cuda/runtime.cu', 'cuda/runtime.h', 'cuda/backend.h', 'cuda/kernel_timing.h', 'binding.gyp', 'sources.gypi']
    .map((p) => path.join(root, p)).filter((p) => fs.existsSync(p));
  const newest = Math.max(...inputs.map(newestMtime));
  if (fs.statSync(built).mtimeMs < newest) return 'build/Release is older than the sources';
  const wantCuda = spawnSync('node', [path.join(__dirname, 'cuda-path.cjs'), 'lib'], { encoding: 'utf8' }).stdout.trim() !== '';
  const probe = spawnSync('node', ['-e', `process.stdout.write(String(!!require(${JSON.stringify(built)}).backends().cuda.compiled))`], { encoding: 'utf8' });
  const hasCuda = probe.stdout.trim();
  if (hasCuda !== 'true' && hasCuda !== 'false') return `cannot load build/Release (${(probe.stderr || '').trim().split('\n')[0]})`;
  if ((hasCuda === 'true') !== wantCuda) return `build/Release was built ${hasCuda === 'true' ? 'with' : 'without'} CUDA, a fresh build would be ${wantCuda ? 'with' : 'without'}`;
  return '';
}

const why = reusable();
if (why) {
  console.log(`prebuild: building with prebuildify (${why})`);
  const r = spawnSync('npx', ['prebuildify', '--napi', '--strip'], { cwd: root, stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
fs.mkdirSync(path.dirname(target), { recursive: true });
fs.copyFileSync(built, target);
const strip = spawnSync('strip', process.platform === 'darwin' ? ['-Sx', target] : ['--strip-all', target], { stdio: 'inherit' });
if (strip.status !== 0) { console.error('prebuild: strip failed'); process.exit(1); }
console.log(`prebuild: ${path.relative(root, target)} from build/Release (already built from these sources; no second compile)`);
