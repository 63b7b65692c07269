// `npm run bench:serving`: lifelong serving end to end. Users with histories of 1k, 10k and 100k
// interactions (Zipf item popularity, new interactions arriving in segments) ask for candidate
// requests of 4-16 queries; one small model of fixed dimensions serves them six ways: full-history
// attention recomputed per request, a per-user K/V cache, PerSRec, Rec2PM (overwrite / append) and
// GEMs (three streams through multiStreamAttention). Prints a table, writes JSON and an SVG chart
// under bench/results/. `--quick` is the CI smoke run (1-2 minutes); `--device cuda|cpu` picks the device
// (default: a real GPU when present); `--out FILE` names the JSON.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backends, maskedAttention, MemoryBank, multiStreamAttention, tensor, Tensor } from '../lib/index';
import type { Device, Layout, MaskRule, PresetName } from '../lib/index';

// ---------------------------------------------------------------- the model and the workload

/** Fixed model: HSTU-sized heads, fewer layers than the papers' 16 so that 2 CPU cores finish. */
const MODEL = { layers: 2, heads: 4, headDim: 16, width: 64, dtype: 'float32', catalogItems: 50_000, zipfExponent: 1.1 } as const;
const W = MODEL.width;
const SEGMENT = 256;          // interactions per arriving segment (PerSRec / Rec2PM segment, GEMs window step)
const MEMORY_TOKENS = 4;      // Rec2PM C and PerSRec K: tokens per user / per segment
const RECENT = 256;           // GEMs recent stream, PerSRec recent items
const MID_TERM_END = 5_000;   // GEMs mid-term stream: interactions 257 ... 5,000
const TOP_K = 256;            // GEMs indexer: keys kept per query
const INDEXER = { heads: 2, dim: 16 } as const;
const LIFECYCLE_SLOTS = 256;  // GEMs lifecycle tokens kept per user (4 per compressed segment, oldest evicted)
const HISTORY_LENGTHS = [1_000, 10_000, 100_000];
const METHODS = ['full-attention', 'kv-cache', 'persrec', 'rec2pm-overwrite', 'rec2pm-append', 'gems'] as const;
type Method = typeof METHODS[number];

const quick = process.argv.includes('--quick');
const argAfter = (flag: string) => (process.argv.includes(flag) ? process.argv[process.argv.indexOf(flag) + 1] : undefined);
const deviceArg = argAfter('--device');
/** `--out FILE`: the JSON goes there (the SVG beside it) instead of bench/results/. */
const outArg = argAfter('--out');
/** Users and requests per history length (fewer at 100k); full attention runs fewer requests. */
const PLAN: Record<number, { users: number; requests: number; fullRequests: number; updates: number }> = quick
  ? { 1_000: { users: 2, requests: 6, fullRequests: 3, updates: 2 }, 10_000: { users: 1, requests: 4, fullRequests: 1, updates: 1 }, 100_000: { users: 1, requests: 3, fullRequests: 1, updates: 1 } }
  : { 1_000: { users: 4, requests: 40, fullRequests: 16, updates: 4 }, 10_000: { users: 2, requests: 20, fullRequests: 3, updates: 3 }, 100_000: { users: 1, requests: 10, fullRequests: 1, updates: 2 } };
/** Above this history length full attention's causal pass is timed on its last STRIP query rows and scaled by allowed pairs. */
const FULL_DIRECT_MAX = quick ? 1_000 : 10_000;
const STRIP = 256;

class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0 || 1; }
  next(): number { let x = this.s; x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; this.s = x; return x / 4294967296; }
  floats(n: number, amp: number): Float32Array { const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = (this.next() * 2 - 1) * amp; return a; }
}

/** Item ids drawn with probability ∝ 1 / rank^s over the catalog. */
class Zipf {
  private cdf: Float64Array;
  constructor(n: number, s: number) {
    this.cdf = new Float64Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) { total += 1 / Math.pow(i + 1, s); this.cdf[i] = total; }
    for (let i = 0; i < n; i++) this.cdf[i] /= total;
  }
  draw(rng: Rng): number {
    const u = rng.next();
    let lo = 0, hi = this.cdf.length - 1;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.cdf[mid] < u) lo = mid + 1; else hi = mid; }
    return lo;
  }
  history(rng: Rng, n: number): Int32Array { return Int32Array.from({ length: n }, () => this.draw(rng)); }
}

