// One user's memory as a self-describing binary record (README, "RedisMemoryStore record format"):
// what RedisMemoryStore keeps under each user's key. The header names the configuration that wrote
// the record, so a store of another width, dtype or mode refuses it instead of misreading it, and
// carries a write generation that the store's compare-and-set checks (see redis-store.ts).
import { randomBytes } from 'crypto';
import { crc32 } from './crc32';

export const RECORD_MAGIC = Buffer.from('LKMR', 'latin1');
export const RECORD_FORMAT_VERSION = 1;
export const RECORD_HEADER_BYTES = 32;
export const RECORD_TRAILER_BYTES = 4;  // CRC-32 of header and payload

export type RecordDType = 'float32' | 'float16' | 'bfloat16';
export type RecordMode = 'overwrite' | 'append';
export type RecordOverflow = 'error' | 'evict-oldest';

const DTYPES: readonly RecordDType[] = ['float32', 'float16', 'bfloat16'];
const MODES: readonly RecordMode[] = ['overwrite', 'append'];
const OVERFLOWS: readonly RecordOverflow[] = ['error', 'evict-oldest'];
export const ELEMENT_BYTES: Record<RecordDType, number> = { float32: 4, float16: 2, bfloat16: 2 };

/** The configuration a record belongs to; every field must match the reading store's. */
export interface RecordConfig {
  slots: number;
  width: number;
  dtype: RecordDType;
  mode: RecordMode;
  overflow: RecordOverflow;
}

export interface DecodedRecord {
  /** The record's first RECORD_HEADER_BYTES bytes: what a compare-and-set of this record expects. */
  header: Buffer;
  generation: bigint;
  length: number;
  /** length x width elements, oldest token first (a view into the record). */
  payload: Buffer;
}

/** A record is refused: another configuration's, or not a record at all. */
export class MemoryRecordError extends Error {}

export function recordBytes(config: RecordConfig, length: number): number {
  return RECORD_HEADER_BYTES + length * config.width * ELEMENT_BYTES[config.dtype] + RECORD_TRAILER_BYTES;
}

/**
 * The generation a new record gets: one more than the record it replaces, or a random 64-bit value
 * for a user that has none, so a record deleted behind the store's back and created again does not
 * repeat a generation that a writer still in flight has read.
 */
export function nextGeneration(previous: bigint | undefined): bigint {
  if (previous === undefined) return randomBytes(8).readBigUInt64LE(0);
  return (previous + 1n) & 0xffff_ffff_ffff_ffffn;
}

export function encodeRecord(config: RecordConfig, generation: bigint, length: number, payload: Uint8Array): Buffer {
  const size = recordBytes(config, length);
  if (payload.byteLength !== size - RECORD_HEADER_BYTES - RECORD_TRAILER_BYTES)
    throw new RangeError(`payload: ${length} tokens of width ${config.width} ${config.dtype} are ${size - RECORD_HEADER_BYTES - RECORD_TRAILER_BYTES} bytes, got ${payload.byteLength}`);
  const out = Buffer.allocUnsafe(size);
  RECORD_MAGIC.copy(out, 0);
  out.writeUInt16LE(RECORD_FORMAT_VERSION, 4);
  out.writeUInt8(DTYPES.indexOf(config.dtype), 6);
  out.writeUInt8(MODES.indexOf(config.mode), 7);
  out.writeUInt8(OVERFLOWS.indexOf(config.overflow), 8);
  out.fill(0, 9, 12);
  out.writeUInt32LE(config.width, 12);
  out.writeUInt32LE(config.slots, 16);
  out.writeUInt32LE(length, 20);
  out.writeBigUInt64LE(generation, 24);
  out.set(payload, RECORD_HEADER_BYTES);
  out.writeUInt32LE(crc32(out.subarray(0, size - RECORD_TRAILER_BYTES)) >>> 0, size - RECORD_TRAILER_BYTES);
  return out;
}

/**
 * Checks a record's header against `config` (`what` names the record in messages). With `whole`,
 * `bytes` is the whole record and its size and checksum are checked too; without, it may be only
 * the header (a GETRANGE of it).
 */
export function decodeRecord(bytes: Buffer, config: RecordConfig, what: string, whole = true): DecodedRecord {
  if (bytes.length < RECORD_HEADER_BYTES || !bytes.subarray(0, 4).equals(RECORD_MAGIC))
    throw new MemoryRecordError(`${what}: not a lifelong-kernels memory record (${bytes.length} bytes without the 'LKMR' header)`);
  const version = bytes.readUInt16LE(4);
  if (version !== RECORD_FORMAT_VERSION)
    throw new MemoryRecordError(`${what}: record format version ${version} is not supported (this build reads version ${RECORD_FORMAT_VERSION})`);
  const dtype = DTYPES[bytes.readUInt8(6)], mode = MODES[bytes.readUInt8(7)], overflow = OVERFLOWS[bytes.readUInt8(8)];
  if (dtype === undefined || mode === undefined || overflow === undefined || bytes.readUIntLE(9, 3) !== 0)
    throw new MemoryRecordError(`${what}: corrupt record header`);
  const width = bytes.readUInt32LE(12), slots = bytes.readUInt32LE(16), length = bytes.readUInt32LE(20);
  const found: RecordConfig = { slots, width, dtype, mode, overflow };
  for (const field of ['width', 'dtype', 'mode', 'overflow', 'slots'] as const)
    if (found[field] !== config[field])
      throw new MemoryRecordError(`${what}: the record was written with ${field} ${found[field]}, this store has ${field} ${config[field]} (another configuration's record)`);
  if (length > slots) throw new MemoryRecordError(`${what}: corrupt record header (length ${length} > slots ${slots})`);
  const size = recordBytes(config, length);
  if (whole) {
    if (bytes.length !== size) throw new MemoryRecordError(`${what}: expected ${size} bytes for ${length} tokens, found ${bytes.length} (truncated or corrupt record)`);
    if ((crc32(bytes.subarray(0, size - RECORD_TRAILER_BYTES)) >>> 0) !== bytes.readUInt32LE(size - RECORD_TRAILER_BYTES))
      throw new MemoryRecordError(`${what}: checksum mismatch (corrupt record)`);
  }
  return {
    header: bytes.subarray(0, RECORD_HEADER_BYTES),
    generation: bytes.readBigUInt64LE(24),
    length,
    payload: whole ? bytes.subarray(RECORD_HEADER_BYTES, size - RECORD_TRAILER_BYTES) : Buffer.alloc(0),
  };
}
