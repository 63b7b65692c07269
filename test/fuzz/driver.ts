// Fuzz driver (issue #8), run as a child process by test/fuzz.test.ts:
//   node --import=tsx --expose-gc test/fuzz/driver.ts
// Environment:
//   LIFELONG_FUZZ_GROUP    tensor | attention | sparse | bank | reference   (required)
//   LIFELONG_FUZZ_DEVICE   cpu | cuda                                        (default cpu)
//   LIFELONG_FUZZ_SEED     integer                                           (default 20240808)
//   LIFELONG_FUZZ_SECONDS  time box for the whole child                     (default 4)
//   LIFELONG_FUZZ_START    first case index (default 0; the parent restarts a crashed child after its last case)
//   LIFELONG_FUZZ_CASES    run case indices [START, CASES) (ignores the time box: fully deterministic)
//   LIFELONG_FUZZ_CASE     replay one case index only (prints it in full)
//   LIFELONG_FUZZ_TMP      scratch folder for bank files (default: a new one under the OS temp folder)
//   LIFELONG_FUZZ_LOG      file that gets one line per case BEFORE it runs (crash attribution), and one
//                          'V <json>' line per violation as it is found
// Prints one line `FUZZ-SUMMARY {json}` at the end: cases per function, and every distinct violation.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, MemoryBank, Tensor } from '../../lib/index';
import type { Device } from '../../lib/index';
import { Rng } from '../helpers';
import {
  bankSnapshot, CaseSpec, describe, errorText, hashValue, isThenable, judgeError, Scope, StorageTracker, writeLine,
} from './harness';
import { GROUPS } from './groups';

const seed = Number(process.env.LIFELONG_FUZZ_SEED ?? 20240808) >>> 0;
const seconds = Number(process.env.LIFELONG_FUZZ_SECONDS ?? 4);
const group = process.env.LIFELONG_FUZZ_GROUP ?? '';
const device = (process.env.LIFELONG_FUZZ_DEVICE ?? 'cpu') as Device;
const only = process.env.LIFELONG_FUZZ_CASE === undefined ? undefined : Number(process.env.LIFELONG_FUZZ_CASE);
const maxCases = process.env.LIFELONG_FUZZ_CASES === undefined ? undefined : Number(process.env.LIFELONG_FUZZ_CASES);
const startAt = Number(process.env.LIFELONG_FUZZ_START ?? 0);
const caseTimeoutMs = Number(process.env.LIFELONG_FUZZ_CASE_TIMEOUT_MS ?? 20000);
const logFd = process.env.LIFELONG_FUZZ_LOG ? fs.openSync(process.env.LIFELONG_FUZZ_LOG, 'w') : undefined;

const gen = GROUPS[group];
if (!gen) {
  console.error(`LIFELONG_FUZZ_GROUP must be one of ${Object.keys(GROUPS).join(', ')}, got '${group}'`);
  process.exit(2);
}
const cudaAvailable = backends().cuda.available;
if (device === 'cuda' && !cudaAvailable) {
  console.error(`LIFELONG_FUZZ_DEVICE=cuda but CUDA is unavailable: ${backends().cuda.reason}`);
  process.exit(2);
}
const other: Device | undefined = device === 'cpu' ? (cudaAvailable ? 'cuda' : undefined) : 'cpu';

// ------------------------------------------------------------------------------------------------

function mix(h: number, x: number): number {
  h = (h ^ x) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
function strHash(s: string): number { let h = 0x811c9dc5; for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193); } return h >>> 0; }
export function caseSeed(index: number): number { return mix(mix(mix(0x9e3779b9, seed), strHash(group)), index) || 1; }

interface VRec {
  kind: string; fn: string; family: string; case: number; detail: string; expected: string; got: string;
  count: number; details: string[];
}
const violations = new Map<string, VRec>();
const perFn: Record<string, { valid: number; invalid: number }> = {};
let current: { index: number; spec?: CaseSpec } = { index: -1 };
let finished = false;
const started = Date.now();
let casesRun = 0;

function violation(kind: string, spec: Pick<CaseSpec, 'fn' | 'family' | 'detail'>, expected: string, got: string, index = current.index): void {
  const key = `${kind}|${spec.fn}|${spec.family}`;
  const detail = spec.detail ?? '';
  writeLine(logFd, `V\t${JSON.stringify({ kind, fn: spec.fn, family: spec.family, case: index, detail, expected, got: got.slice(0, 500) })}`);
  const v = violations.get(key);
  if (v) {
    v.count++;
    if (v.details.length < 6 && !v.details.includes(detail)) v.details.push(detail);
    return;
  }
  violations.set(key, { kind, fn: spec.fn, family: spec.family, case: index, detail, expected, got: got.slice(0, 500), count: 1, details: [detail] });
}

process.on('unhandledRejection', (e) => {
  violation('crash:unhandled-rejection', current.spec ?? { fn: group, family: 'unknown' }, 'no unhandled rejection (it ends a Node process)', errorText(e));
});
process.on('uncaughtException', (e) => {
  violation('crash:uncaught-exception', current.spec ?? { fn: group, family: 'unknown' }, 'no uncaught exception (it ends a Node process)', errorText(e));
  finish(6);
});

