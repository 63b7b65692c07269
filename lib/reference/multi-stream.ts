// The oracle of multiStreamAttention (SPEC §12), written out plainly: per query row and head, the
// list of (stream, key) pairs it attends, float64 scores, then either one softmax per stream summed
// ('sum') or one softmax over the whole list ('union'). It does not call the single-stream oracles,
// so the tests can check it against their composition.
import type { RefLayout, RefOut, RefTensor } from './ops';

export interface RefDenseStream { q?: RefTensor; k: RefTensor; v: RefTensor; kv: RefLayout }
export interface RefIndexedStream extends RefDenseStream { indexer: { q: RefTensor; k: RefTensor; w: RefTensor }; topK: number }
export interface RefMultiStreams { recent?: RefDenseStream; midTerm?: RefIndexedStream; lifecycle?: RefDenseStream }
export interface RefMultiStreamOptions { q: RefLayout; fusion?: 'sum' | 'union'; scale?: number }

const NAMES = ['recent', 'midTerm', 'lifecycle'] as const;

function shapeOf(t: RefTensor, name: string, rank: number): number[] {
  if (t === null || typeof t !== 'object' || t.data === null || typeof t.data !== 'object') throw new TypeError(`${name}: expected { data, shape }`);
  if (!Array.isArray(t.shape) || t.shape.length !== rank) throw new RangeError(`${name}: expected rank ${rank}`);
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.data.length !== n) throw new RangeError(`${name}: shape [${t.shape.join(', ')}] needs ${n} elements, got ${t.data.length}`);
  return t.shape.slice();
}

function checkOffsets(offsets: Int32Array, name: string, rows: number): number {
  if (!(offsets instanceof Int32Array)) throw new TypeError(`${name}: expected an Int32Array`);
  if (offsets.length < 1 || offsets[0] !== 0 || offsets[offsets.length - 1] !== rows)
    throw new RangeError(`${name}: expected offsets from 0 to ${rows}`);
  for (let b = 0; b + 1 < offsets.length; b++) if (offsets[b + 1] < offsets[b]) throw new RangeError(`${name}: must be nondecreasing`);
  return offsets.length - 1;
}

/** The positions (inside the user's stream) the indexer keeps for query row i: top k, ties by lower position. */
function indexerChoice(ix: RefIndexedStream['indexer'], topK: number, i: number, start: number, length: number): number[] {
  const [, Hi, Di] = ix.q.shape;
  const scored: { j: number; s: number }[] = [];
  for (let j = 0; j < length; j++) {
    let s = 0;
    for (let h = 0; h < Hi; h++) {
      let d = 0;
      for (let c = 0; c < Di; c++) d += ix.q.data[(i * Hi + h) * Di + c] * ix.k.data[(start + j) * Di + c];
      s += ix.w.data[i * Hi + h] * (d > 0 ? d : 0);
    }
    if (!Number.isNaN(s) && s !== -Infinity) scored.push({ j, s });
  }
  scored.sort((a, b) => (a.s !== b.s ? (a.s > b.s ? -1 : 1) : a.j - b.j));
  return scored.slice(0, topK).map((x) => x.j);
}

/**
 * multiStreamAttention over plain arrays: q [Nq, H, D] → output [Nq, H, Dv] (float64), with lse
 * [Nq, H] for fusion 'union'.
 */
