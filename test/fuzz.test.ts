// Fuzz suite (issue #8): bad inputs for every public function on every backend present, run in
// child processes (test/fuzz/driver.ts), seeded and time-boxed. A test fails on any crash, hang,
// wrong error class, message not naming the argument, synchronous throw from an async API, state
// change by a rejected call, mutated input, or native output left allocated; valid calls are mixed in
// and checked against the reference.
//
//   LIFELONG_FUZZ_SEED=n      seed (default 20240808); the same seed gives the same cases
//   LIFELONG_FUZZ_SECONDS=s   time box per child process = per (device, group) (default 4)
//   LIFELONG_FUZZ_CASES=n     run case indices [0, n) instead of a time box (fully deterministic)
//
// Replay one case (printed with every violation):
//   LIFELONG_FUZZ_SEED=s LIFELONG_FUZZ_GROUP=g LIFELONG_FUZZ_DEVICE=d LIFELONG_FUZZ_CASE=i \
//     node --import=tsx --expose-gc test/fuzz/driver.ts
import test from 'ava';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parityDevices } from './helpers';
import { DEVICE_FREE, GROUPS } from './fuzz/groups';

const SEED = String(Number(process.env.LIFELONG_FUZZ_SEED ?? 20240808) >>> 0);
const SECONDS = Number(process.env.LIFELONG_FUZZ_SECONDS ?? 4);
const CASES = process.env.LIFELONG_FUZZ_CASES;
const GRACE_MS = 60_000;
const MAX_RESTARTS = 12;
const driver = path.resolve('test', 'fuzz', 'driver.ts');

interface V { kind: string; fn: string; family: string; case: number; detail: string; expected: string; got: string }
interface Agg extends V { count: number; details: string[] }

interface GroupRun {
  wallMs: number;
  children: number;
  perFn: Map<string, { valid: number; bad: number }>;
  violations: Map<string, Agg>;
}

function envPrefix(device: string, group: string, index: number): string {
  const emu = process.env.LIFELONG_CUDA_EMULATE === '1' ? 'LIFELONG_CUDA_EMULATE=1 ' : '';
  const addon = process.env.LIFELONG_ADDON ? `LIFELONG_ADDON=${process.env.LIFELONG_ADDON} ` : '';
  return `${emu}${addon}LIFELONG_FUZZ_SEED=${SEED} LIFELONG_FUZZ_GROUP=${group} LIFELONG_FUZZ_DEVICE=${device} LIFELONG_FUZZ_CASE=${index} node --import=tsx --expose-gc test/fuzz/driver.ts`;
}

function add(run: GroupRun, v: V): void {
  const key = `${v.kind}|${v.fn}|${v.family}`;
  const a = run.violations.get(key);
  if (a) {
    a.count++;
    if (a.details.length < 5 && !a.details.includes(v.detail)) a.details.push(v.detail);
  } else run.violations.set(key, { ...v, count: 1, details: [v.detail] });
}

function spawnChild(env: Record<string, string>, timeoutMs: number): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; killed: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import=tsx', '--expose-gc', driver], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', killed = false;
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-8000); });
    const timer = setTimeout(() => { killed = true; child.kill('SIGKILL'); }, timeoutMs);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr, killed }); });
  });
}

