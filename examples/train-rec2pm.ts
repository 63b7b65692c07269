// `npm run example:train`: a small Rec2PM-style model trained end to end with this package's attention
// forward and backward kernels; everything else (embeddings, projections, loss, Adam) is plain
// TypeScript. Synthetic users: segment 0 holds one "taste" item (0..3) among noise, the later
// segments only noise; the next item after the last segment is the taste's answer (4..7). A model
// that sees only recent items cannot know it; one whose Preference Memory carried it can.
//
// Training (Rec2PM's two stages, in one step, jointly):
//   stage 1, rule 'rec2pm-reference', sequence S0 Q S1 Q ... S(n-1) Q T: the Q blocks' outputs are the
//            reference memories M_h (each sees every item so far);
//   stage 2, rule 'rec2pm-update', blocks [M_(h-1); S_h; Q] in parallel (M_(h-1) from stage 1), the
//            last block with the target T: next-item loss at T, and each block's new memory is
//            supervised by stage 1's M_h (mean squared error, stage 1's side held constant).
// Inference: a MemoryBank (overwrite) updated segment by segment with 'rec2pm-update', then
// [memory; S(n-1); Q; T] predicts; the baseline predicts from [S(n-1); Q; T] without memory.
// Exits with status 1 when the loss does not fall or memory does not beat the baseline.
import { maskedAttention, maskedAttentionBackward, MemoryBank, tensor } from 'lifelong-kernels';
import type { PresetName } from 'lifelong-kernels';

const VOCAB = 40, TASTES = 4, ANSWER0 = 4, NOISE0 = 8;
const WIDTH = 16, SLOTS = 2;                 // hidden width (one head of D = 16), memory tokens C
const SEGMENTS = 4, ITEMS_PER_SEGMENT = 6;
const BATCH = 32, STEPS = Number(process.env.TRAIN_STEPS ?? 160), LR = 0.01, MEMORY_WEIGHT = 1;
const ROLE_ITEM = 0, ROLE_MEMORY = 1, ROLE_TARGET = 2;

// ------------------------------------------------------------------ data

let seed = 12345;
const rand = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed / 4294967296; };
const randInt = (n: number) => Math.floor(rand() * n);

interface User { segments: number[][]; answer: number }
function makeUser(): User {
  const taste = randInt(TASTES);
  const segments = Array.from({ length: SEGMENTS }, () => Array.from({ length: ITEMS_PER_SEGMENT }, () => NOISE0 + randInt(VOCAB - NOISE0)));
  segments[0][randInt(ITEMS_PER_SEGMENT)] = taste;
  return { segments, answer: ANSWER0 + taste };
}

// ------------------------------------------------------------------ parameters, Adam

const randn = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
const init = (n: number, s: number) => Float32Array.from({ length: n }, () => randn() * s);
const params = {
  embed: init(VOCAB * WIDTH, 0.5), query: init(SLOTS * WIDTH, 0.5), target: init(WIDTH, 0.5),
  wq: init(WIDTH * WIDTH, 1 / Math.sqrt(WIDTH)), wk: init(WIDTH * WIDTH, 1 / Math.sqrt(WIDTH)), wv: init(WIDTH * WIDTH, 1 / Math.sqrt(WIDTH)),
};
type Params = typeof params;
type Grads = { [K in keyof Params]: Float32Array };
const zeroGrads = (): Grads => Object.fromEntries(Object.entries(params).map(([k, v]) => [k, new Float32Array(v.length)])) as Grads;
const adam = { m: zeroGrads(), v: zeroGrads(), t: 0 };
function adamStep(g: Grads) {
  adam.t++;
  for (const key of Object.keys(params) as (keyof Params)[]) {
    const p = params[key], m = adam.m[key], v = adam.v[key], gr = g[key];
    for (let i = 0; i < p.length; i++) {
      m[i] = 0.9 * m[i] + 0.1 * gr[i];
      v[i] = 0.999 * v[i] + 0.001 * gr[i] * gr[i];
      p[i] -= LR * (m[i] / (1 - 0.9 ** adam.t)) / (Math.sqrt(v[i] / (1 - 0.999 ** adam.t)) + 1e-8);
    }
  }
}

// ------------------------------------------------------------------ dense helpers ([rows, WIDTH] row-major)