export function multiStreamAttention(q: RefTensor, streams: RefMultiStreams, options: RefMultiStreamOptions): { output: RefOut; lse?: RefOut } {
  const [Nq, H, D] = shapeOf(q, 'q', 3);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { q: layout, fusion?, scale? }');
  const B = checkOffsets(options.q?.offsets, 'options.q.offsets', Nq);
  const fusion = options.fusion ?? 'sum';
  if (fusion !== 'sum' && fusion !== 'union') throw new RangeError(`options.fusion: expected 'sum' or 'union', got ${String(fusion)}`);
  const present = NAMES.filter((n) => streams[n] !== undefined);
  if (present.length === 0) throw new RangeError('streams: expected at least one of recent, midTerm, lifecycle');
  let Dv = -1;
  for (const name of present) {
    const s = streams[name]!;
    const sq = s.q ?? q;
    const [sNq, sH, sD] = shapeOf(sq, `streams.${name}.q`, 3);
    const [Tk, Hkv, Dk] = shapeOf(s.k, `streams.${name}.k`, 3);
    const [Tv, Hv, sDv] = shapeOf(s.v, `streams.${name}.v`, 3);
    if (sNq !== Nq || sH !== H) throw new RangeError(`streams.${name}.q: expected ${Nq} queries of ${H} heads`);
    if (Dk !== sD || Tv !== Tk || Hv !== Hkv || H % Hkv !== 0) throw new RangeError(`streams.${name}: k / v shapes do not match its queries`);
    if (Dv >= 0 && sDv !== Dv) throw new RangeError(`streams.${name}.v: value size ${sDv} differs from ${Dv}`);
    Dv = sDv;
    if (checkOffsets(s.kv?.offsets, `streams.${name}.kv.offsets`, Tk) !== B) throw new RangeError(`streams.${name}.kv: batch differs from options.q's`);
  }

  const output = new Float64Array(Nq * H * Dv);
  const lse = new Float64Array(Nq * H).fill(-Infinity);
  for (let b = 0; b < B; b++) {
    for (let i = options.q.offsets[b]; i < options.q.offsets[b + 1]; i++) {
      // The keys of query row i: per stream, the key rows it attends.
      const keysOf = present.map((name) => {
        const s = streams[name]!;
        const start = s.kv.offsets[b], length = s.kv.offsets[b + 1] - start;
        const positions = name === 'midTerm'
          ? indexerChoice((s as RefIndexedStream).indexer, (s as RefIndexedStream).topK, i, start, length)
          : Array.from({ length }, (_, j) => j);
        return positions.map((j) => start + j);
      });
      for (let h = 0; h < H; h++) {
        // Every (stream, key, score) this head attends.
        const attended: { s: number; key: number; score: number }[] = [];
        present.forEach((name, si) => {
          const st = streams[name]!;
          const sq = st.q ?? q;
          const sD = sq.shape[2], Hkv = st.k.shape[1], g = Math.floor(h / (H / Hkv));
          const sc = options.scale ?? 1 / Math.sqrt(sD);
          for (const key of keysOf[si]) {
            let d = 0;
            for (let c = 0; c < sD; c++) d += sq.data[(i * H + h) * sD + c] * st.k.data[(key * Hkv + g) * sD + c];
            attended.push({ s: si, key, score: sc * d });
          }
        });
        // One softmax per group: each stream alone ('sum'), or all of them together ('union').
        const groups = fusion === 'sum' ? present.map((_, si) => attended.filter((a) => a.s === si)) : [attended];
        for (const group of groups) {
          if (group.length === 0) continue;
          let m = -Infinity;
          for (const a of group) if (a.score > m || Number.isNaN(a.score)) m = a.score;
          let l = 0;
          for (const a of group) l += Math.exp(a.score - m);
          for (const a of group) {
            const st = streams[present[a.s]]!;
            const Hkv = st.k.shape[1], g = Math.floor(h / (H / Hkv));
            const wgt = Math.exp(a.score - m) / l;
            for (let c = 0; c < Dv; c++) output[(i * H + h) * Dv + c] += wgt * st.v.data[(a.key * Hkv + g) * Dv + c];
          }
          if (fusion === 'union') lse[i * H + h] = m + Math.log(l);
        }
      }
    }
  }
  const result: { output: RefOut; lse?: RefOut } = { output: { data: output, shape: [Nq, H, Dv] } };
  if (fusion === 'union') result.lse = { data: lse, shape: [Nq, H] };
  return result;
}
