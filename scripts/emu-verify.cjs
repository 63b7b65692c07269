#!/usr/bin/env node
// The CUDA emulator's verifier tests: small kernel programs (cuda/emu/tests/*.cu), built as SPEC
// section 8 says outside kernels build --
//   g++ -std=c++17 -x c++ -DLK_CUDA_EMULATE -I cuda FILE.cu <lk_emu_sources> -lpthread
// -- and run case by case. Every "bad-..." case holds a bug a GPU would show and the emulator must
// catch (a non-zero exit status and the message below); its "good-..." counterpart must pass.
// Flavors: `plain` (the command above), `race` (race detection: FILE.cu compiled with
// -fsanitize=thread, the emulator with -DLK_EMU_RACECHECK, linked without libtsan), `asan` (the
// command above plus -fsanitize=address,undefined).
//   node scripts/emu-verify.cjs          plain + race cases, and the overrun cases under ASan
//   node scripts/emu-verify.cjs --asan   every case that is not a race case, under ASan + UBSan
// Prints one line per case and "emu verify: N passed, M failed"; exits 1 when any failed.
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.join(__dirname, '..');
const asanMode = process.argv.includes('--asan');
const emuSources = JSON.parse(fs.readFileSync(path.join(root, 'sources.gypi'), 'utf8')).variables.lk_emu_sources;
const outDir = path.join(root, 'build-emu-verify');
const BASE = ['-std=c++17', '-x', 'c++', '-DLK_CUDA_EMULATE', '-I', 'cuda'];
const SAN = ['-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', '-fno-omit-frame-pointer', '-g'];
// The race-check flags: GCC's ThreadSanitizer instrumentation of the kernel file only; the emulator
// supplies the __tsan_* entry points (LK_EMU_RACECHECK), so libtsan is never linked.
const RACE_KERNEL = ['-fsanitize=thread', '--param=tsan-instrument-func-entry-exit=0', '-Wno-tsan'];

const race = (kernel) => ({
  status: 1,
  stdout: [/cudaErrorLaunchFailure/],
  stderr: [new RegExp(`shared-memory race in kernel ${kernel}`), /block \(\d+,\d+,\d+\)/, /thread \(\d+,\d+,\d+\) \[warp \d+ lane \d+\] (atomically )?(reads|writes)/,
    /after thread \(\d+,\d+,\d+\) \[warp \d+ lane \d+\] (atomically )?(read|wrote)/, /(static shared offset \d+|dynamic shared memory at byte offset \d+)/],
});
const uninitialised = (kernel) => ({
  status: 1,
  stdout: [/cudaErrorLaunchFailure/],
  stderr: [new RegExp(`read of uninitialised shared memory in kernel ${kernel}`), /thread \(\d+,\d+,\d+\) \[warp \d+ lane \d+\] reads \d+ bytes? of .*, which no thread of the block has written/],
});
const wrong = (...stdout) => ({ status: 2, stdout: [/wrong result/, ...stdout] });
const refused = (error, ...stderr) => ({ status: 1, stdout: [new RegExp(error)], stderr: [/lifelong-kernels CUDA emulator: /, ...stderr] });
const asanReport = { signal: true, stderr: [/AddressSanitizer: heap-buffer-overflow/] };
const PASS = 'pass';

