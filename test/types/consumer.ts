// A program written against the shipped declarations (dist/lib/*.d.ts) only: compiled by the oldest
// supported TypeScript (5.0) and the current one by test/types.test.ts. Each @ts-expect-error line
// is a type the declarations must refuse; an accepted one fails the compile.
import {
  fromOrt, layoutFromLengths, maskedAttention, MemoryBank, ROLE, sparseAttention, indexedCrossAttention, Tensor, tensor, toOrt, topK, zeros,
} from '../../dist/lib/index';
import type { OrtModuleLike, TensorData } from '../../dist/lib/index';

export async function consumer(ort: OrtModuleLike): Promise<number> {
  const q = tensor(new Float32Array(16), [2, 2, 4]);
  const f32: Float32Array = await q.data();
  // @ts-expect-error a float32 tensor's elements are not an Int32Array
  const notInt: Int32Array = await q.data();
  const ids = tensor(new Int32Array([1, 2]), [2]);
  const i32: Int32Array = await ids.data();
  const halves = tensor([1, 2], [2], { dtype: 'float16' });
  const bits: Uint16Array = await halves.data();
  const bf: Tensor<'bfloat16'> = zeros([2], { dtype: 'bfloat16' });
  // @ts-expect-error a bfloat16 tensor is not a float32 one
  const notF32: Tensor<'float32'> = bf;
  const into: Float32Array = await q.copyTo(new Float32Array(16));
  const raw: TensorData<'int32'> = i32;

  const layout = layoutFromLengths([2]);
  const withLse = await maskedAttention(q, q, q, { q: layout, rule: 'causal', returnLse: true });
  const lse: Tensor<'float32'> = withLse.lse;  // present: returnLse is true
  const out: Tensor<'float32'> = withLse.output;
  const plain = await maskedAttention(q, q, q, { q: layout });
  // @ts-expect-error without returnLse: true the lse may be absent
  const maybe: Tensor<'float32'> = plain.lse;

  const scores = zeros([2, 4]);
  const { indices, values } = await topK(scores, 2);
  const idx: Tensor<'int32'> = indices;
  const vals: Tensor<'float32'> = values;
  const sparse = await sparseAttention(q, q, q, indices, { q: { offsets: layout.offsets }, kv: { offsets: layout.offsets }, returnLse: true });
  const sparseLse: Tensor<'float32'> = sparse.lse;
  const fused = await indexedCrossAttention(q, q, q, { indexer: { q, k: q.reshape([2, 8]), w: zeros([2, 2]) }, topK: 1, qOffsets: layout.offsets, kOffsets: layout.offsets });
  const fusedIdx: Tensor<'int32'> = fused.indices;

  const view: Tensor<'float32'> = q.reshape([4, 4]).slice(1, 3);
  const wrapped = tensor(new Float32Array(4), [4], { copy: false });
  const o = toOrt(wrapped, ort);
  const back: Tensor = fromOrt(o);
  const bank = new MemoryBank({ users: 1, slots: 2, width: 4, mode: 'overwrite' });
  const described: string = String(bank);
  const role: number = ROLE.memory;
  return f32.length + notInt.length + bits.length + notF32.size + into.length + raw.length + lse.size + out.size + (maybe?.size ?? 0) +
    idx.size + vals.size + sparseLse.size + fusedIdx.size + view.size + back.size + described.length + role;
}