/** The weights: item embeddings, per layer Wq / Wk / Wv (width x width), the GEMs indexer projections. */
interface Weights {
  embedding: Float32Array;                 // [catalog, W]
  wq: Float32Array[]; wk: Float32Array[]; wv: Float32Array[];
  indexerQ: Float32Array[]; indexerW: Float32Array[]; indexerK: Float32Array;  // [W, Hi*Di], [W, Hi], [W, Di]
  memoryQueries: Float32Array;             // [C, W] Rec2PM / PerSRec learnable tokens
  catalogK: Float32Array[]; catalogV: Float32Array[]; catalogIndexerK: Float32Array;  // GEMs: per-item keys (no context)
}

/** out[r] = x[r] · w for r < rows; x [rows, n], w [n, m]. Plain JS, one thread (the projections are not the kernels under test). */
function matmul(x: Float32Array, rows: number, w: Float32Array, n: number, m: number): Float32Array {
  const out = new Float32Array(rows * m);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < n; i++) {
      const a = x[r * n + i];
      if (a === 0) continue;
      for (let j = 0; j < m; j++) out[r * m + j] += a * w[i * m + j];
    }
  return out;
}

function makeWeights(rng: Rng): Weights {
  const amp = 1 / Math.sqrt(W);
  const layers = (n: number) => Array.from({ length: MODEL.layers }, () => rng.floats(W * n, amp));
  const embedding = rng.floats(MODEL.catalogItems * W, 1);
  const wk = layers(W), wv = layers(W), indexerK = rng.floats(W * INDEXER.dim, amp);
  return {
    embedding, wq: layers(W), wk, wv, indexerQ: layers(INDEXER.heads * INDEXER.dim), indexerW: layers(INDEXER.heads), indexerK,
    memoryQueries: rng.floats(MEMORY_TOKENS * W, 1),
    catalogK: wk.map((w) => matmul(embedding, MODEL.catalogItems, w, W, W)),
    catalogV: wv.map((w) => matmul(embedding, MODEL.catalogItems, w, W, W)),
    catalogIndexerK: matmul(embedding, MODEL.catalogItems, indexerK, W, INDEXER.dim),
  };
}

function gatherRows(table: Float32Array, width: number, ids: ArrayLike<number>, from = 0, to = ids.length): Float32Array {
  const out = new Float32Array((to - from) * width);
  for (let i = from; i < to; i++) out.set(table.subarray(ids[i] * width, (ids[i] + 1) * width), (i - from) * width);
  return out;
}

function concatRows(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a); out.set(b, a.length);
  return out;
}

// ---------------------------------------------------------------- the layer loop every method shares

interface LayerKv { k: Float32Array; v: Float32Array; rows: number }
interface ForwardOptions {
  /** Per layer: K/V rows before the sequence's own (a cache, summary tokens); attended by every row. */
  prefix?: (layer: number) => LayerKv | undefined;
  /** Layout of the sequence's own rows and of [prefix; rows] (segments / roles), and the rule; default causal. */
  qLayout?: Omit<Layout, 'offsets'>;
  kvLayout?: (layer: number) => Omit<Layout, 'offsets'> | undefined;
  rule?: MaskRule | PresetName;
  /** Only the last `outputRows` rows' final outputs are needed: the last layer computes only those queries. */
  outputRows?: number;
  /** Receives each layer's K/V of the sequence's own rows (to extend a cache). */
  keep?: (layer: number, kv: LayerKv) => void;
  /** Above this many attention query rows x keys, the causal pass is timed on a strip and scaled. */
  stripScale?: boolean;
}

/** Time spent in the scaled-away part of a strip-timed pass (added to the request's latency). */
let scaledExtraMs = 0;