/** x [n, W] · w [W, W] */
function project(x: Float32Array, w: Float32Array): Float32Array {
  const n = x.length / WIDTH, out = new Float32Array(x.length);
  for (let r = 0; r < n; r++)
    for (let i = 0; i < WIDTH; i++) {
      const a = x[r * WIDTH + i];
      for (let j = 0; j < WIDTH; j++) out[r * WIDTH + j] += a * w[i * WIDTH + j];
    }
  return out;
}
/** dx += dy · wᵀ, dw += xᵀ · dy */
function projectBackward(x: Float32Array, w: Float32Array, dy: Float32Array, dx: Float32Array, dw: Float32Array) {
  const n = x.length / WIDTH;
  for (let r = 0; r < n; r++)
    for (let i = 0; i < WIDTH; i++) {
      let s = 0;
      const a = x[r * WIDTH + i];
      for (let j = 0; j < WIDTH; j++) { s += dy[r * WIDTH + j] * w[i * WIDTH + j]; dw[i * WIDTH + j] += a * dy[r * WIDTH + j]; }
      dx[r * WIDTH + i] += s;
    }
}

// ------------------------------------------------------------------ one attention layer: h = x + attn(x Wq, x Wk, x Wv)

interface Layout { offsets: Int32Array; segments: Int32Array; roles: Uint8Array }
interface LayerCache { x: Float32Array; q: Float32Array; k: Float32Array; v: Float32Array; out: Float32Array; lse: Float32Array; h: Float32Array }

async function layerForward(x: Float32Array, layout: Layout, rule: PresetName): Promise<LayerCache> {
  const T = x.length / WIDTH;
  const q = project(x, params.wq), k = project(x, params.wk), v = project(x, params.wv);
  const shape = [T, 1, WIDTH];
  const { output, lse } = await maskedAttention(tensor(q, shape), tensor(k, shape), tensor(v, shape), { q: layout, rule, returnLse: true });
  const out = await output.float32(), lseValues = await lse!.float32();
  output.dispose(); lse!.dispose();
  const h = new Float32Array(x.length);
  for (let i = 0; i < h.length; i++) h[i] = x[i] + out[i];
  return { x, q, k, v, out, lse: lseValues, h };
}

/** Returns dx given dh; adds the projections' gradients into g. */
async function layerBackward(c: LayerCache, dh: Float32Array, layout: Layout, rule: PresetName, g: Grads): Promise<Float32Array> {
  const T = c.x.length / WIDTH, shape = [T, 1, WIDTH];
  const t = (a: Float32Array, s = shape) => tensor(a, s);
  const grads = await maskedAttentionBackward({ q: t(c.q), k: t(c.k), v: t(c.v), output: t(c.out), lse: t(c.lse, [T, 1]), dOutput: t(dh) }, { q: layout, rule });
  const dq = await grads.dq.float32(), dk = await grads.dk.float32(), dv = await grads.dv.float32();
  for (const x of [grads.dq, grads.dk, grads.dv]) x.dispose();
  const dx = Float32Array.from(dh); // residual
  projectBackward(c.x, params.wq, dq, dx, g.wq);
  projectBackward(c.x, params.wk, dk, dx, g.wk);
  projectBackward(c.x, params.wv, dv, dx, g.wv);
  return dx;
}

// ------------------------------------------------------------------ sequences

/** Where each input row comes from: an item, a memory query slot, the target token, or a given row. */
type Source = { item: number } | { slot: number } | { target: true } | { row: Float32Array; ref: number };
interface Built { x: Float32Array; layout: Layout; sources: Source[] }

function build(seqs: { source: Source; segment: number; role: number }[][]): Built {
  const sources: Source[] = [], segments: number[] = [], roles: number[] = [];
  const offsets = new Int32Array(seqs.length + 1);
  seqs.forEach((s, b) => { for (const t of s) { sources.push(t.source); segments.push(t.segment); roles.push(t.role); } offsets[b + 1] = sources.length; });
  const x = new Float32Array(sources.length * WIDTH);
  sources.forEach((s, r) => {
    const row = 'item' in s ? params.embed.subarray(s.item * WIDTH, (s.item + 1) * WIDTH)
      : 'slot' in s ? params.query.subarray(s.slot * WIDTH, (s.slot + 1) * WIDTH) : 'target' in s ? params.target : s.row;
    x.set(row, r * WIDTH);
  });
  return { x, layout: { offsets, segments: Int32Array.from(segments), roles: Uint8Array.from(roles) }, sources };
}

/** Scatters dx back into the embeddings; rows that came from another layer's output go to `toRef`. */
function scatterInput(b: Built, dx: Float32Array, g: Grads, toRef?: Float32Array) {
  b.sources.forEach((s, r) => {
    const d = dx.subarray(r * WIDTH, (r + 1) * WIDTH);
    const [dst, at] = 'item' in s ? [g.embed, s.item * WIDTH] : 'slot' in s ? [g.query, s.slot * WIDTH] : 'target' in s ? [g.target, 0] : [toRef!, s.ref * WIDTH];
    for (let i = 0; i < WIDTH; i++) dst[at + i] += d[i];
  });
}

