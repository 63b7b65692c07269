#!/usr/bin/env node
// `npm test`: type-checks the tests, runs the whole ava suite on the native build (CPU, plus CUDA
// when a GPU is present), then builds the emulated-CUDA addon and runs the device suites again with
// the CUDA backend executing the exact kernel sources on the emulator, then the emulator selftest,
// then the emulator's verifier tests (scripts/emu-verify.cjs: bugs it must catch, and their correct
// counterparts), then the device suites on the race-detecting emulator build (build:race) under two
// drawn thread / block orders (LK_EMU_SEED), so a missing __syncthreads in any kernel fails a test,
// as does a read of shared memory no thread of the block wrote (LK_EMU_UNINIT=1).
// `node scripts/test.cjs --asan` runs the emulated device suites, the selftest and the verifier
// tests under AddressSanitizer + UBSan.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const asan = process.argv.includes('--asan');
const totals = { passed: 0, failed: 0, skipped: 0 };
const DEVICE_SUITES = ['test/attention.parity.test.ts', 'test/errors.test.ts', 'test/tensor.test.ts', 'test/memory-bank.test.ts', 'test/sparse.test.ts', 'test/sparse-tc.test.ts', 'test/reliability.test.ts', 'test/fuzz.test.ts', 'test/differential.test.ts', 'test/cost.test.ts', 'test/emulator.test.ts', 'test/cuda-host.test.ts', 'test/tc-attention.test.ts', 'test/views.test.ts', 'test/layouts.test.ts', 'test/ort.test.ts', 'test/multi-stream.test.ts', 'test/host-path.test.ts', 'test/backward.test.ts', 'test/mask-plan.test.ts'];

// lk_emu_selftest_mma reads a launch's execution error right after the launch, which only blocking
// launches give (on a GPU as on the emulator, which queues work until a synchronization).
const SELFTEST_ENV = { lk_emu_selftest: {}, lk_emu_selftest_mma: { CUDA_LAUNCH_BLOCKING: '1' } };
// Drawn orders for the race-detecting runs (LK_EMU_RACE_SEEDS=3,4 picks others).
const RACE_SEEDS = (process.env.LK_EMU_RACE_SEEDS || '1,2').split(',').filter(Boolean);

