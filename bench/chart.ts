// SVG charts for the benchmarks' results, written beside their JSON: grouped horizontal bars, one
// group per measured case, one bar per series (ours, the peer), on a log scale (times span decades).
import * as fs from 'fs';

export interface ChartGroup {
  label: string;
  values: Record<string, number>;  // series name -> value (> 0; others are left out)
}

export interface BarChart {
  title: string;
  unit: string;
  series: string[];
  groups: ChartGroup[];
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd'];

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The SVG text of a grouped bar chart (log-scale axis from the smallest to the largest value). */
export function barChartSvg(chart: BarChart): string {
  const bar = 14, gap = 10, labelWidth = 200, plotWidth = 520, top = 50, legendWidth = 140;
  const values = chart.groups.flatMap((g) => chart.series.map((s) => g.values[s])).filter((v) => v > 0 && Number.isFinite(v));
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values, 1)))), hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values, 1.0001))));
  const x = (v: number) => labelWidth + (Math.log10(v / lo) / Math.log10(hi / lo)) * plotWidth;
  const groupHeight = chart.series.length * bar + gap;
  const height = top + chart.groups.length * groupHeight + 40;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + plotWidth + legendWidth}" height="${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<text x="10" y="20" font-size="15" font-weight="bold">${escape(chart.title)}</text>`);
  for (let p = lo; p <= hi * 1.0001; p *= 10) {
    out.push(`<line x1="${x(p).toFixed(1)}" y1="${top - 5}" x2="${x(p).toFixed(1)}" y2="${height - 30}" stroke="#ddd"/>`);
    out.push(`<text x="${x(p).toFixed(1)}" y="${height - 15}" text-anchor="middle">${p >= 1 ? p : p.toPrecision(1)} ${escape(chart.unit)}</text>`);
  }
  chart.groups.forEach((g, i) => {
    const y0 = top + i * groupHeight;
    out.push(`<text x="${labelWidth - 8}" y="${y0 + (chart.series.length * bar) / 2 + 4}" text-anchor="end">${escape(g.label)}</text>`);
    chart.series.forEach((s, j) => {
      const v = g.values[s];
      if (!(v > 0 && Number.isFinite(v))) return;
      const y = y0 + j * bar;
      out.push(`<rect x="${labelWidth}" y="${y}" width="${Math.max(1, x(v) - labelWidth).toFixed(1)}" height="${bar - 2}" fill="${COLORS[j % COLORS.length]}"><title>${escape(`${g.label} ${s}: ${v.toPrecision(4)} ${chart.unit}`)}</title></rect>`);
      out.push(`<text x="${(x(v) + 4).toFixed(1)}" y="${y + bar - 4}" font-size="10">${v.toPrecision(3)}</text>`);
    });
  });
  chart.series.forEach((s, j) => {
    const y = top + j * 18;
    out.push(`<rect x="${labelWidth + plotWidth + 20}" y="${y}" width="12" height="12" fill="${COLORS[j % COLORS.length]}"/>`);
    out.push(`<text x="${labelWidth + plotWidth + 38}" y="${y + 10}">${escape(s)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Writes `chart` as SVG beside `jsonFile` (same name, .svg) and returns its path. */
export function writeChartBeside(jsonFile: string, chart: BarChart): string {
  const file = jsonFile.replace(/\.json$/, '') + '.svg';
  fs.writeFileSync(file, barChartSvg(chart));
  return file;
}

/** The maskedAttention benchmark's rows (bench/attention.ts) as a chart: median ms, ours vs onnxruntime. */
export function writeAttentionChart(jsonFile: string, rows: readonly Record<string, unknown>[]): string {
  const file = writeChartBeside(jsonFile, {
    title: 'maskedAttention, median time per call (lower is better)',
    unit: 'ms',
    series: ['lifelong-kernels', 'onnxruntime-node (dense)'],
    groups: rows.map((r) => ({ label: `${String(r.shape)} ${String(r.rule)}`, values: { 'lifelong-kernels': Number(r.oursMs), 'onnxruntime-node (dense)': Number(r.ortMs) } })),
  });
  console.log(`wrote ${file}`);
  return file;
}
