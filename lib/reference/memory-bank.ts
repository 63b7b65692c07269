// Reference MemoryBank (SPEC §4): each user's memory is a plain list of rows, oldest first, in
// float64. No ring buffer, no plans: the oracle for the native and CUDA banks.
type Rows = number[][];
export interface RefRows { data: ArrayLike<number>; shape: readonly number[] }
export type RefRoleSelect = 'item' | 'memory' | 'target' | { role: 'item' | 'memory' | 'target'; last: number };

const ROLE = { item: 0, memory: 1, target: 2 } as const;

export class ReferenceMemoryBank {
  readonly memories: Rows[];
  constructor(readonly options: { users: number; slots: number; width: number; mode: 'overwrite' | 'append'; overflow?: 'error' | 'evict-oldest' }) {
    this.memories = Array.from({ length: options.users }, () => []);
  }

  private rowsOf(x: RefRows, name: string): Rows {
    const w = this.options.width;
    if (x === null || typeof x !== 'object' || x.data === null || typeof x.data !== 'object' || !(Array.isArray(x.shape) || ArrayBuffer.isView(x.shape)))
      throw new TypeError(`${name}: expected { data, shape }`);
    if (x.shape.length !== 2 || !Number.isInteger(x.shape[0]) || x.shape[0] < 0 || x.data.length !== x.shape[0] * x.shape[1])
      throw new RangeError(`${name}: expected a [rows, width] shape matching its data, got [${Array.from(x.shape).join(', ')}]`);
    if (x.shape[1] !== w) throw new RangeError(`${name}: width ${x.shape[1]} differs from the bank's ${w}`);
    const out: Rows = [];
    for (let r = 0; r < x.shape[0]; r++) out.push(Array.from({ length: w }, (_, c) => x.data[r * w + c]));
    return out;
  }

  private checkIds(userIds: Int32Array, allowDuplicates = false) {
    if (!(userIds instanceof Int32Array)) throw new TypeError('userIds: expected an Int32Array');
    const seen = new Set<number>();
    for (const u of userIds) {
      if (u < 0 || u >= this.options.users) throw new RangeError(`userIds: ${u} out of range`);
      if (seen.has(u) && !allowDuplicates) throw new RangeError(`userIds: duplicate ${u}`);
      seen.add(u);
    }
  }

  /** Offsets of `batch` sequences over `rows` rows: from 0, nondecreasing, ending at rows. */
  private checkOffsets(offsets: Int32Array, name: string, batch: number, rows: number) {
    if (!(offsets instanceof Int32Array)) throw new TypeError(`${name}: expected an Int32Array`);
    if (offsets.length !== batch + 1) throw new RangeError(`${name}: expected ${batch + 1} entries, got ${offsets.length}`);
    if (offsets[0] !== 0 || offsets[batch] !== rows) throw new RangeError(`${name}: expected offsets from 0 to ${rows}`);
    for (let b = 0; b < batch; b++) if (offsets[b + 1] < offsets[b]) throw new RangeError(`${name}: must be nondecreasing`);
  }

  /** Applies per-user new rows; checks everything first so a failure changes nothing. */
  private apply(userIds: Int32Array, perUser: Rows[], blend: number | undefined, countName: string) {
    const { slots, mode, overflow = 'error' } = this.options;
    perUser.forEach((rows, i) => {
      if (rows.length > slots) throw new RangeError(`${countName}: count ${rows.length} > slots ${slots}`);
      if (mode === 'append' && overflow === 'error' && this.memories[userIds[i]].length + rows.length > slots)
        throw new RangeError(`${countName}: overflow`);
    });
    perUser.forEach((rows, i) => {
      const u = userIds[i];
      const old = this.memories[u];
      if (mode === 'overwrite') {
        if (blend !== undefined && old.length === rows.length)
          this.memories[u] = rows.map((row, r) => row.map((x, c) => blend * x + (1 - blend) * old[r][c]));
        else this.memories[u] = rows.map((row) => row.slice());
      } else {
        const all = old.concat(rows.map((row) => row.slice()));
        this.memories[u] = all.slice(Math.max(0, all.length - slots));
      }
    });
  }

