#!/usr/bin/env bash
# Packs the package (its prepack step puts the prebuilt binary in prebuilds/), installs the tarball
# into an empty project with a PATH holding only node, npm and sh (no compiler, cmake, nvcc or Python:
# the prebuilt binary must serve), and runs an op through both `import` and `require` on the CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tarball="$root/$(npm pack --silent | tail -n 1)"
work="$(mktemp -d)"
trap 'rm -rf "$work" "$tarball"' EXIT
listing="$(tar -tzf "$tarball")"
grep -q '^package/prebuilds/linux-x64/.*\.node$' <<<"$listing" || { echo "consumer check: no prebuilt binary in the tarball"; exit 1; }
mkdir "$work/bin"
ln -s "$(command -v node)" "$work/bin/node"
ln -s "$(command -v npm)" "$work/bin/npm"
ln -s /bin/sh "$work/bin/sh"  # npm runs lifecycle scripts through sh
mkdir "$work/app"
cd "$work/app"
npm init -y >/dev/null
PATH="$work/bin" npm install --no-audit --no-fund "$tarball" >/dev/null
[ ! -d node_modules/lifelong-kernels/build ] || { echo "consumer check: the install compiled the addon instead of using the prebuilt binary"; exit 1; }
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
PATH="$work/bin" node use.cjs
# The tarball's binary carries the CUDA kernels whenever nvcc was there to compile them.
if [ -n "$(node "$root/scripts/cuda-path.cjs" lib)" ]; then
  PATH="$work/bin" node -e "const c = require('lifelong-kernels').backends().cuda; if (!c.compiled) { console.error('consumer check: the prebuilt binary has no CUDA kernels'); process.exit(1); } console.log('cuda compiled:', c.compiled, '-', c.reason || 'available')"
fi
PATH="$work/bin" node use.mjs
echo "consumer check: ok"