/** Runs the model over `rows` hidden rows h [rows, W] of one user; returns the last outputRows hidden rows. */
async function forward(h: Float32Array, rows: number, device: Device, w: Weights, o: ForwardOptions = {}): Promise<Float32Array> {
  const H = MODEL.heads, D = MODEL.headDim;
  for (let l = 0; l < MODEL.layers; l++) {
    const last = l === MODEL.layers - 1;
    const qRows = last && o.outputRows !== undefined ? o.outputRows : rows;
    const qFrom = rows - qRows;
    const k = matmul(h, rows, w.wk[l], W, W), v = matmul(h, rows, w.wv[l], W, W);
    const q = matmul(h.subarray(qFrom * W), qRows, w.wq[l], W, W);
    o.keep?.(l, { k, v, rows });
    const pre = o.prefix?.(l);
    const kvRows = (pre?.rows ?? 0) + rows;
    const kAll = pre ? concatRows(pre.k, k) : k, vAll = pre ? concatRows(pre.v, v) : v;
    const qLayout: Layout = { offsets: Int32Array.of(0, qRows) };
    if (o.qLayout?.segments) qLayout.segments = o.qLayout.segments.subarray(qFrom);
    if (o.qLayout?.roles) qLayout.roles = o.qLayout.roles.subarray(qFrom);
    const kvLayout: Layout = { offsets: Int32Array.of(0, kvRows), ...o.kvLayout?.(l) };
    let attendRows = qRows, attendQ = q;
    // Strip timing: a causal pass over N rows costs ∝ allowed pairs; time its last STRIP rows (the
    // most expensive ones, bottom-right aligned) and add the rest in proportion.
    if (o.stripScale && qRows > STRIP && (o.rule ?? 'causal') === 'causal') {
      attendRows = STRIP;
      attendQ = q.subarray((qRows - STRIP) * W);
      qLayout.offsets = Int32Array.of(0, STRIP);
    }
    const qt = tensor(attendQ, [attendRows, H, D], { device });
    const kt = tensor(kAll, [kvRows, H, D], { device }), vt = tensor(vAll, [kvRows, H, D], { device });
    const started = performance.now();
    const { output } = await maskedAttention(qt, kt, vt, { q: qLayout, kv: kvLayout, rule: o.rule ?? 'causal' });
    const ms = performance.now() - started;
    const out = await output.float32();
    if (attendRows !== qRows) {
      const allowed = (n: number, first: number) => n * first + (n * (n + 1)) / 2;  // rows at positions first ... first + n - 1
      const kvBefore = kvRows - qRows;
      const total = allowed(qRows, kvBefore), strip = allowed(STRIP, kvRows - STRIP);
      scaledExtraMs += ms * (total / strip - 1);
    }
    for (const t of [qt, kt, vt, output]) t.dispose();
    // Residual update of the rows whose queries ran (the strip's rows when scaled; the others keep
    // their input: their values do not change any cost).
    const next = last ? new Float32Array(qRows * W) : h.slice();
    const base = last ? 0 : qFrom * W;
    const outFrom = (qRows - attendRows) * W;
    if (last) next.set(h.subarray(qFrom * W));
    for (let i = 0; i < attendRows * W; i++) next[base + outFrom + i] += out[i];
    h = next;
  }
  return h;
}

// ---------------------------------------------------------------- per-user state of each method

interface User { id: number; history: number[] }

interface Served {
  /** Bytes kept per user between requests. */
  bytes(user: User): number;
  /** Folds one arriving segment of SEGMENT interactions into the user's state. */
  update(user: User, segment: Int32Array): Promise<void>;
  /** Scores one candidate request; returns the candidates' final hidden rows. */
  request(user: User, candidates: Int32Array): Promise<Float32Array>;
  dispose(): void;
}

const candidateRows = (w: Weights, candidates: Int32Array) => gatherRows(w.embedding, W, candidates);

/** Full-history attention: only the item ids are kept; every request recomputes the model over them. */
function fullAttention(w: Weights, device: Device): Served {
  return {
    bytes: (u) => u.history.length * 4,
    update: async (u, segment) => { u.history.push(...segment); },
    request: async (u, candidates) => {
      const ids = [...u.history, ...candidates];
      return forward(gatherRows(w.embedding, W, ids), ids.length, device, w, { outputRows: candidates.length, stripScale: u.history.length > FULL_DIRECT_MAX });
    },
    dispose: () => undefined,
  };
}

/**
 * Per-user K/V of every layer for the whole history, resident as tensors. Updates run the new
 * segment bottom-right causally over the cache and append its K/V; a request's candidates attend
 * the cache and the request's own candidates in one exact softmax (multiStreamAttention, 'union' of
 * the cache and the candidates' keys: the cache is never copied per request).
 */