/** Softmax cross-entropy of h · embedᵀ against `answer`; adds dh (scaled by `weight`) and d embed. */
function predictLoss(h: Float32Array, answer: number, weight: number, dh: Float32Array | undefined, g: Grads | undefined): { loss: number; best: number } {
  const logits = new Float64Array(VOCAB);
  for (let w = 0; w < VOCAB; w++) for (let i = 0; i < WIDTH; i++) logits[w] += h[i] * params.embed[w * WIDTH + i];
  const m = Math.max(...logits);
  let z = 0;
  for (const l of logits) z += Math.exp(l - m);
  let best = 0;
  for (let w = 1; w < VOCAB; w++) if (logits[w] > logits[best]) best = w;
  if (dh && g) {
    for (let w = 0; w < VOCAB; w++) {
      const dl = weight * (Math.exp(logits[w] - m) / z - (w === answer ? 1 : 0));
      for (let i = 0; i < WIDTH; i++) { dh[i] += dl * params.embed[w * WIDTH + i]; g.embed[w * WIDTH + i] += dl * h[i]; }
    }
  }
  return { loss: m + Math.log(z) - logits[answer], best };
}

const itemsOf = (items: number[], segment: number) => items.map((item) => ({ source: { item }, segment, role: ROLE_ITEM }));
const queriesOf = (segment: number) => Array.from({ length: SLOTS }, (_, slot) => ({ source: { slot }, segment, role: ROLE_MEMORY }));
const targetOf = (segment: number) => ({ source: { target: true as const }, segment, role: ROLE_TARGET });

// ------------------------------------------------------------------ one training step

async function trainStep(users: User[]): Promise<{ loss: number; memoryLoss: number }> {
  const g = zeroGrads();
  // Stage 1: S0 Q S1 Q ... S(n-1) Q T per user.
  const s1 = build(users.map((u) => [...u.segments.flatMap((items, h) => [...itemsOf(items, h), ...queriesOf(h)]), targetOf(SEGMENTS - 1)]));
  const c1 = await layerForward(s1.x, s1.layout, 'rec2pm-reference');
  const perUser1 = SEGMENTS * (ITEMS_PER_SEGMENT + SLOTS) + 1;
  const memoryRow = (b: number, h: number, slot: number) => b * perUser1 + h * (ITEMS_PER_SEGMENT + SLOTS) + ITEMS_PER_SEGMENT + slot;
  // Stage 2: one sequence per (user, segment): [M_(h-1); S_h; Q] (+ T in the last), in parallel.
  const blocks: { source: Source; segment: number; role: number }[][] = [];
  users.forEach((u, b) => u.segments.forEach((items, h) => {
    const memory = h === 0 ? [] : Array.from({ length: SLOTS }, (_, slot) => {
      const ref = memoryRow(b, h - 1, slot);
      return { source: { row: c1.h.subarray(ref * WIDTH, (ref + 1) * WIDTH), ref }, segment: 0, role: ROLE_MEMORY };
    });
    blocks.push([...memory, ...itemsOf(items, 0), ...queriesOf(0), ...(h === SEGMENTS - 1 ? [targetOf(0)] : [])]);
  }));
  const s2 = build(blocks);
  const c2 = await layerForward(s2.x, s2.layout, 'rec2pm-update');

  const dh1 = new Float32Array(c1.h.length), dh2 = new Float32Array(c2.h.length);
  let loss = 0, memoryLoss = 0;
  const scale = 1 / users.length;
  users.forEach((u, b) => {
    const t1 = (b + 1) * perUser1 - 1;
    loss += 0.5 * predictLoss(c1.h.subarray(t1 * WIDTH, (t1 + 1) * WIDTH), u.answer, 0.5 * scale, dh1.subarray(t1 * WIDTH, (t1 + 1) * WIDTH), g).loss;
    for (let h = 0; h < SEGMENTS; h++) {
      const block = b * SEGMENTS + h, end = s2.layout.offsets[block + 1];
      const last = h === SEGMENTS - 1;
      if (last) loss += 0.5 * predictLoss(c2.h.subarray((end - 1) * WIDTH, end * WIDTH), u.answer, 0.5 * scale, dh2.subarray((end - 1) * WIDTH, end * WIDTH), g).loss;
      // New memory = the block's Q outputs, supervised by stage 1's M_h (held constant).
      const q0 = end - (last ? 1 : 0) - SLOTS;
      for (let slot = 0; slot < SLOTS; slot++)
        for (let i = 0; i < WIDTH; i++) {
          const diff = c2.h[(q0 + slot) * WIDTH + i] - c1.h[memoryRow(b, h, slot) * WIDTH + i];
          memoryLoss += diff * diff / (SLOTS * WIDTH);
          dh2[(q0 + slot) * WIDTH + i] += MEMORY_WEIGHT * scale * 2 * diff / (SLOTS * WIDTH * SEGMENTS);
        }
    }
  });
  const dx2 = await layerBackward(c2, dh2, s2.layout, 'rec2pm-update', g);
  scatterInput(s2, dx2, g, dh1); // memory inputs of stage 2 are stage 1's outputs
  const dx1 = await layerBackward(c1, dh1, s1.layout, 'rec2pm-reference', g);
  scatterInput(s1, dx1, g);
  adamStep(g);
  return { loss: loss * scale, memoryLoss: memoryLoss / (users.length * SEGMENTS) };
}

