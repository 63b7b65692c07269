// Layout builders: the packed layouts of SPEC §2 for the sequences the presets are meant for, from
// per-user lengths (so no caller writes offsets / segments / roles by hand).
import { ROLE } from './rules';
import type { Layout } from './layout';

function count(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new TypeError(`${name}: expected an integer, got ${String(value)}`);
  if (value < 0) throw new RangeError(`${name}: expected an integer >= 0, got ${value}`);
  return value;
}

function list<T>(value: unknown, name: string): readonly T[] {
  if (!Array.isArray(value)) throw new TypeError(`${name}: expected an array`);
  return value as T[];
}

// Collects tokens (segment, role) user by user into a packed layout.
class LayoutWriter {
  #segments: number[] = [];
  #roles: number[] = [];
  #offsets: number[] = [0];
  push(segment: number, role: number, n: number): void {
    if (this.#roles.length + n > 2 ** 31 - 1) throw new RangeError('layout: more than 2^31 - 1 tokens');
    for (let i = 0; i < n; i++) { this.#segments.push(segment); this.#roles.push(role); }
  }
  endSequence(): void { this.#offsets.push(this.#roles.length); }
  finish(): Required<Layout> {
    return { offsets: Int32Array.from(this.#offsets), segments: Int32Array.from(this.#segments), roles: Uint8Array.from(this.#roles) };
  }
}

/** `{ offsets }` of a batch whose sequence i has `lengths[i]` tokens (all items, segment 0). */
export function layoutFromLengths(lengths: ArrayLike<number>): { offsets: Int32Array } {
  if (lengths === null || typeof lengths !== 'object' || typeof lengths.length !== 'number')
    throw new TypeError('lengths: expected an array of non-negative integers');
  const offsets = new Int32Array(lengths.length + 1);
  let total = 0;
  for (let i = 0; i < lengths.length; i++) {
    total += count(lengths[i], `lengths[${i}]`);
    if (total > 2 ** 31 - 1) throw new RangeError('lengths: more than 2^31 - 1 tokens in all');
    offsets[i + 1] = total;
  }
  return { offsets };
}

export interface PersrecSequence {
  /** Item tokens of each segment S0 … Sn (one entry per segment). */
  items: readonly number[];
  /** Memory tokens M_j written after each segment but the last. */
  memory: number;
  /** Also a memory block after the last segment (default false). */
  memoryAfterLast?: boolean;
  /** Target tokens at the end, in the last segment (default 0). */
  targets?: number;
}

/** PerSRec `S0 M0 S1 M1 … Sn [targets]` per user, M_j in segment j: for `rule: 'persrec'`. */
export function persrecLayout(sequences: readonly PersrecSequence[]): Required<Layout> {
  const out = new LayoutWriter();
  list<PersrecSequence>(sequences, 'sequences').forEach((s, b) => {
    const name = `sequences[${b}]`;
    if (s === null || typeof s !== 'object') throw new TypeError(`${name}: expected { items, memory, memoryAfterLast?, targets? }`);
    const items = list<number>(s.items, `${name}.items`);
    if (items.length === 0) throw new RangeError(`${name}.items: expected at least one segment`);
    const memory = count(s.memory, `${name}.memory`), targets = count(s.targets ?? 0, `${name}.targets`);
    items.forEach((n, j) => {
      out.push(j, ROLE.item, count(n, `${name}.items[${j}]`));
      if (j < items.length - 1 || s.memoryAfterLast) out.push(j, ROLE.memory, memory);
    });
    out.push(items.length - 1, ROLE.target, targets);
    out.endSequence();
  });
  return out.finish();
}

export interface Rec2pmReferenceSequence {
  /** Item tokens of each segment S0 … Sn. */
  items: readonly number[];
  /** Query (memory-role) tokens after each segment: the model's C Preference Memory queries. */
  queries: number;
}

/** Rec2PM stage 1 `S0 Q S1 Q … Sn Q` per user, each Q in its segment: for `rule: 'rec2pm-reference'`. */
export function rec2pmReferenceLayout(sequences: readonly Rec2pmReferenceSequence[]): Required<Layout> {
  const out = new LayoutWriter();
  list<Rec2pmReferenceSequence>(sequences, 'sequences').forEach((s, b) => {
    const name = `sequences[${b}]`;
    if (s === null || typeof s !== 'object') throw new TypeError(`${name}: expected { items, queries }`);
    const queries = count(s.queries, `${name}.queries`);
    list<number>(s.items, `${name}.items`).forEach((n, j) => {
      out.push(j, ROLE.item, count(n, `${name}.items[${j}]`));
      out.push(j, ROLE.memory, queries);
    });
    out.endSequence();
  });
  return out.finish();
}

export interface Rec2pmUpdateSequence {
  /** Memory tokens carried in (the bank's current length for the user; 0 for a new user). */
  memory: number;
  /** New item tokens S_h. */
  items: number;
  /** Query tokens Q, whose outputs become the new memory. */
  queries: number;
  /** Target tokens after the queries (default 0). */
  targets?: number;
}

/**
 * Rec2PM stage 2 / inference `[memory; S_h; Q; targets]` per user, one segment: for
 * `rule: 'rec2pm-update'` (the layout `MemoryBank.assemble` returns). Queries take the memory role.
 */
export function rec2pmUpdateLayout(sequences: readonly Rec2pmUpdateSequence[]): Required<Layout> {
  const out = new LayoutWriter();
  list<Rec2pmUpdateSequence>(sequences, 'sequences').forEach((s, b) => {
    const name = `sequences[${b}]`;
    if (s === null || typeof s !== 'object') throw new TypeError(`${name}: expected { memory, items, queries, targets? }`);
    out.push(0, ROLE.memory, count(s.memory, `${name}.memory`));
    out.push(0, ROLE.item, count(s.items, `${name}.items`));
    out.push(0, ROLE.memory, count(s.queries, `${name}.queries`));
    out.push(0, ROLE.target, count(s.targets ?? 0, `${name}.targets`));
    out.endSequence();
  });
  return out.finish();
}