function kvCache(w: Weights, device: Device, users: User[], rng: Rng): Served {
  // Contents are drawn at the cache's exact shape (a 100k prefill would cost hours here); cost does not depend on values.
  const cache = new Map<number, LayerKv[]>();
  const resident = new Map<number, { k: Tensor; v: Tensor }[]>();
  const H = MODEL.heads, D = MODEL.headDim;
  const upload = (id: number) => {
    for (const t of resident.get(id) ?? []) { t.k.dispose(); t.v.dispose(); }
    resident.set(id, cache.get(id)!.map((c) => ({ k: tensor(c.k, [c.rows, H, D], { device }), v: tensor(c.v, [c.rows, H, D], { device }) })));
  };
  for (const u of users) {
    cache.set(u.id, Array.from({ length: MODEL.layers }, () => ({ k: rng.floats(u.history.length * W, 1), v: rng.floats(u.history.length * W, 1), rows: u.history.length })));
    upload(u.id);
  }
  return {
    bytes: (u) => cache.get(u.id)!.reduce((a, c) => a + (c.k.length + c.v.length) * 4, 0),
    update: async (u, segment) => {
      const layers = cache.get(u.id)!;
      const kept: LayerKv[] = [];
      await forward(gatherRows(w.embedding, W, segment), segment.length, device, w, { prefix: (l) => layers[l], keep: (l, kv) => { kept[l] = kv; } });
      cache.set(u.id, layers.map((c, l) => ({ k: concatRows(c.k, kept[l].k), v: concatRows(c.v, kept[l].v), rows: c.rows + kept[l].rows })));
      upload(u.id);
      u.history.push(...segment);
    },
    request: async (u, candidates) => {
      const layers = resident.get(u.id)!;
      const C = candidates.length;
      let h = candidateRows(w, candidates);
      for (let l = 0; l < MODEL.layers; l++) {
        const q = tensor(matmul(h, C, w.wq[l], W, W), [C, H, D], { device });
        const k = tensor(matmul(h, C, w.wk[l], W, W), [C, H, D], { device }), v = tensor(matmul(h, C, w.wv[l], W, W), [C, H, D], { device });
        const cached = { k: layers[l].k, v: layers[l].v, kv: { offsets: Int32Array.of(0, layers[l].k.shape[0]) } };
        const own = { k, v, kv: { offsets: Int32Array.of(0, C) } };
        const { output, lse } = await multiStreamAttention(q, { recent: cached, lifecycle: own }, { q: { offsets: Int32Array.of(0, C) }, fusion: 'union' });
        const out = await output.float32();
        for (const t of [q, k, v, output, lse!]) t.dispose();
        h = h.slice();
        for (let i = 0; i < h.length; i++) h[i] += out[i];
      }
      return h;
    },
    dispose: () => {
      for (const layers of resident.values()) for (const t of layers) { t.k.dispose(); t.v.dispose(); }
      cache.clear();
    },
  };
}

/** PerSRec: per-layer K/V of K summary tokens per older segment, plus the recent items' ids. */
function persrec(w: Weights, device: Device, users: User[], rng: Rng): Served {
  const summaries = new Map<number, LayerKv[]>();
  const recentOf = (u: User) => u.history.slice(-RECENT);
  for (const u of users) {
    const n = Math.max(0, Math.floor((u.history.length - RECENT) / SEGMENT)) * MEMORY_TOKENS;
    summaries.set(u.id, Array.from({ length: MODEL.layers }, () => ({ k: rng.floats(n * W, 1), v: rng.floats(n * W, 1), rows: n })));
  }
  return {
    bytes: (u) => summaries.get(u.id)!.reduce((a, c) => a + (c.k.length + c.v.length) * 4, 0) + recentOf(u).length * 4,
    update: async (u, segment) => {
      // S_j M_j against the earlier summaries (preset persrec); the K tokens' K/V join the summaries.
      const layers = summaries.get(u.id)!;
      const rows = segment.length + MEMORY_TOKENS, before = layers[0].rows / MEMORY_TOKENS;
      const h = concatRows(gatherRows(w.embedding, W, segment), w.memoryQueries);
      const roles = Uint8Array.from({ length: rows }, (_, i) => (i < segment.length ? 0 : 1));
      const segments = new Int32Array(rows).fill(before);
      const kvRoles = concatU8(new Uint8Array(layers[0].rows).fill(1), roles);
      const kvSegments = Int32Array.from({ length: layers[0].rows + rows }, (_, i) => (i < layers[0].rows ? Math.floor(i / MEMORY_TOKENS) : before));
      const kept: LayerKv[] = [];
      await forward(h, rows, device, w, { prefix: (l) => layers[l], qLayout: { segments, roles }, kvLayout: () => ({ segments: kvSegments, roles: kvRoles }),
        rule: 'persrec', keep: (l, kv) => { kept[l] = kv; } });
      const tail = (a: Float32Array) => a.subarray(segment.length * W);
      summaries.set(u.id, layers.map((c, l) => ({ k: concatRows(c.k, tail(kept[l].k)), v: concatRows(c.v, tail(kept[l].v)), rows: c.rows + MEMORY_TOKENS })));
      u.history.push(...segment);
    },
    request: async (u, candidates) => {
      const recent = recentOf(u);
      const layers = summaries.get(u.id)!;
      const h = concatRows(gatherRows(w.embedding, W, recent), candidateRows(w, candidates));
      return forward(h, recent.length + candidates.length, device, w, { prefix: (l) => layers[l], outputRows: candidates.length });
    },
    dispose: () => summaries.clear(),
  };
}

