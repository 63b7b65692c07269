#!/usr/bin/env node
// For binding.gyp: prints nvcc's path (`nvcc`) or the folder holding libcudart_static.a (`lib`),
// or nothing when there is no CUDA toolkit or LIFELONG_CUDA=0 (then node-gyp builds CPU-only).
// nvcc may be a wrapper script outside the toolkit, so the library is looked up in the usual
// toolkit roots too. The `nvcc` query also tells the user, once, what the source build will do.
const { execSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const skip = process.env.LIFELONG_CUDA === '0';
let nvcc = '';
if (!skip) {
  try { nvcc = execSync('command -v nvcc', { shell: '/bin/sh', stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { /* none */ }
}
if (process.argv[2] === 'nvcc') {
  process.stderr.write(nvcc
    ? 'lifelong-kernels: building from source, CPU and CUDA kernels (sm_75-sm_90, a few minutes; LIFELONG_CUDA=0 builds CPU-only)\n'
    : `lifelong-kernels: building from source, CPU kernels only (${skip ? 'LIFELONG_CUDA=0' : 'no nvcc on PATH'})\n`);
  process.stdout.write(nvcc);
  process.exit(0);
}
if (!nvcc) process.exit(0);
const roots = [process.env.CUDA_PATH, process.env.CUDA_HOME, path.dirname(path.dirname(fs.realpathSync(nvcc))), '/usr/local/cuda'];
for (const root of roots.filter(Boolean))
  for (const lib of ['lib64', 'lib', 'targets/x86_64-linux/lib'])
    if (fs.existsSync(path.join(root, lib, 'libcudart_static.a'))) { process.stdout.write(path.join(root, lib)); process.exit(0); }
