#!/usr/bin/env bash
# Packs the package with its prebuilt binary, installs the tarball into an empty project and runs
# an op through both `import` and `require` on the CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
npm run --silent prebuild
tarball="$root/$(npm pack --silent | tail -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work" "$tarball"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund "$tarball" >/dev/null
cat > use.cjs <<'JS'
const lk = require('lifelong-kernels');
(async () => {
  const x = lk.tensor([1, 2, 3, 4], [2, 1, 2]);
  const { output } = await lk.maskedAttention(x, x, x, { q: { offsets: new Int32Array([0, 2]) } });
  const out = Array.from(await output.float32());
  if (out.length !== 4 || out.some((v) => !Number.isFinite(v))) throw new Error('bad output ' + out);
  console.log('require ok', out.map((v) => v.toFixed(4)).join(' '), JSON.stringify(lk.backends().cuda.reason ?? 'cuda available'));
})().catch((e) => { console.error(e); process.exit(1); });
JS
cat > use.mjs <<'JS'
import { tensor, maskedAttention, backends } from 'lifelong-kernels';
import lk from 'lifelong-kernels';
const x = tensor([1, 2, 3, 4], [2, 1, 2]);
const { output } = await maskedAttention(x, x, x, { q: { offsets: new Int32Array([0, 2]) } });
const out = Array.from(await output.float32());
if (out.length !== 4 || lk.tensor !== tensor) throw new Error('bad ESM entry');
console.log('import ok', out.map((v) => v.toFixed(4)).join(' '), backends().cpu.threads, 'threads');
JS
node use.cjs
node use.mjs
echo "consumer check: ok"