function concatU8(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a); out.set(b, a.length);
  return out;
}

/** Rec2PM: Preference Memory in a MemoryBank (C tokens, overwrite; or C per segment, append) plus the current segment's ids. */
async function rec2pm(mode: 'overwrite' | 'append', w: Weights, device: Device, users: User[], rng: Rng): Promise<Served> {
  const maxSegments = Math.ceil((Math.max(...users.map((u) => u.history.length)) + 8 * SEGMENT) / SEGMENT);
  const slots = mode === 'overwrite' ? MEMORY_TOKENS : maxSegments * MEMORY_TOKENS;
  const bank = new MemoryBank({ users: users.length, slots, width: W, device, mode, overflow: 'error' });
  const working = new Map<number, number[]>();  // the interactions since the last memory update
  // The memory as it stands after the history's complete segments (drawn at its exact shape), and
  // the interactions of the incomplete one.
  for (const [i, u] of users.entries()) {
    const count = mode === 'overwrite' ? MEMORY_TOKENS : Math.floor(u.history.length / SEGMENT) * MEMORY_TOKENS;
    const tokens = tensor(rng.floats(count * W, 1), [count, W], { device });
    await bank.update(Int32Array.of(i), tokens, Int32Array.of(count));
    tokens.dispose();
    working.set(u.id, u.history.slice(u.history.length - (u.history.length % SEGMENT)));
  }
  const slot = (u: User) => users.indexOf(u);
  return {
    bytes: (u) => bank.lengths(Int32Array.of(slot(u)))[0] * W * 4 + working.get(u.id)!.length * 4,
    update: async (u, segment) => {
      // [M_{k-1} (overwrite) or M_0 ... M_{k-1} (append); S_k; Q] under rec2pm-update; Q's outputs become the new memory.
      const ids = Int32Array.of(slot(u));
      const items = tensor(gatherRows(w.embedding, W, segment), [segment.length, W], { device });
      const queries = tensor(w.memoryQueries, [MEMORY_TOKENS, W], { device });
      const { hidden, layout } = await bank.assemble(ids, items, Int32Array.of(0, segment.length), queries);
      const rows = hidden.shape[0];
      const out = await forward(await hidden.float32(), rows, device, w, { qLayout: layout, kvLayout: () => ({ segments: layout.segments, roles: layout.roles }), rule: 'rec2pm-update' });
      const result = tensor(out, [rows, W], { device });
      await bank.updateFrom(ids, result, layout, { role: 'memory', last: MEMORY_TOKENS });
      for (const t of [items, queries, hidden, result]) t.dispose();
      u.history.push(...segment);
      working.set(u.id, []);
    },
    request: async (u, candidates) => {
      // [memory; working items; candidates], causal: the candidates see the memory and the working segment.
      const { tokens } = await bank.read(Int32Array.of(slot(u)));
      const memory = await tokens.float32();
      tokens.dispose();
      const items = working.get(u.id)!;
      const h = concatRows(concatRows(memory, gatherRows(w.embedding, W, items)), candidateRows(w, candidates));
      return forward(h, memory.length / W + items.length + candidates.length, device, w, { outputRows: candidates.length });
    },
    dispose: () => bank.dispose(),
  };
}

