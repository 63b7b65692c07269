#!/usr/bin/env node
// binding.gyp's nvcc rule: `node nvcc-report.cjs REPORT NVCC ARGS...` runs nvcc with `-Xptxas -v`
// and keeps ptxas's per-kernel report (registers, shared memory, stack, spills) in REPORT, so the
// spill check (scripts/check-spills.cjs --from-build) reads the build's own report instead of
// compiling every kernel a second time. Warnings and errors still reach the build log; ptxas's
// informational lines (hundreds per file) go only to the report.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const [report, nvcc, ...args] = process.argv.slice(2);
const r = spawnSync(nvcc, [...args, '-Xptxas', '-v'], { encoding: 'utf8', maxBuffer: 1 << 28 });
if (r.error) { console.error(`nvcc-report: cannot run ${nvcc}: ${r.error.message}`); process.exit(1); }
process.stdout.write(r.stdout || '');
const info = /^ptxas info\s*:|^\s+\d+ bytes stack frame, \d+ bytes spill stores, \d+ bytes spill loads$/;
process.stderr.write((r.stderr || '').split('\n').filter((line) => !info.test(line)).join('\n'));
fs.mkdirSync(path.dirname(report), { recursive: true });
fs.writeFileSync(report, r.stderr || '');
process.exit(r.status ?? 1);