// [file, flavor, case, expectation, env]
const CASES = [
  ['race_block', 'race', 'bad-static', race('neighbour_static')],
  ['race_block', 'race', 'bad-dynamic', race('neighbour_dynamic')],
  ['race_block', 'race', 'bad-atomic', race('count_kernel')],
  ['race_block', 'race', 'good', PASS, { LK_EMU_UNINIT: '1' }],
  // cp.async and ldmatrix access shared memory on a thread's behalf: the detector sees them.
  ['race_tensor_core', 'race', 'bad-wait-no-barrier', race('tile_kernel')],
  ['race_tensor_core', 'race', 'bad-overwrite', race('tile_kernel')],
  ['race_tensor_core', 'race', 'bad-ldmatrix', race('tile_kernel')],
  ['race_tensor_core', 'race', 'good', PASS, { LK_EMU_SEED: '5', LK_EMU_UNINIT: '1' }],
  ['race_tensor_core', 'plain', 'good', PASS],
  ['race_warp', 'race', 'bad-warp', race('neighbour_kernel')],
  ['race_warp', 'race', 'bad-crosswarp', race('neighbour_kernel')],
  ['race_warp', 'race', 'good-syncwarp', PASS, { LK_EMU_UNINIT: '1' }],
  ['race_warp', 'race', 'good-shuffle', PASS, { LK_EMU_UNINIT: '1' }],
  // Without race detection the same bugs show only when the drawn order runs a reader first.
  ['race_block', 'plain', 'bad-static', wrong(/out\[\d+\] = -?nan/), { LK_EMU_SEED: '1' }],
  ['race_block', 'plain', 'bad-static', wrong(/out\[\d+\] = -?nan/), { LK_EMU_SEED: '2' }],
  ['race_warp', 'plain', 'bad-warp', wrong(/out\[\d+\] = -1/), { LK_EMU_SEED: '1' }],
  ['race_block', 'plain', 'good', PASS, { LK_EMU_SEED: '1' }],
  ['race_warp', 'plain', 'good-syncwarp', PASS, { LK_EMU_SEED: '1' }],
  ['uninit_shared', 'plain', 'bad-static', wrong(/NaN: uninitialised shared memory/)],
  ['uninit_shared', 'plain', 'bad-aligned', wrong(/NaN: uninitialised shared memory/)],
  ['uninit_shared', 'plain', 'bad-carry', wrong(/NaN: uninitialised shared memory/)],
  ['uninit_shared', 'plain', 'bad-dynamic', wrong(/NaN: uninitialised shared memory/)],
  ['uninit_shared', 'plain', 'good', PASS],
  // The race-detecting build also names the read itself under LK_EMU_UNINIT=1.
  ['uninit_shared', 'race', 'bad-static', uninitialised('sum_kernel'), { LK_EMU_UNINIT: '1' }],
  ['uninit_shared', 'race', 'bad-aligned', uninitialised('aligned_kernel'), { LK_EMU_UNINIT: '1' }],
  ['uninit_shared', 'race', 'bad-carry', uninitialised('carry_kernel'), { LK_EMU_UNINIT: '1' }],
  ['uninit_shared', 'race', 'bad-dynamic', uninitialised('dynamic_kernel'), { LK_EMU_UNINIT: '1' }],
  ['uninit_shared', 'race', 'good', PASS, { LK_EMU_SEED: '3', LK_EMU_UNINIT: '1' }],
  ['overrun', 'asan', 'bad-kernel', asanReport],
  ['overrun', 'asan', 'bad-read', asanReport],
  ['overrun', 'asan', 'good', PASS],
  ['memcpy_check', 'plain', 'bad-swapped', refused('cudaErrorInvalidValue', /cudaMemcpy\(cudaMemcpyDeviceToHost\): the destination 0x[0-9a-f]+ is device memory, not host memory/)],
  ['memcpy_check', 'plain', 'bad-host-src', refused('cudaErrorInvalidValue', /the source 0x[0-9a-f]+ is not inside a device allocation/)],
  ['memcpy_check', 'plain', 'bad-device-src', refused('cudaErrorInvalidValue', /the source 0x[0-9a-f]+ is device memory, not host memory/)],
  ['memcpy_check', 'plain', 'bad-past-end', refused('cudaErrorInvalidValue', /runs past the end of its device allocation/)],
  ['memcpy_check', 'plain', 'bad-async-kind', refused('cudaErrorInvalidValue', /cudaMemcpyAsync\(cudaMemcpyHostToDevice\): the destination 0x[0-9a-f]+ is not inside a device allocation/)],
  ['memcpy_check', 'plain', 'bad-memset', refused('cudaErrorInvalidValue', /cudaMemset\(0x[0-9a-f]+, 256 bytes\): not inside a device allocation/)],
  ['memcpy_check', 'plain', 'bad-free', refused('cudaErrorInvalidValue', /cudaFree\(0x[0-9a-f]+\): not a pointer cudaMalloc returned/)],
  ['memcpy_check', 'plain', 'good', PASS],
  ['limits', 'plain', 'bad-grid-y', refused('cudaErrorInvalidConfiguration', /grid \(1,65536,1\)/)],
  ['limits', 'plain', 'bad-grid-z', refused('cudaErrorInvalidConfiguration', /grid \(1,1,65536\)/)],
  ['limits', 'plain', 'bad-threads', refused('cudaErrorInvalidConfiguration', /block \(1025,1,1\)/)],
  ['limits', 'plain', 'bad-block-z', refused('cudaErrorInvalidConfiguration', /block \(1,1,65\)/)],
  ['limits', 'plain', 'bad-static', refused('cudaErrorInvalidValue', /static_over_kernel\(int\*\) at .*limits.cu:\d+ refused: 49156 bytes of static __shared__ variables/)],
  ['limits', 'plain', 'bad-dynamic', refused('cudaErrorInvalidValue', /65536 bytes of dynamic shared memory, above the kernel's limit of 49152/)],
  ['limits', 'plain', 'bad-attribute', { status: 1, stdout: [/cudaErrorInvalidValue/] }],
  ['limits', 'plain', 'good', PASS],
  ['streams', 'plain', 'bad-no-sync', wrong(/read before the stream finished/)],
  ['streams', 'plain', 'bad-query-once', wrong(/read before the stream finished/)],
  ['streams', 'plain', 'bad-wrong-stream', wrong(/read before the stream finished/)],
  ['streams', 'plain', 'bad-host-fn', refused('cudaErrorNotPermitted', /cudaDeviceSynchronize called from a cudaLaunchHostFunc callback/)],
  ['streams', 'plain', 'good', PASS],
  ['streams', 'plain', 'bad-no-sync', PASS, { CUDA_LAUNCH_BLOCKING: '1' }],  // work runs at issue: the early read is not stale
  ['streams', 'race', 'good', PASS, { LK_EMU_SEED: '4', LK_EMU_UNINIT: '1' }],
];

// Which cases run, in which flavor: under --asan every non-race case is built with ASan + UBSan.
const selected = CASES.filter(([, flavor]) => (asanMode ? flavor !== 'race' : true)).map(([file, flavor, name, expect, env]) => ({
  file, flavor: asanMode ? 'asan' : flavor, name, expect, env: env || {},
}));

function sh(cmd, args, opts = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: root, env: { ...process.env, ...(opts.env || {}) }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }));
  });
}