/** GEMs: recent (last 256) and mid-term (257 ... 5,000, indexer top-k) item ids, lifecycle tokens in a MemoryBank. */
async function gems(w: Weights, device: Device, users: User[], rng: Rng): Promise<Served> {
  const bank = new MemoryBank({ users: users.length, slots: LIFECYCLE_SLOTS, width: W, device, mode: 'append', overflow: 'evict-oldest' });
  for (const [i, u] of users.entries()) {
    const count = Math.min(LIFECYCLE_SLOTS, Math.floor(Math.max(0, u.history.length - MID_TERM_END) / SEGMENT) * MEMORY_TOKENS);
    if (count === 0) continue;
    const tokens = tensor(rng.floats(count * W, 1), [count, W], { device });
    await bank.update(Int32Array.of(i), tokens, Int32Array.of(count));
    tokens.dispose();
  }
  const slot = (u: User) => users.indexOf(u);
  const H = MODEL.heads, D = MODEL.headDim;
  return {
    bytes: (u) => Math.min(u.history.length, MID_TERM_END) * 4 + bank.lengths(Int32Array.of(slot(u)))[0] * W * 4,
    update: async (u, segment) => {
      // The interactions leaving the mid-term window are compressed to C lifecycle tokens (chunk
      // means of their embeddings: a stand-in for GEMs' offline compressor) and appended to the bank.
      const leaving = u.history.slice(Math.max(0, u.history.length - MID_TERM_END), Math.max(0, u.history.length + segment.length - MID_TERM_END));
      if (leaving.length > 0) {
        const emb = gatherRows(w.embedding, W, leaving);
        const tokens = new Float32Array(MEMORY_TOKENS * W);
        const per = Math.ceil(leaving.length / MEMORY_TOKENS);
        for (let r = 0; r < leaving.length; r++)
          for (let c = 0; c < W; c++) tokens[Math.floor(r / per) * W + c] += emb[r * W + c] / per;
        const t = tensor(tokens, [MEMORY_TOKENS, W], { device });
        await bank.update(Int32Array.of(slot(u)), t, Int32Array.of(MEMORY_TOKENS));
        t.dispose();
      }
      u.history.push(...segment);
    },
    request: async (u, candidates) => {
      const n = u.history.length, C = candidates.length;
      const recentIds = u.history.slice(Math.max(0, n - RECENT));
      const midIds = u.history.slice(Math.max(0, n - MID_TERM_END), Math.max(0, n - RECENT));
      const { tokens } = await bank.read(Int32Array.of(slot(u)));
      const lifecycle = await tokens.float32();
      tokens.dispose();
      const lifeRows = lifecycle.length / W;
      const made: Tensor[] = [];
      const put = (a: Float32Array, shape: number[]) => { const t = tensor(a, shape, { device }); made.push(t); return t; };
      const qLayout = { offsets: Int32Array.of(0, C) };
      let h = candidateRows(w, candidates);
      const indexerK = midIds.length ? put(gatherRows(w.catalogIndexerK, INDEXER.dim, midIds), [midIds.length, INDEXER.dim]) : undefined;
      for (let l = 0; l < MODEL.layers; l++) {
        const q = put(matmul(h, C, w.wq[l], W, W), [C, H, D]);
        const streams: Parameters<typeof multiStreamAttention>[1] = {
          recent: { k: put(gatherRows(w.catalogK[l], W, recentIds), [recentIds.length, H, D]), v: put(gatherRows(w.catalogV[l], W, recentIds), [recentIds.length, H, D]),
            kv: { offsets: Int32Array.of(0, recentIds.length) } },
        };
        if (midIds.length > 0)
          streams.midTerm = { k: put(gatherRows(w.catalogK[l], W, midIds), [midIds.length, H, D]), v: put(gatherRows(w.catalogV[l], W, midIds), [midIds.length, H, D]),
            kv: { offsets: Int32Array.of(0, midIds.length) }, topK: TOP_K,
            indexer: { q: put(matmul(h, C, w.indexerQ[l], W, INDEXER.heads * INDEXER.dim), [C, INDEXER.heads, INDEXER.dim]), k: indexerK!,
              w: put(matmul(h, C, w.indexerW[l], W, INDEXER.heads), [C, INDEXER.heads]) } };
        if (lifeRows > 0)
          streams.lifecycle = { k: put(matmul(lifecycle, lifeRows, w.wk[l], W, W), [lifeRows, H, D]), v: put(matmul(lifecycle, lifeRows, w.wv[l], W, W), [lifeRows, H, D]),
            kv: { offsets: Int32Array.of(0, lifeRows) } };
        const { output } = await multiStreamAttention(q, streams, { q: qLayout, fusion: 'sum' });
        const out = await output.float32();
        output.dispose();
        h = h.slice();
        for (let i = 0; i < h.length; i++) h[i] += out[i];
      }
      for (const t of made) t.dispose();
      return h;
    },
    dispose: () => bank.dispose(),
  };
}

// ---------------------------------------------------------------- measurement, table, JSON, SVG