/** Runs one group on one device: children until the time box (or the case range) is used up. */
async function runGroup(device: string, group: string): Promise<GroupRun> {
  const started = Date.now();
  const deadline = started + SECONDS * 1000;
  const run: GroupRun = { wallMs: 0, children: 0, perFn: new Map(), violations: new Map() };
  let start = 0;
  for (let attempt = 0; attempt <= MAX_RESTARTS; attempt++) {
    const remaining = Math.max(0.5, (deadline - Date.now()) / 1000);
    const log = path.join(os.tmpdir(), `lk-fuzz-${process.pid}-${device}-${group}-${attempt}.log`);
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'lk-fuzz-'));
    const env: Record<string, string> = {
      LIFELONG_FUZZ_SEED: SEED, LIFELONG_FUZZ_GROUP: group, LIFELONG_FUZZ_DEVICE: device, LIFELONG_FUZZ_LOG: log, LIFELONG_FUZZ_TMP: scratch,
      LIFELONG_FUZZ_START: String(start), LIFELONG_FUZZ_SECONDS: String(remaining),
    };
    if (CASES !== undefined) env.LIFELONG_FUZZ_CASES = CASES;
    const limitMs = (CASES !== undefined ? 600 : remaining) * 1000 + GRACE_MS;
    const r = await spawnChild(env, limitMs);
    fs.rmSync(scratch, { recursive: true, force: true });
    run.children++;
    let text = '';
    try { text = fs.readFileSync(log, 'utf8'); fs.rmSync(log, { force: true }); } catch { /* no log: died before opening it */ }
    let last = { index: start - 1, line: '' };
    for (const line of text.split('\n')) {
      if (line.startsWith('V\t')) { add(run, JSON.parse(line.slice(2)) as V); continue; }
      const f = line.split('\t');
      if (f.length < 2) continue;
      last = { index: Number(f[0]), line };
      if (f[1] === 'call') {
        const c = run.perFn.get(f[2]) ?? { valid: 0, bad: 0 };
        if (f[3] === 'valid') c.valid++; else c.bad++;
        run.perFn.set(f[2], c);
      }
    }
    const summarized = r.stdout.includes('FUZZ-SUMMARY ');
    if (summarized && r.code === 0) break;
    const [, , fn = group, , family = 'setup', detail = ''] = last.line.split('\t');
    if (!summarized) {
      const how = r.killed ? `killed after ${Math.round(limitMs / 1000)} s (hang or blocked event loop)` : `exit code ${r.code}, signal ${r.signal}`;
      add(run, { kind: r.killed ? 'hang:child-killed' : 'crash', fn, family, case: last.index, detail, expected: 'the child process survives every case', got: `${how}; stderr: …${r.stderr.trim().slice(-600)}` });
    }
    // Crashed, hung or stopped: continue after the case that did it.
    start = last.index + 1;
    if (CASES !== undefined ? start >= Number(CASES) : Date.now() >= deadline) break;
  }
  run.wallMs = Date.now() - started;
  return run;
}

function report(device: string, group: string, run: GroupRun): string {
  const lines: string[] = [];
  for (const v of [...run.violations.values()].sort((a, b) => a.fn.localeCompare(b.fn) || a.kind.localeCompare(b.kind) || a.family.localeCompare(b.family))) {
    lines.push(`[${v.kind}] ${v.fn} — ${v.family} (x${v.count}; first at case ${v.case})`);
    lines.push(`    bad argument: ${v.details.filter((d) => d).join(' | ') || '(see family)'}`);
    lines.push(`    expected: ${v.expected}`);
    lines.push(`    got:      ${v.got}`);
    lines.push(`    replay:   ${envPrefix(device, group, v.case)}`);
  }
  return lines.join('\n');
}

const devices = parityDevices();
for (const device of devices) {
  for (const group of Object.keys(GROUPS)) {
    if (DEVICE_FREE.includes(group) && device !== 'cpu') continue;
    test.serial(`fuzz ${group} on ${device} (seed ${SEED}, ${CASES !== undefined ? `${CASES} cases` : `${SECONDS} s`})`, async (t) => {
      const run = await runGroup(device, group);
      const counts = [...run.perFn.entries()].map(([fn, c]) => `${fn} ${c.valid + c.bad} (${c.bad} bad, ${c.valid} valid)`);
      const total = [...run.perFn.values()].reduce((a, c) => a + c.valid + c.bad, 0);
      t.log(`${device} / ${group}: ${total} cases in ${(run.wallMs / 1000).toFixed(1)} s, ${run.children} child process(es): ${counts.join(', ')}`);
      t.true(total > 0, 'the driver ran no case');
      if (run.violations.size > 0) {
        const n = [...run.violations.values()].reduce((a, v) => a + v.count, 0);
        t.fail(`${run.violations.size} distinct violation(s), ${n} in all, on ${device} / ${group} (seed ${SEED}):\n${report(device, group, run)}`);
      }
    });
  }
}
