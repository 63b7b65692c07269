// The examples run as written (README "Rec2PM serving with onnxruntime-node"), against the built
// package (`npm run build:ts`, which `npm test` runs first), importing it by its name.
import test from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';

const root = path.join(__dirname, '..');

test('examples/rec2pm-serving.ts serves three requests through onnxruntime-node and the memory bank', (t) => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join('examples', 'rec2pm-serving.ts')], { cwd: root, encoding: 'utf8', timeout: 300_000 });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.is(r.stderr, '');
  const lines = r.stdout.trim().split('\n');
  t.is(lines.length, 4, r.stdout);
  for (let step = 0; step < 3; step++) t.regex(lines[step], new RegExp(`^step ${step}: 16 users, \\d+ tokens, memory lengths 4 4 4 4 …$`));
  const m = /^user 0 memory: 4 x 64, first values (\S+) (\S+) (\S+)$/.exec(lines[3]);
  t.truthy(m, lines[3]);
  for (const x of m!.slice(1)) t.true(Number.isFinite(Number(x)) && Number(x) !== 0, x);
});