interface Row {
  method: Method; historyLength: number; bytesPerUser: number; p50Ms: number; p99Ms: number; requestsPerSecond: number; updateMsPerSegment: number;
  users: number; requests: number; segmentsUpdated: number; note?: string;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const at = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[at];
}

async function serve(method: Method, w: Weights, device: Device, users: User[], rng: Rng): Promise<Served> {
  switch (method) {
    case 'full-attention': return fullAttention(w, device);
    case 'kv-cache': return kvCache(w, device, users, rng);
    case 'persrec': return persrec(w, device, users, rng);
    case 'rec2pm-overwrite': return rec2pm('overwrite', w, device, users, rng);
    case 'rec2pm-append': return rec2pm('append', w, device, users, rng);
    case 'gems': return gems(w, device, users, rng);
  }
}

async function measure(method: Method, N: number, w: Weights, zipf: Zipf, device: Device): Promise<Row> {
  const plan = PLAN[N];
  const rng = new Rng(N + METHODS.indexOf(method) * 7);
  // The same users for every method: histories drawn from one seed per length.
  const userRng = new Rng(N);
  const users: User[] = Array.from({ length: plan.users }, (_, id) => ({ id, history: Array.from(zipf.history(userRng, N)) }));
  const served = await serve(method, w, device, users, rng);
  const bytes = users.reduce((a, u) => a + served.bytes(u), 0) / users.length;
  // New interactions arrive in segments: each user's next `updates` segments, each timed.
  const updateMs: number[] = [];
  for (let s = 0; s < plan.updates; s++)
    for (const u of users) {
      const segment = zipf.history(userRng, SEGMENT);
      const started = performance.now();
      await served.update(u, segment);
      updateMs.push(performance.now() - started);
    }
  // Requests of 4-16 candidates, users taken in turn; one warm-up request first.
  const requests = method === 'full-attention' ? plan.fullRequests : plan.requests;
  const latency: number[] = [];
  if (!(method === 'full-attention' && N > 1_000)) await served.request(users[0], zipf.history(rng, 4));
  let total = 0;
  for (let r = 0; r < requests; r++) {
    const u = users[r % users.length];
    const candidates = zipf.history(rng, 4 + Math.floor(rng.next() * 13));
    scaledExtraMs = 0;
    const started = performance.now();
    await served.request(u, candidates);
    const ms = performance.now() - started + scaledExtraMs;
    latency.push(ms);
    total += ms;
  }
  served.dispose();
  latency.sort((a, b) => a - b);
  const row: Row = {
    method, historyLength: N, bytesPerUser: Math.round(bytes), p50Ms: percentile(latency, 50), p99Ms: percentile(latency, 99),
    requestsPerSecond: requests / (total / 1000), updateMsPerSegment: updateMs.reduce((a, b) => a + b, 0) / updateMs.length,
    users: users.length, requests, segmentsUpdated: updateMs.length,
  };
  if (method === 'full-attention' && N > FULL_DIRECT_MAX)
    row.note = `causal pass timed on its last ${STRIP} query rows, scaled by allowed pairs`;
  if (method === 'kv-cache' || method === 'persrec') row.note = (row.note ? row.note + '; ' : '') + 'cache contents drawn at their exact shape (no full prefill)';
  return row;
}