// ------------------------------------------------------------------ inference with a MemoryBank

async function evaluate(users: User[]): Promise<{ memory: number; recent: number }> {
  const n = users.length, ids = Int32Array.from({ length: n }, (_, i) => i);
  const bank = new MemoryBank({ users: n, slots: SLOTS, width: WIDTH, mode: 'overwrite' });
  const queries = tensor(params.query, [SLOTS, WIDTH]);
  // Segments 0 .. n-2 update the memory: [memory; S_h; Q] with 'rec2pm-update', Q's outputs become it.
  for (let h = 0; h < SEGMENTS - 1; h++) {
    const itemOffsets = Int32Array.from({ length: n + 1 }, (_, i) => i * ITEMS_PER_SEGMENT);
    const items = tensor(Float32Array.from(users.flatMap((u) => u.segments[h].flatMap((it) => Array.from(params.embed.subarray(it * WIDTH, (it + 1) * WIDTH))))), [n * ITEMS_PER_SEGMENT, WIDTH]);
    const { hidden, layout } = await bank.assemble(ids, items, itemOffsets, queries);
    const out = await layerForward(await hidden.float32(), layout, 'rec2pm-update');
    await bank.updateFrom(ids, tensor(out.h, [out.h.length / WIDTH, WIDTH]), layout, { role: 'memory', last: SLOTS });
    hidden.dispose(); items.dispose();
  }
  const { tokens, offsets } = await bank.read(ids);
  const memory = await tokens.float32();
  const last = SEGMENTS - 1;
  const withMemory = build(users.map((u, b) => [
    ...Array.from({ length: offsets[b + 1] - offsets[b] }, (_, r) => ({ source: { row: memory.subarray((offsets[b] + r) * WIDTH, (offsets[b] + r + 1) * WIDTH), ref: 0 }, segment: 0, role: ROLE_MEMORY })),
    ...itemsOf(u.segments[last], 0), ...queriesOf(0), targetOf(0)]));
  const recentOnly = build(users.map((u) => [...itemsOf(u.segments[last], 0), ...queriesOf(0), targetOf(0)]));
  const hits = async (b: Built) => {
    const out = await layerForward(b.x, b.layout, 'rec2pm-update');
    let hit = 0;
    users.forEach((u, i) => { const t = b.layout.offsets[i + 1] - 1; if (predictLoss(out.h.subarray(t * WIDTH, (t + 1) * WIDTH), u.answer, 0, undefined, undefined).best === u.answer) hit++; });
    return hit / n;
  };
  const result = { memory: await hits(withMemory), recent: await hits(recentOnly) };
  bank.dispose(); queries.dispose(); tokens.dispose();
  return result;
}

async function main() {
  const started = Date.now();
  const testUsers = Array.from({ length: 400 }, makeUser);
  const before = await evaluate(testUsers);
  console.log(`before training: next-item hit rate with memory ${(before.memory * 100).toFixed(1)}%, recent items only ${(before.recent * 100).toFixed(1)}%`);
  const losses: number[] = [];
  for (let step = 1; step <= STEPS; step++) {
    const { loss, memoryLoss } = await trainStep(Array.from({ length: BATCH }, makeUser));
    losses.push(loss);
    if (step === 1 || step % 25 === 0) console.log(`step ${String(step).padStart(4)}  next-item loss ${loss.toFixed(3)}  memory loss ${memoryLoss.toFixed(4)}`);
  }
  const after = await evaluate(testUsers);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(losses.slice(0, 10)), final = mean(losses.slice(-10));
  console.log(`loss ${first.toFixed(3)} -> ${final.toFixed(3)} (chance ${Math.log(VOCAB).toFixed(3)})`);
  console.log(`after training (${testUsers.length} held-out users): next-item hit rate with memory (MemoryBank + rec2pm-update) ${(after.memory * 100).toFixed(1)}%, ` +
    `recent items only ${(after.recent * 100).toFixed(1)}% (chance among the ${TASTES} answers: ${(100 / TASTES).toFixed(0)}%)`);
  console.log(`${((Date.now() - started) / 1000).toFixed(1)} s`);
  const ok = final < 0.6 * first && after.memory > after.recent + 0.25;
  if (!ok) { console.error('example:train: the model did not learn the planted long-term signal'); process.exit(1); }
}

main().catch((e) => { console.error(e); process.exit(1); });
