#!/usr/bin/env node
// CI smoke run of `npm run bench:serving`: runs `--quick` (dist/ must be built) and checks that the
// JSON holds every method x history length with finite, positive measurements (SPEC §12).
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const METHODS = ['full-attention', 'kv-cache', 'persrec', 'rec2pm-overwrite', 'rec2pm-append', 'gems'];
const LENGTHS = [1000, 10000, 100000];
const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'lk-serving-')), 'serving.json');
const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'bench', 'serving.js'), '--quick', '--device', 'cpu', '--out', out], { stdio: 'inherit' });
if (r.status !== 0) { console.error(`bench:serving --quick exited with ${r.status}`); process.exit(1); }
const json = JSON.parse(fs.readFileSync(out, 'utf8'));
const problems = [];
for (const key of ['layers', 'heads', 'headDim', 'width']) if (!(json.model && json.model[key] > 0)) problems.push(`model.${key} missing`);
for (const method of METHODS)
  for (const historyLength of LENGTHS) {
    const rows = (json.results || []).filter((x) => x.method === method && x.historyLength === historyLength);
    if (rows.length !== 1) { problems.push(`${method} @ ${historyLength}: ${rows.length} rows`); continue; }
    const row = rows[0];
    for (const field of ['bytesPerUser', 'p50Ms', 'p99Ms', 'requestsPerSecond'])
      if (!(Number.isFinite(row[field]) && row[field] > 0)) problems.push(`${method} @ ${historyLength}: ${field} = ${row[field]}`);
    if (!(Number.isFinite(row.updateMsPerSegment) && row.updateMsPerSegment >= 0)) problems.push(`${method} @ ${historyLength}: updateMsPerSegment = ${row.updateMsPerSegment}`);
    if (!(row.p99Ms >= row.p50Ms)) problems.push(`${method} @ ${historyLength}: p99 ${row.p99Ms} < p50 ${row.p50Ms}`);
  }
if (!fs.existsSync(out.replace(/\.json$/, '.svg'))) problems.push('SVG chart missing');
if (problems.length) { console.error('bench:serving --quick JSON:\n  ' + problems.join('\n  ')); process.exit(1); }
console.log(`bench:serving --quick: ${METHODS.length} methods x ${LENGTHS.length} history lengths present`);