const fmtBytes = (b: number) => (b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} KB` : `${b} B`);
const fmtMs = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));

function svgChart(rows: Row[]): string {
  const panels: { title: string; value: (r: Row) => number; unit: string }[] = [
    { title: 'p50 request latency (ms, log scale)', value: (r) => r.p50Ms, unit: 'ms' },
    { title: 'bytes stored per user (log scale)', value: (r) => r.bytesPerUser, unit: 'B' },
  ];
  const colors = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#b07aa1'];
  const width = 900, panelH = 260, top = 40, left = 70, barW = 18, groupW = METHODS.length * barW + 40;
  let body = '';
  panels.forEach((p, pi) => {
    const y0 = top + pi * (panelH + 70);
    const values = rows.map(p.value).filter((v) => v > 0);
    const lo = Math.floor(Math.log10(Math.min(...values))), hi = Math.ceil(Math.log10(Math.max(...values)));
    const yOf = (v: number) => y0 + panelH - ((Math.log10(v) - lo) / Math.max(1, hi - lo)) * panelH;
    body += `<text x="${left}" y="${y0 - 12}" font-size="14" font-weight="bold">${p.title}</text>\n`;
    for (let e = lo; e <= hi; e++)
      body += `<line x1="${left}" x2="${width - 20}" y1="${yOf(10 ** e)}" y2="${yOf(10 ** e)}" stroke="#ddd"/><text x="${left - 6}" y="${yOf(10 ** e) + 4}" font-size="11" text-anchor="end">1e${e}</text>\n`;
    HISTORY_LENGTHS.forEach((N, gi) => {
      const gx = left + 20 + gi * (groupW + 60);
      body += `<text x="${gx + groupW / 2 - 20}" y="${y0 + panelH + 18}" font-size="12" text-anchor="middle">history ${N.toLocaleString('en-US')}</text>\n`;
      METHODS.forEach((m, mi) => {
        const r = rows.find((x) => x.method === m && x.historyLength === N);
        if (!r || !(p.value(r) > 0)) return;
        const y = yOf(p.value(r));
        body += `<rect x="${gx + mi * barW}" y="${y.toFixed(1)}" width="${barW - 3}" height="${(y0 + panelH - y).toFixed(1)}" fill="${colors[mi]}"><title>${m} @ ${N}: ${p.value(r).toPrecision(4)} ${p.unit}</title></rect>\n`;
      });
    });
  });
  const legendY = top + 2 * (panelH + 70) - 20;
  METHODS.forEach((m, mi) => { body += `<rect x="${left + mi * 135}" y="${legendY}" width="12" height="12" fill="${colors[mi]}"/><text x="${left + mi * 135 + 16}" y="${legendY + 11}" font-size="12">${m}</text>\n`; });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${legendY + 30}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${body}</svg>\n`;
}

async function main() {
  const info = backends();
  const device: Device = deviceArg === 'cuda' || deviceArg === 'cpu' ? deviceArg : info.cuda.available && !info.cuda.emulated ? 'cuda' : 'cpu';
  const started = Date.now();
  console.log(`lifelong-kernels bench: lifelong serving${quick ? ' (--quick)' : ''} on ${device}, ${os.cpus().length} CPU threads (load average ${os.loadavg()[0].toFixed(1)})`);
  console.log(`model: ${MODEL.layers} layers, ${MODEL.heads} heads x ${MODEL.headDim} (width ${W}), float32; catalog ${MODEL.catalogItems} items, Zipf s = ${MODEL.zipfExponent}; segments of ${SEGMENT}`);
  console.log(`users / requests per history length: ${HISTORY_LENGTHS.map((N) => `${N}: ${PLAN[N].users} / ${PLAN[N].requests} (full attention ${PLAN[N].fullRequests})`).join('; ')}\n`);
  const rng = new Rng(2026);
  const weights = makeWeights(rng);
  const zipf = new Zipf(MODEL.catalogItems, MODEL.zipfExponent);
  const rows: Row[] = [];
  console.log('method            history   bytes/user     p50 ms     p99 ms   requests/s  update ms/segment');
  for (const N of HISTORY_LENGTHS)
    for (const method of METHODS) {
      const r = await measure(method, N, weights, zipf, device);
      rows.push(r);
      console.log(`${method.padEnd(17)} ${String(N).padStart(7)} ${fmtBytes(r.bytesPerUser).padStart(12)} ${fmtMs(r.p50Ms).padStart(10)} ${fmtMs(r.p99Ms).padStart(10)} ${r.requestsPerSecond.toFixed(2).padStart(12)} ${fmtMs(r.updateMsPerSegment).padStart(18)}${r.note ? '   (' + r.note + ')' : ''}`);
    }
  const seconds = (Date.now() - started) / 1000;
  console.log(`\n${seconds.toFixed(0)} s in all`);
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const file = outArg ? path.resolve(outArg) : path.join(dir, `serving-${quick ? 'quick-' : ''}${stamp}.json`);
  fs.writeFileSync(file, JSON.stringify({
    bench: 'serving', date: new Date().toISOString(), quick, device, seconds,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, loadAverage: os.loadavg(), cuda: info.cuda.devices.map((d) => d.name) },
    model: { ...MODEL, segment: SEGMENT, memoryTokens: MEMORY_TOKENS, recent: RECENT, midTermEnd: MID_TERM_END, topK: TOP_K, indexer: INDEXER, lifecycleSlots: LIFECYCLE_SLOTS },
    plan: PLAN, results: rows,
  }, null, 2));
  const svg = file.replace(/\.json$/, '.svg');
  fs.writeFileSync(svg, svgChart(rows));
  console.log(`wrote ${path.relative(process.cwd(), file)} and ${path.relative(process.cwd(), svg)}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