type Settled = { state: 'resolved'; value: unknown } | { state: 'rejected'; error: unknown } | { state: 'timeout' };
function settle(p: Promise<unknown>, ms: number): Promise<Settled> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ state: 'timeout' }), ms);
    p.then((value) => { clearTimeout(timer); resolve({ state: 'resolved', value }); },
      (error) => { clearTimeout(timer); resolve({ state: 'rejected', error }); });
  });
}

function disposeResult(v: unknown, depth = 0): void {
  if (v instanceof Tensor || v instanceof MemoryBank) { v.dispose(); return; }
  if (v !== null && typeof v === 'object' && depth < 3 && !ArrayBuffer.isView(v))
    for (const k of Object.keys(v)) disposeResult((v as Record<string, unknown>)[k], depth + 1);
}

async function tensorHashes(ts: Tensor[]): Promise<(string | undefined)[]> {
  return Promise.all(ts.map(async (t) => {
    if (t.disposed) return undefined;
    const d = await t.data();
    return hashValue(d);
  }));
}

function listing(dir: string): string {
  try { return fs.readdirSync(dir).sort().join('\n'); } catch (e) { return errorText(e); }
}

const tracker = new StorageTracker();
tracker.install();
if (!tracker.selfTest())
  violation('driver-error', { fn: 'externalMemory', family: 'storage tracking' }, 'every native storage seen by the leak check', 'the tracker did not see the storages of zeros(): the output-left-allocated check would be void');
const tmp = process.env.LIFELONG_FUZZ_TMP ?? fs.mkdtempSync(path.join(os.tmpdir(), 'lk-fuzz-'));

