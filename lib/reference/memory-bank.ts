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

  private rowsOf(x: RefRows): Rows {
    const w = this.options.width;
    if (x.shape[1] !== w) throw new RangeError(`width ${x.shape[1]} differs from the bank's ${w}`);
    const out: Rows = [];
    for (let r = 0; r < x.shape[0]; r++) out.push(Array.from({ length: w }, (_, c) => x.data[r * w + c]));
    return out;
  }

  private checkIds(userIds: Int32Array) {
    const seen = new Set<number>();
    for (const u of userIds) {
      if (u < 0 || u >= this.options.users) throw new RangeError(`userIds: ${u} out of range`);
      if (seen.has(u)) throw new RangeError(`userIds: duplicate ${u}`);
      seen.add(u);
    }
  }

  /** Applies per-user new rows; checks everything first so a failure changes nothing. */
  private apply(userIds: Int32Array, perUser: Rows[], blend?: number) {
    this.checkIds(userIds);
    const { slots, mode, overflow = 'error' } = this.options;
    perUser.forEach((rows, i) => {
      if (rows.length > slots) throw new RangeError(`count ${rows.length} > slots ${slots}`);
      if (mode === 'append' && overflow === 'error' && this.memories[userIds[i]].length + rows.length > slots)
        throw new RangeError('overflow');
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
    const rows = this.rowsOf(tokens);
    let at = 0;
    const perUser = Array.from(counts, (c) => rows.slice(at, (at += c)));
    this.apply(userIds, perUser, options.blend);
  }

  updateFrom(userIds: Int32Array, hidden: RefRows, layout: { offsets: Int32Array; roles?: Uint8Array }, select: RefRoleSelect = 'memory', options: { blend?: number } = {}) {
    const rows = this.rowsOf(hidden);
    const role = typeof select === 'string' ? ROLE[select] : ROLE[select.role];
    const last = typeof select === 'string' ? Infinity : select.last;
    const perUser: Rows[] = [];
    for (let b = 0; b + 1 < layout.offsets.length; b++) {
      const picked: Rows = [];
      for (let t = layout.offsets[b]; t < layout.offsets[b + 1]; t++) if ((layout.roles ? layout.roles[t] : 0) === role) picked.push(rows[t]);
      perUser.push(picked.slice(Math.max(0, picked.length - last)));
    }
    this.apply(userIds, perUser, options.blend);
  }

  read(userIds: Int32Array): { tokens: { data: Float64Array; shape: number[] }; offsets: Int32Array } {
    const offsets = new Int32Array(userIds.length + 1);
    const all: Rows = [];
    userIds.forEach((u, i) => { all.push(...this.memories[u]); offsets[i + 1] = all.length; });
    return { tokens: { data: Float64Array.from(all.flat()), shape: [all.length, this.options.width] }, offsets };
  }

  assemble(userIds: Int32Array, items: RefRows, itemOffsets: Int32Array, queries: RefRows) {
    const itemRows = this.rowsOf(items), queryRows = this.rowsOf(queries);
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
    return userIds ? userIds.map((u) => this.memories[u].length) : Int32Array.from(this.memories, (m) => m.length);
  }

  reset(userIds: Int32Array) {
    for (const u of userIds) this.memories[u] = [];
  }
}