  update(userIds: Int32Array, tokens: RefRows, counts: Int32Array, options: { blend?: number } = {}) {
    this.checkIds(userIds);
    const rows = this.rowsOf(tokens, 'tokens');
    if (!(counts instanceof Int32Array)) throw new TypeError('counts: expected an Int32Array');
    if (counts.length !== userIds.length) throw new RangeError('counts: expected one per user');
    let total = 0;
    for (const c of counts) {
      if (c < 0) throw new RangeError(`counts: ${c} is negative`);
      total += c;
    }
    if (total !== rows.length) throw new RangeError(`tokens: expected ${total} rows (the sum of counts), got ${rows.length}`);
    let at = 0;
    const perUser = Array.from(counts, (c) => rows.slice(at, (at += c)));
    this.apply(userIds, perUser, options.blend, 'counts');
  }

  updateFrom(userIds: Int32Array, hidden: RefRows, layout: { offsets: Int32Array; roles?: Uint8Array }, select: RefRoleSelect = 'memory', options: { blend?: number } = {}) {
    this.checkIds(userIds);
    const rows = this.rowsOf(hidden, 'hidden');
    if (layout === null || typeof layout !== 'object') throw new TypeError('layout: expected { offsets, roles? }');
    this.checkOffsets(layout.offsets, 'layout.offsets', userIds.length, rows.length);
    const name = typeof select === 'string' ? select : select?.role;
    if (typeof name !== 'string' || !Object.prototype.hasOwnProperty.call(ROLE, name))
      throw new TypeError(`${typeof select === 'string' ? 'select' : 'select.role'}: expected 'item', 'memory' or 'target'`);
    const role = ROLE[name as keyof typeof ROLE];
    const last = typeof select === 'string' ? Infinity : select.last;
    if (typeof select !== 'string' && !(Number.isInteger(last) && last >= 1)) throw new RangeError('select.last: expected an integer >= 1');
    const perUser: Rows[] = [];
    for (let b = 0; b + 1 < layout.offsets.length; b++) {
      const picked: Rows = [];
      for (let t = layout.offsets[b]; t < layout.offsets[b + 1]; t++) if ((layout.roles ? layout.roles[t] : 0) === role) picked.push(rows[t]);
      perUser.push(picked.slice(Math.max(0, picked.length - last)));
    }
    this.apply(userIds, perUser, options.blend, 'select');
  }

  read(userIds: Int32Array): { tokens: { data: Float64Array; shape: number[] }; offsets: Int32Array } {
    this.checkIds(userIds);
    const offsets = new Int32Array(userIds.length + 1);
    const all: Rows = [];
    userIds.forEach((u, i) => { all.push(...this.memories[u]); offsets[i + 1] = all.length; });
    return { tokens: { data: Float64Array.from(all.flat()), shape: [all.length, this.options.width] }, offsets };
  }

  assemble(userIds: Int32Array, items: RefRows, itemOffsets: Int32Array, queries: RefRows):
    { hidden: { data: Float64Array; shape: number[] }; layout: { offsets: Int32Array; segments: Int32Array; roles: Uint8Array } } {
    this.checkIds(userIds);
    const itemRows = this.rowsOf(items, 'items'), queryRows = this.rowsOf(queries, 'queries');
    this.checkOffsets(itemOffsets, 'itemOffsets', userIds.length, itemRows.length);
    const all: Rows = [], roles: number[] = [];
    const offsets = new Int32Array(userIds.length + 1);
    userIds.forEach((u, i) => {
      for (const m of this.memories[u]) { all.push(m); roles.push(1); }
      for (let t = itemOffsets[i]; t < itemOffsets[i + 1]; t++) { all.push(itemRows[t]); roles.push(0); }
      for (const q of queryRows) { all.push(q); roles.push(1); }
      offsets[i + 1] = all.length;
    });
    return {
      hidden: { data: Float64Array.from(all.flat()), shape: [all.length, this.options.width] },
      layout: { offsets, segments: new Int32Array(all.length), roles: Uint8Array.from(roles) },
    };
  }

  lengths(userIds?: Int32Array): Int32Array {
    if (userIds !== undefined) this.checkIds(userIds, true);
    return userIds ? userIds.map((u) => this.memories[u].length) : Int32Array.from(this.memories, (m) => m.length);
  }

  reset(userIds: Int32Array) {
    this.checkIds(userIds);
    for (const u of userIds) this.memories[u] = [];
  }
}