// Build commands of one test program, as printed and run.
function buildSteps(file, flavor) {
  const src = path.join('cuda', 'emu', 'tests', `${file}.cu`);
  const exe = path.join(outDir, flavor, file);
  if (flavor === 'race') {
    const obj = `${exe}.o`;
    return { exe, steps: [
      ['g++', [...BASE, ...RACE_KERNEL, '-c', src, '-o', obj]],
      ['g++', [obj, ...raceEmuObjects(), '-lpthread', '-o', exe]],
    ] };
  }
  return { exe, steps: [['g++', [...BASE, ...(flavor === 'asan' ? SAN : []), src, ...emuSources, '-lpthread', '-o', exe]]] };
}

// The race flavor's emulator, compiled once (uninstrumented, with the __tsan_* entry points).
const raceEmuObjects = () => emuSources.map((src) => path.join(outDir, 'race', `emu-${path.basename(src)}.o`));
const raceEmuSteps = () => emuSources.map((src, i) => ['g++', ['-std=c++17', '-DLK_CUDA_EMULATE', '-DLK_EMU_RACECHECK', '-I', 'cuda', '-c', src, '-o', raceEmuObjects()[i]]]);

async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) { const i = next++; results[i] = await fn(items[i]); }
  }));
  return results;
}

function sanitizerEnv() {
  return { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:halt_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };
}

