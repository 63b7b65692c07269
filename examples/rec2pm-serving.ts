// Rec2PM serving: each request brings a batch of users' new interactions; their Preference Memory
// (C tokens per user) is read from a MemoryBank, the model runs over [memory; new items; C query
// tokens] per user, and the queries' outputs become the users' new memory.
//
// The model's dense layers run in onnxruntime-node; attention and memory run here. Tensors cross
// between the two without copies on the CPU: toOrt() / fromOrt() share memory, reshape() is a view.
//
// Run: npm run build:ts && npx tsx examples/rec2pm-serving.ts
import * as ort from 'onnxruntime-node';
import { fromOrt, maskedAttention, MemoryBank, tensor, toOrt } from 'lifelong-kernels';
import { encodeModel, floatTensor } from '../bench/onnx-builder';

const users = 10_000, C = 4, d = 64, H = 4, D = d / H;  // 4 memory tokens of width 64 per user
const batch = 16, steps = 3;

// Deterministic pseudo-random values, so every run prints the same numbers.
let seed = 12345;
function random(n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    out[i] = (seed / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

// The dense layers. In production they come from your exported .onnx file; here they are built in
// memory: one session for the Q / K / V projections, one for the output projection.
async function linear(outputs: string[], din: number, dout: number): Promise<ort.InferenceSession> {
  const model = encodeModel({
    graph: {
      name: 'dense',
      inputs: [{ name: 'X', dims: ['T', din] }],
      outputs: outputs.map((name) => ({ name, dims: ['T', dout] })),
      initializers: outputs.map((name) => floatTensor(`W_${name}`, [din, dout], random(din * dout, 1 / Math.sqrt(din)))),
      nodes: outputs.map((name) => ({ op: 'MatMul', inputs: ['X', `W_${name}`], outputs: [name] })),
    },
  });
  return ort.InferenceSession.create(model, { intraOpNumThreads: 2 });
}

async function main(): Promise<void> {
  const qkv = await linear(['Q', 'K', 'V'], d, d);
  const project = await linear(['Y'], d, d);
  const bank = new MemoryBank({ users, slots: C, width: d, mode: 'overwrite' });
  const queries = tensor(random(C * d, 1), [C, d]);  // the model's C learned query tokens

  for (let step = 0; step < steps; step++) {
    // A request: `batch` users (distinct ids), each with 0 to 40 new interactions embedded as [N, d].
    const userIds = Int32Array.from({ length: batch }, (_, i) => (step * 7 + i * 613) % users);
    const itemOffsets = new Int32Array(batch + 1);
    for (let i = 0; i < batch; i++) itemOffsets[i + 1] = itemOffsets[i] + ((i * 5 + step * 3) % 41);
    const items = tensor(random(itemOffsets[batch] * d, 1), [itemOffsets[batch], d]);

    // [memory; items; queries] per user, packed, with the layout 'rec2pm-update' expects (the
    // query tokens have the memory role: their outputs are the next memory).
    const { hidden, layout } = await bank.assemble(userIds, items, itemOffsets, queries);
    const T = hidden.shape[0];
    const p = await qkv.run({ X: toOrt(hidden, ort) });                        // no copy in
    const [q, k, v] = [p.Q, p.K, p.V].map((x) => fromOrt(x).reshape([T, H, D])); // no copy out; [T, d] viewed as [T, H, D]
    const { output } = await maskedAttention(q, k, v, { q: layout, rule: 'rec2pm-update' });
    const y = (await project.run({ X: toOrt(output.reshape([T, d]), ort) })).Y;
    const hiddenOut = fromOrt(y);
    await bank.updateFrom(userIds, hiddenOut, layout, { role: 'memory', last: C });  // the C query outputs become M
    for (const t of [items, hidden, q, k, v, output, hiddenOut]) t.dispose();
    console.log(`step ${step}: ${batch} users, ${T} tokens, memory lengths ${Array.from(bank.lengths(userIds.subarray(0, 4))).join(' ')} …`);
  }

  const { tokens } = await bank.read(new Int32Array([0]));
  const memory = await tokens.data();
  console.log(`user 0 memory: ${tokens.shape.join(' x ')}, first values ${Array.from(memory.subarray(0, 3), (x) => x.toFixed(4)).join(' ')}`);
  tokens.dispose();
  bank.dispose();
  queries.dispose();
  await qkv.release();
  await project.release();
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
