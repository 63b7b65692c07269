// The shipped declarations (dist/lib/*.d.ts, built by `npm run build:ts`, which `npm test` runs
// first) compile in a strict consumer program, with lib checks on, on TypeScript 5.0 (the oldest
// supported) and on the current TypeScript; test/types/consumer.ts also asserts what they refuse,
// and the examples/ type-check against them as a user's program would.
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.join(__dirname, '..');
// consumer.ts with lib checks on; the examples too (with DOM types, which onnxruntime-common's
// own declarations name).
const projects = ['tsconfig.json', 'tsconfig.examples.json'].map((p) => path.join(__dirname, 'types', p));

for (const [name, pkg] of [['TypeScript 5.0', 'typescript-5.0'], ['the current TypeScript', 'typescript']] as const) {
  test(`the declarations compile in a consumer program on ${name}`, (t) => {
    t.true(fs.existsSync(path.join(root, 'dist', 'lib', 'index.d.ts')), 'dist/lib/index.d.ts is missing: run `npm run build:ts` first');
    const tsc = require.resolve(`${pkg}/bin/tsc`, { paths: [root] });
    const version = JSON.parse(fs.readFileSync(path.join(path.dirname(tsc), '..', 'package.json'), 'utf8')).version as string;
    if (pkg === 'typescript-5.0') t.regex(version, /^5\.0\./);
    for (const project of projects) {
      const r = spawnSync(process.execPath, [tsc, '-p', project], { cwd: root, encoding: 'utf8' });
      t.is(r.status, 0, `tsc ${version} -p ${path.relative(root, project)}:\n${r.stdout}${r.stderr}`);
    }
  });
}
