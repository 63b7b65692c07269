// bench/chart.ts: the SVG written beside a benchmark's JSON.
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { barChartSvg, writeAttentionChart } from '../bench/chart';

test('the attention chart has one bar per measured value, longer for larger times, beside the JSON', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lk-chart-'));
  const json = path.join(dir, 'attention-x.json');
  const rows = [{ shape: '8x1024', rule: 'causal', oursMs: 44, ortMs: 62 }, { shape: '1x4096', rule: 'rec2pm-update', oursMs: 7.5, ortMs: 131 }];
  const file = writeAttentionChart(json, rows);
  t.is(file, path.join(dir, 'attention-x.svg'));
  const svg = fs.readFileSync(file, 'utf8');
  t.true(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"') && svg.trimEnd().endsWith('</svg>'));
  const widths = [...svg.matchAll(/<rect x="\d+" y="\d+" width="([\d.]+)" height="12"[^>]*><title>([^<]+)<\/title>/g)].map((m) => ({ w: Number(m[1]), title: m[2] }));
  t.is(widths.length, 4);
  const byValue = [44, 62, 7.5, 131].map((v, i) => ({ v, w: widths[i].w }));
  const sorted = [...byValue].sort((a, b) => a.v - b.v);
  for (let i = 1; i < sorted.length; i++) t.true(sorted[i].w > sorted[i - 1].w, 'log-scale bars grow with the value');
  t.regex(svg, /8x1024 causal/);
  t.regex(barChartSvg({ title: 'a <b> & "c"', unit: 'ms', series: ['s'], groups: [{ label: 'x', values: { s: 0 } }] }), /a &lt;b&gt; &amp; &quot;c&quot;/);
});