async function runCase(index: number): Promise<'ok' | 'stop'> {
  const rng = new Rng(caseSeed(index));
  const scope = new Scope(rng, device, other, cudaAvailable, tmp);
  current = { index };
  tracker.begin();
  writeLine(logFd, `${index}\tsetup`);
  let spec: CaseSpec;
  try {
    spec = await gen(rng, scope);
  } catch (e) {
    violation('setup-failed', { fn: group, family: 'setup', detail: (e as Error)?.stack?.split('\n').slice(0, 3).join(' | ') }, 'a valid setup', errorText(e));
    scope.disposeAll();
    for (const s of tracker.end()) s.dispose();
    return 'ok';
  }
  current.spec = spec;
  const stat = (perFn[spec.fn] ??= { valid: 0, invalid: 0 });
  if (spec.expect.ok) stat.valid++; else stat.invalid++;
  casesRun++;

  const arraysBefore = scope.arrays.map((a) => hashValue(a));
  const watched = scope.watched.filter((t) => !t.disposed);
  const tensorsBefore = await tensorHashes(watched);
  let bankBefore: string | undefined;
  if (spec.bank) bankBefore = await bankSnapshot(spec.bank);
  const plainBefore = spec.plainState?.();
  const folderBefore = spec.folder ? listing(spec.folder) : undefined;

  writeLine(logFd, `${index}\tcall\t${spec.fn}\t${spec.expect.ok ? 'valid' : 'bad'}\t${spec.family}\t${(spec.detail ?? '').replace(/[\t\n]/g, ' ')}`);
  if (only !== undefined) console.log(`case ${index}: ${spec.fn} — ${spec.family} ${spec.detail ?? ''} (expect ${JSON.stringify(spec.expect)})`);

  let outcome: Settled;
  let threwSync = false;
  try {
    const r = spec.call();
    spec.post?.();
    if (spec.sync) outcome = { state: 'resolved', value: r };
    else if (!isThenable(r)) {
      violation('not-a-promise', spec, 'a Promise (async API)', `returned ${describe(r)}`);
      outcome = { state: 'resolved', value: r };
    } else outcome = await settle(r as Promise<unknown>, caseTimeoutMs);
  } catch (e) {
    threwSync = true;
    outcome = { state: 'rejected', error: e };
  }
  if (outcome.state === 'timeout') {
    violation('hang', spec, `settles within ${caseTimeoutMs} ms`, 'still pending');
    return 'stop';
  }
  if (only !== undefined) console.log(`  -> ${outcome.state === 'resolved' ? `resolved ${describe(outcome.value)}` : errorText(outcome.error)}${threwSync ? ' (thrown synchronously)' : ''}`);
  if (threwSync && !spec.sync)
    violation('sync-throw', spec, 'a rejected promise (SPEC §6: no method of an async API throws synchronously)', `threw synchronously: ${errorText((outcome as { error: unknown }).error)}`);

  const failed = outcome.state === 'rejected';
  const error = outcome.state === 'rejected' ? outcome.error : undefined;
  const value = outcome.state === 'resolved' ? outcome.value : undefined;
  if (spec.expect.ok) {
    if (failed) violation('valid-call-failed', spec, 'resolves', errorText(error));
    else {
      let msg: string | undefined;
      try { msg = await spec.check?.(value); } catch (e) { msg = `check threw ${errorText(e)}`; }
      if (msg) violation('wrong-result', spec, 'the reference result', msg);
    }
  } else if (spec.expect.any) {
    if (failed && !(error instanceof TypeError || error instanceof RangeError))
      violation('wrong-class', spec, 'TypeError or RangeError (or success)', errorText(error));
  } else if (!failed) {
    const want = judgeError(undefined, spec.expect)?.[1] ?? 'an error';
    violation('accepted-bad-input', spec, `rejects with ${want}`, `succeeded: ${describe(value)}`);
  } else {
    const j = judgeError(error, spec.expect);
    if (j) violation(j[0], spec, j[1], errorText(error));
  }
  if (!failed) disposeResult(value);

  if (!failed && !spec.expect.ok && !spec.expect.any && spec.bank && bankBefore !== undefined) {
    // A bad call that went through: say whether it also changed the bank (e.g. emptied memories).
    let after: string;
    try { after = await bankSnapshot(spec.bank); } catch (e) { after = `bank unusable: ${errorText(e)}`; }
    if (after !== bankBefore) violation('state-changed', spec, 'the bank unchanged (the call should have been rejected)', diffText(bankBefore, after));
  }

  if (failed && !spec.expect.ok) {
    if (spec.bank && bankBefore !== undefined) {
      let after: string;
      try { after = await bankSnapshot(spec.bank); } catch (e) { after = `bank unusable: ${errorText(e)}`; }
      if (after !== bankBefore) violation('state-changed', spec, 'the bank bit-identical after a rejected call', diffText(bankBefore, after));
    }
    if (spec.plainState && plainBefore !== undefined) {
      const after = spec.plainState();
      if (after !== plainBefore) violation('state-changed', spec, 'the reference bank unchanged after a rejected call', diffText(plainBefore, after));
    }
    if (spec.folder && folderBefore !== undefined) {
      const after = listing(spec.folder);
      if (after !== folderBefore) violation('state-changed', spec, `folder listing unchanged after a rejected call (${JSON.stringify(folderBefore.split('\n'))})`, `now ${JSON.stringify(after.split('\n'))}`);
    }
  }
  if (!spec.noInputCheck) {
    const arraysAfter = scope.arrays.map((a) => hashValue(a));
    arraysAfter.forEach((h, i) => { if (h !== arraysBefore[i]) violation('input-mutated', spec, 'inputs never mutated', `input array #${i} changed: ${describe(scope.arrays[i])}`); });
    for (let i = 0; i < watched.length; i++) {
      if (tensorsBefore[i] === undefined) continue;
      if (watched[i].disposed) { violation('input-disposed', spec, 'input tensors left alive', `${watched[i].toString()} was disposed by the call`); continue; }
      const [h] = await tensorHashes([watched[i]]);
      if (h !== tensorsBefore[i]) violation('input-mutated', spec, 'input tensors never mutated', `${watched[i].toString()} contents changed`);
    }
  }
  scope.disposeAll();
  const leaked = tracker.end();
  if (leaked.length > 0) {
    const bytes = leaked.reduce((a, s) => a + s.bytes, 0);
    violation('output-left-allocated', spec, 'every native storage the call created freed once its outputs are disposed',
      `${leaked.length} storage(s), ${bytes} bytes still allocated (${failed ? 'after the rejection' : 'after disposing the outputs'})`);
    for (const s of leaked) s.dispose();
  }
  return 'ok';
}

function diffText(a: string, b: string): string {
  if (a.length < 300 && b.length < 300) return `before ${a}; after ${b}`;
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return `differs from char ${i}: before …${a.slice(Math.max(0, i - 40), i + 80)}…; after …${b.slice(Math.max(0, i - 40), i + 80)}…`;
}

function finish(code = 0): never {
  if (!finished) {
    finished = true;
    const summary = {
      seed, group, device, seconds, cases: casesRun, elapsedMs: Date.now() - started, perFn,
      lastCase: current.index,
      violations: [...violations.values()].sort((a, b) => a.fn.localeCompare(b.fn) || a.kind.localeCompare(b.kind) || a.family.localeCompare(b.family)),
    };
    process.stdout.write(`FUZZ-SUMMARY ${JSON.stringify(summary)}\n`);
    try { fs.rmSync(tmp, { recursive: true, force: true }); } catch { /* best effort */ }
  }
  process.exit(code);
}

(async () => {
  if (only !== undefined) {
    const r = await runCase(only);
    finish(r === 'stop' ? 3 : 0);
  }
  const deadline = started + seconds * 1000;
  for (let i = startAt; maxCases !== undefined ? i < maxCases : Date.now() < deadline; i++) {
    if ((await runCase(i)) === 'stop') finish(3);
    if (i % 256 === 255) (globalThis as { gc?: () => void }).gc?.();
  }
  finish(0);
})().catch((e) => {
  violation('driver-error', current.spec ?? { fn: group, family: 'driver' }, 'the driver runs', (e as Error)?.stack ?? errorText(e));
  finish(7);
});
