// Rows picked by index: gatherRows (any tensor, rows of dimension 0) and globalRows, which turns the
// per-user key positions of topK / indexedCrossAttention into rows of the packed key tensor.
import { native } from './native';
import { DTYPE_CODE, DType, Tensor, zeroTensor } from './tensor';
import { checkPair, SparseLayout } from './sparse';

// The host copy of an index argument: an Int32Array as given (copied), or an int32 Tensor's elements.
async function hostIndices(value: unknown, name: string): Promise<Int32Array> {
  if (value instanceof Int32Array) return value.slice();
  if (value instanceof Tensor) {
    if (value.dtype !== 'int32') throw new TypeError(`${name}: expected an int32 Tensor, got ${value.dtype}`);
    return (await value.data()) as Int32Array;
  }
  throw new TypeError(`${name}: expected an Int32Array or an int32 Tensor`);
}

/**
 * Row `rows[i]` of `source` (dimension 0) as row i of a new tensor `[rows.length, ...source.shape[1:]]`
 * on `source`'s device; a row index of -1 gives a row of zeros (topK's padding). `rows` is an
 * Int32Array or an int32 Tensor of any shape (read in order). One gather kernel launch.
 */
export async function gatherRows<D extends DType>(source: Tensor<D>, rows: Int32Array | Tensor): Promise<Tensor<D>> {
  if (!(source instanceof Tensor)) throw new TypeError('source: expected a Tensor');
  if (source.disposed) throw new Error('tensor is disposed');
  if (source.shape.length === 0) throw new RangeError('source: a scalar tensor has no rows');
  const held = source.hold();
  try {
    const picked = await hostIndices(rows, 'rows');
    const count = source.shape[0];
    const width = source.shape.slice(1).reduce((a, b) => a * b, 1);
    const srcRow: number[] = [], dstRow: number[] = [];
    for (let i = 0; i < picked.length; i++) {
      const r = picked[i];
      if (r < -1 || r >= count) throw new RangeError(`rows: entry ${i} = ${r} is outside [-1, ${count}) (source rows)`);
      if (r >= 0) { srcRow.push(r); dstRow.push(i); }
    }
    const out = zeroTensor(source.dtype, [picked.length, ...source.shape.slice(1)], source.device);
    if (width === 0 || srcRow.length === 0) return out;
    try {
      await native().gatherRows({
        device: source.device,
        // Without a blend the gather copies rows bit for bit, so int32 rows travel as 4-byte float32 elements.
        dtype: DTYPE_CODE[source.dtype === 'int32' ? 'float32' : source.dtype], width,
        sources: [held], dst: out.storage(),
        srcSel: new Uint8Array(srcRow.length), srcRow: Int32Array.from(srcRow), dstRow: Int32Array.from(dstRow),
      });
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  } finally {
    held.dispose();
  }
}

/**
 * The packed key rows that per-user key positions point at: `indices` is `[Nq, K]` (topK's or
 * indexedCrossAttention's `indices`, positions inside each query's own key sequence, -1 = none) and
 * the layout says which user each query and key row belongs to (`{ qOffsets, kOffsets }` or
 * `{ q: { offsets }, kv: { offsets } }`). Entry i·K + j of the result is `kOffsets[user(i)] +
 * indices[i][j]`, or -1; feed it to `gatherRows(k, rows)`.
 */
export async function globalRows(indices: Tensor | Int32Array, layout: SparseLayout): Promise<Int32Array> {
  const idx = await hostIndices(indices, 'indices');
  if (indices instanceof Tensor && indices.shape.length !== 2) throw new RangeError(`indices: expected a [Nq, K] tensor, got [${indices.shape.join(', ')}]`);
  if (layout === null || typeof layout !== 'object') throw new TypeError('layout: expected { qOffsets, kOffsets } or { q: { offsets }, kv: { offsets } }');
  const qOffsets = 'qOffsets' in layout ? layout.qOffsets : layout.q?.offsets;
  const nq = qOffsets instanceof Int32Array && qOffsets.length > 0 ? qOffsets[qOffsets.length - 1] : 0;
  const kOffsets = 'kOffsets' in layout ? layout.kOffsets : layout.kv?.offsets;
  const tk = kOffsets instanceof Int32Array && kOffsets.length > 0 ? kOffsets[kOffsets.length - 1] : 0;
  const { q, k } = checkPair(layout, nq, tk);
  if (indices instanceof Tensor && indices.shape[0] !== nq) throw new RangeError(`indices: ${indices.shape[0]} rows for ${nq} queries`);
  if (nq === 0 ? idx.length !== 0 : idx.length % nq !== 0)
    throw new RangeError(`indices: ${idx.length} entries are not K per query for ${nq} queries`);
  const K = nq === 0 ? 0 : idx.length / nq;
  const rows = new Int32Array(idx.length);
  for (let b = 0; b < q.batch; b++) {
    const base = k.offsets[b], length = k.offsets[b + 1] - base;
    for (let i = q.offsets[b]; i < q.offsets[b + 1]; i++)
      for (let j = 0; j < K; j++) {
        const x = idx[i * K + j];
        if (x < -1 || x >= length) throw new RangeError(`indices: [${i}][${j}] = ${x} is outside [-1, ${length}) (user ${b}'s keys)`);
        rows[i * K + j] = x < 0 ? -1 : base + x;
      }
  }
  return rows;
}