function run(title, cmd, args, env = {}) {
  console.log(`\n== ${title}\n$ ${cmd} ${args.join(' ')}`);
  const started = Date.now();
  const r = spawnSync(cmd, args, { cwd: root, env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 28 });
  process.stdout.write(r.stdout || '');
  process.stderr.write(r.stderr || '');
  console.log(`== ${title}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return { status: r.status ?? 1, out: (r.stdout || '') + (r.stderr || '') };
}

function ava(title, files, env) {
  // Ava's watchdog (no test finishing for this long) sized for the instrumented emulator runs, whose
  // single parity tests take minutes under ASan or the race detector on a 2-core machine.
  const r = run(title, 'npx', ['ava', '--timeout=30m', ...files], env);
  const count = (re) => { const m = r.out.match(re); return m ? Number(m[1]) : 0; };
  const passed = count(/(\d+) tests? passed/), failed = count(/(\d+) tests? failed/) + count(/(\d+) uncaught exceptions?/) + count(/(\d+) unhandled rejections?/);
  totals.passed += passed;
  totals.failed += failed + (r.status !== 0 && failed === 0 ? 1 : 0);
  totals.skipped += count(/(\d+) tests? skipped/);
  if (passed === 0 && r.status === 0) { console.error(`${title}: ran no test`); totals.failed += 1; }
}

function must(title, cmd, args, env) {
  const r = run(title, cmd, args, env);
  if (r.status !== 0) { totals.failed += 1; finish(); }
}

function finish() {
  console.log(`\nlifelong-kernels: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
  process.exit(totals.failed > 0 ? 1 : 0);
}

must('type-check tests', 'npx', ['tsc', '-p', 'tsconfig.test.json']);
if (asan) {
  must('build emulated CUDA with ASan + UBSan', 'npm', ['run', '--silent', 'build:asan']);
  const gcc = (lib) => spawnSync('gcc', [`-print-file-name=${lib}`], { encoding: 'utf8' }).stdout.trim();
  const env = {
    LIFELONG_CUDA_EMULATE: '1',
    LIFELONG_ADDON: path.join(root, 'build-asan', 'Release', 'lifelong_kernels.node'),
    LD_PRELOAD: [gcc('libasan.so'), gcc('libubsan.so')].join(':'),
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:halt_on_error=1',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
    LK_EMU_SEED: '3',  // a drawn order here too (index order runs in `npm test`)
  };
  ava('device suites, emulated CUDA under ASan + UBSan', DEVICE_SUITES, env);
  must('emulator selftest under ASan + UBSan', path.join(root, 'build-asan', 'Release', 'lk_emu_selftest'), [], { ASAN_OPTIONS: env.ASAN_OPTIONS });
  must('emulator tensor-core selftest under ASan + UBSan', path.join(root, 'build-asan', 'Release', 'lk_emu_selftest_mma'), [], { ASAN_OPTIONS: env.ASAN_OPTIONS, ...SELFTEST_ENV.lk_emu_selftest_mma });
  must('emulator verifier tests under ASan + UBSan', 'node', [path.join(__dirname, 'emu-verify.cjs'), '--asan']);
  finish();
}
ava('all suites, native build', []);
// The CPU suites again on every other instruction-set path this machine runs (native/cpu/isa.h).
const CPU_SUITES = ['test/attention.parity.test.ts', 'test/sparse.test.ts', 'test/memory-bank.test.ts', 'test/fuzz.test.ts', 'test/backward.test.ts'];
const isaPaths = JSON.parse(spawnSync('node', ['-p', "JSON.stringify(require('./dist/lib/index.js').backends().cpu.isaPaths)"], { cwd: root, encoding: 'utf8' }).stdout || '[]');
if (isaPaths.length === 0) { console.error('could not list the CPU instruction-set paths'); totals.failed += 1; }
for (const isa of isaPaths.slice(0, -1)) ava(`CPU suites forced onto the ${isa} path`, CPU_SUITES, { LK_CPU_ISA: isa, LIFELONG_DEVICE: 'cpu' });
// The CPU backward picks its task split by pool size (fused per sequence / two passes): one thread
// makes most cases take the fused pass whatever this machine's core count.
ava('CPU backward on one thread (fused per-sequence pass)', ['test/backward.test.ts'], { LIFELONG_THREADS: '1', LIFELONG_DEVICE: 'cpu' });
must('bench:serving --quick (every method x history length in its JSON)', 'node', [path.join(__dirname, 'check-serving-bench.cjs')]);
must('build emulated CUDA', 'npm', ['run', '--silent', 'build:emu']);
ava('device suites, CUDA kernels on the emulator', DEVICE_SUITES, { LIFELONG_CUDA_EMULATE: '1' });
for (const [title, binary] of [['emulator selftest', 'lk_emu_selftest'], ['emulator tensor-core selftest', 'lk_emu_selftest_mma']]) {
  const file = path.join(root, 'build-emu', 'Release', binary);
  if (fs.existsSync(file)) must(title, file, [], SELFTEST_ENV[binary]);
  else { console.error(`${title}: binary missing`); totals.failed += 1; }
}
must('emulator verifier tests', 'node', [path.join(__dirname, 'emu-verify.cjs')]);
must('build emulated CUDA with shared-memory race detection', 'npm', ['run', '--silent', 'build:race']);
const raceAddon = path.join(root, 'build-race', 'Release', 'lifelong_kernels.node');
for (const seed of RACE_SEEDS)
  ava(`device suites, CUDA kernels on the emulator with race detection, LK_EMU_SEED=${seed}`, DEVICE_SUITES,
    { LIFELONG_CUDA_EMULATE: '1', LIFELONG_ADDON: raceAddon, LK_EMU_SEED: seed, LK_EMU_UNINIT: '1' });
finish();