function judge(expect, r) {
  const problems = [];
  const emulatorSaid = /lifelong-kernels CUDA emulator: |AddressSanitizer|runtime error/.test(r.stderr);
  if (expect === PASS) {
    if (r.status !== 0) problems.push(`exit status ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}, expected 0`);
    if (emulatorSaid) problems.push('unexpected emulator / sanitizer message');
    return problems;
  }
  if (expect.signal) { if (r.status === 0) problems.push('exited 0, expected a sanitizer abort'); }
  else if (r.status !== expect.status) problems.push(`exit status ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}, expected ${expect.status}`);
  for (const re of expect.stdout || []) if (!re.test(r.stdout)) problems.push(`stdout lacks ${re}`);
  for (const re of expect.stderr || []) if (!re.test(r.stderr)) problems.push(`stderr lacks ${re}`);
  return problems;
}

(async () => {
  const started = Date.now();
  const builds = [...new Set(selected.map((c) => `${c.file} ${c.flavor}`))].map((k) => k.split(' '));
  for (const flavor of new Set(builds.map(([, f]) => f))) fs.mkdirSync(path.join(outDir, flavor), { recursive: true });
  const jobs = Math.max(1, Math.min(4, os.cpus().length));
  let failed = 0, passed = 0;
  const built = new Map();
  if (builds.some(([, flavor]) => flavor === 'race')) {
    const results = await pool(raceEmuSteps(), jobs, ([cmd, args]) => sh(cmd, args));
    results.forEach((r, i) => {
      if (r.status !== 0) { console.log(`FAIL build ${raceEmuSteps()[i][1].join(' ')}\n${r.stderr}`); failed++; }
    });
    console.log(`built the race flavor's emulator: ${raceEmuSteps().map(([c, a]) => `${c} ${a.join(' ')}`).join(' && ')}`);
  }
  await pool(builds, jobs, async ([file, flavor]) => {
    const { exe, steps } = buildSteps(file, flavor);
    for (const [cmd, args] of steps) {
      const r = await sh(cmd, args);
      if (r.status !== 0) {
        console.log(`FAIL build ${file} [${flavor}]: ${cmd} ${args.join(' ')}\n${r.stderr}`);
        failed++;
        return;
      }
    }
    console.log(`built ${file} [${flavor}]: ${steps.map(([c, a]) => `${c} ${a.join(' ')}`).join(' && ')}`);
    built.set(`${file} ${flavor}`, exe);
  });
  const env = sanitizerEnv();
  const results = await pool(selected, jobs, async (c) => {
    const exe = built.get(`${c.file} ${c.flavor}`);
    if (!exe) return { c, problems: ['not built'] };
    const r = await sh(exe, [c.name], { env: { ...env, ...c.env } });
    return { c, r, problems: judge(c.expect, r) };
  });
  for (const { c, r, problems } of results) {
    const label = `${c.file} ${c.name} [${c.flavor}${Object.keys(c.env).length ? ` ${Object.entries(c.env).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}]`;
    if (problems.length === 0) {
      passed++;
      const evidence = c.expect === PASS ? 'passes' : `caught: ${((r.stderr.match(/(lifelong-kernels CUDA emulator: .*|.*AddressSanitizer: .*)/) || [])[0] || r.stdout.trim().split('\n').pop()).slice(0, 220)}`;
      console.log(`ok   ${label}: ${evidence}`);
    } else {
      failed++;
      console.log(`FAIL ${label}: ${problems.join('; ')}`);
      if (r) console.log(`  stdout: ${r.stdout.trim().slice(0, 2000)}\n  stderr: ${r.stderr.trim().slice(0, 4000)}`);
    }
  }
  console.log(`emu verify: ${passed} passed, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  process.exit(failed ? 1 : 0);
})();
