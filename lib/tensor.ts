// Tensors as Node users know them from onnxruntime-common: dims/type/data, plus a device and an
// explicit dispose(). Storage is native memory (host or GPU) owned by the addon.
import { addonRecord, codes, native, NativeStorage } from './native';
import * as os from 'os';
import { backends, cudaDisabledReason } from './backends';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32';
export type Device = 'cpu' | 'cuda';

/** The typed array holding each dtype's raw elements (float16 / bfloat16: their bits, as in onnxruntime). */
export interface TensorDataTypes {
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int32: Int32Array;
}
export type TensorData<D extends DType = DType> = TensorDataTypes[D];

/** Anything `tensor()` reads: a typed array or number[] of values, or a Buffer / ArrayBuffer of raw bytes. */
export type TensorInput = ArrayLike<number> | ArrayBuffer;

const DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16', 'int32'];
/** The kernels' dtype codes, read from the addon. */
export const DTYPE_CODE: Readonly<Record<DType, number>> = addonRecord(DTYPES, () => codes().dtype);
const DTYPE_BYTES: Readonly<Record<DType, number>> = addonRecord(DTYPES, () => codes().dtypeBytes);

export interface TensorOptions<D extends DType = DType> {
  dtype?: D;
  device?: Device;
  /**
   * false: use the caller's typed array in place (CPU only; the array must be the dtype's own
   * typed array). The tensor keeps the array alive; writes through either are seen by both.
   */
  copy?: boolean;
}

function checkDType(dtype: unknown, name: string): DType {
  if (dtype === 'float32' || dtype === 'float16' || dtype === 'bfloat16' || dtype === 'int32') return dtype;
  throw new TypeError(`${name}: expected 'float32', 'float16', 'bfloat16' or 'int32', got ${String(dtype)}`);
}

function checkDevice(device: unknown, name: string): Device {
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`${name}: expected 'cpu' or 'cuda', got ${String(device)}`);
  if (device === 'cuda') {
    const reason = cudaDisabledReason();
    if (reason) throw new Error(`${name}: CUDA is not available: ${reason}`);
  }
  return device;
}

function checkShape(shape: unknown, name = 'shape'): number[] {
  if (!Array.isArray(shape)) throw new TypeError(`${name}: expected an array of non-negative integers`);
  let size = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0)
      throw new RangeError(`${name}: expected non-negative integers, got [${shape.join(', ')}]`);
    size *= d;
  }
  if (size * 4 > Number.MAX_SAFE_INTEGER) throw new RangeError(`${name}: [${shape.join(', ')}] holds more elements than any device can`);
  return shape.slice();
}

const finalizeTokens = new WeakSet<object>();

// The typed array class of each dtype's raw elements.
function arrayClass(dtype: DType): Float32ArrayConstructor | Uint16ArrayConstructor | Int32ArrayConstructor {
  return dtype === 'float32' ? Float32Array : dtype === 'int32' ? Int32Array : Uint16Array;
}

// Structured clone (postMessage, structuredClone) copies own enumerable properties and would send a
// tensor without its elements, which live in native memory; this getter makes it throw instead.
function refuseClone(this: Tensor): never {
  throw new TypeError(`${this.toString()} cannot be cloned (postMessage, structuredClone, JSON, spread): its elements live in ` +
    'native memory. Send `await t.data()` (transferable) with `t.shape` and `t.dtype`, and call tensor() on the other side.');
}

export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly device: Device;
  readonly size: number;
  #storage: NativeStorage | undefined;

  /** @internal Use `tensor()` / `zeros()`; ops create their outputs themselves. */
  constructor(storage: NativeStorage, dtype: D, shape: readonly number[], device: Device) {
    this.#storage = storage;
    this.dtype = dtype;
    this.shape = Object.freeze(shape.slice());
    this.device = device;
    this.size = shape.reduce((a, b) => a * b, 1);
    Object.defineProperty(this, 'elements', { enumerable: true, get: refuseClone });
    finalizeTokens.add(this);
  }

  /** ONNX Runtime's names for the same facts. */
  get dims(): readonly number[] { return this.shape; }
  get type(): D { return this.dtype; }
  get disposed(): boolean { return this.#storage === undefined; }

  /** @internal The native storage; throws once disposed. */
  storage(): NativeStorage {
    if (!this.#storage) throw new Error('tensor is disposed');
    return this.#storage;
  }

  /**
   * @internal A second handle on this tensor's memory, taken by an op when it is called so that the
   * caller may dispose the tensor right away (SPEC §11); the op disposes the handle when it ends.
   */
  hold(): NativeStorage {
    return this.storage().share();
  }

  /** The raw elements as a new typed array (Uint16Array holds float16 / bfloat16 bits). */
  async data(): Promise<TensorData<D>> {
    const bytes = await this.storage().read();
    return new (arrayClass(this.dtype))(bytes, 0, this.size) as TensorData<D>;
  }

  /**
   * Reads the raw elements into the caller's typed array (the dtype's own class, exactly `size`
   * elements) and returns it: no allocation per read. Do not transfer the array meanwhile.
   */
  async copyTo(array: TensorData<D>): Promise<TensorData<D>> {
    const cls = arrayClass(this.dtype);
    if (!(array instanceof cls)) throw new TypeError(`array: a ${this.dtype} tensor reads into a ${cls.name}, got ${describe(array)}`);
    if (array.length !== this.size) throw new RangeError(`array: expected ${this.size} elements, got ${array.length}`);
    await this.storage().readInto(array);
    return array;
  }

  /** The elements converted to float32 (any float dtype). */
  async float32(): Promise<Float32Array> {
    if (this.dtype === 'int32') throw new TypeError('float32(): tensor dtype is int32, not a float type');
    const raw = await this.data();
    if (raw instanceof Float32Array) return raw;
    return native().toFloat32(raw as Uint16Array, DTYPE_CODE[this.dtype]);
  }

  /** A copy on another device (the same tensor's data, new storage). */
  async to(device: Device): Promise<Tensor<D>> {
    const target = checkDevice(device, 'device');
    return new Tensor(await this.storage().copyTo(target), this.dtype, this.shape, target);
  }

  /**
   * The same elements under another shape (same element count; one dimension may be -1 and is
   * inferred). A view: no copy, the memory is shared and freed when its last view is disposed.
   */
  reshape(shape: readonly number[]): Tensor<D> {
    const storage = this.storage();
    if (!Array.isArray(shape)) throw new TypeError('shape: expected an array of integers');
    const dims = shape.slice();
    const inferred = dims.indexOf(-1);
    if (inferred >= 0 && dims.indexOf(-1, inferred + 1) >= 0) throw new RangeError(`shape: at most one -1, got [${dims.join(', ')}]`);
    if (inferred >= 0) {
      const known = dims.reduce((a, d, i) => (i === inferred ? a : a * d), 1);
      if (!Number.isSafeInteger(known) || known <= 0 || this.size % known !== 0)
        throw new RangeError(`shape: [${dims.join(', ')}] cannot hold the ${this.size} elements of [${this.shape.join(', ')}]`);
      dims[inferred] = this.size / known;
    }
    const checked = checkShape(dims);
    const size = checked.reduce((a, b) => a * b, 1);
    if (size !== this.size) throw new RangeError(`shape: [${checked.join(', ')}] holds ${size} elements, the tensor [${this.shape.join(', ')}] has ${this.size}`);
    return new Tensor(storage.share(), this.dtype, checked, this.device);
  }

  /** Rows [start, end) of dimension 0 as a view (no copy; shares and keeps alive the memory). */
  slice(start: number, end: number = this.shape[0]): Tensor<D> {
    const storage = this.storage();
    if (this.shape.length === 0) throw new RangeError('slice: a scalar tensor has no rows');
    const rows = this.shape[0];
    if (!Number.isInteger(start)) throw new TypeError(`start: expected an integer, got ${String(start)}`);
    if (!Number.isInteger(end)) throw new TypeError(`end: expected an integer, got ${String(end)}`);
    if (start < 0 || start > rows) throw new RangeError(`start: expected 0 to ${rows} (rows), got ${start}`);
    if (end < start || end > rows) throw new RangeError(`end: expected ${start} to ${rows}, got ${end}`);
    const rowBytes = (rows === 0 ? 0 : this.size / rows) * DTYPE_BYTES[this.dtype];
    const view = storage.view(start * rowBytes, (end - start) * rowBytes);
    return new Tensor(view, this.dtype, [end - start, ...this.shape.slice(1)], this.device);
  }

  /** Frees this handle now (the memory goes with the last view of it); later use throws. Idempotent. */
  dispose(): void {
    if (this.#storage) this.#storage.dispose();
    this.#storage = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal console.log / util.inspect show what toString says. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/** @internal What a value is, for error messages: its class name or type. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value !== 'object') return typeof value;
  return (value as object).constructor?.name ?? 'an object';
}

/**
 * Tensors joined along dimension 0 (a copy): same dtype, device and trailing dimensions. Runs off
 * the event loop; the inputs may be disposed as soon as this returns its promise.
 */
export async function concat<D extends DType>(tensors: readonly Tensor<D>[]): Promise<Tensor<D>> {
  if (!Array.isArray(tensors) || tensors.length === 0) throw new TypeError('tensors: expected a non-empty array of Tensors');
  const first = tensors[0];
  tensors.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new TypeError(`tensors[${i}]: expected a Tensor`);
    if (t.disposed) throw new Error('tensor is disposed');
    if (t.shape.length === 0) throw new RangeError(`tensors[${i}]: a scalar tensor has no rows to join`);
    if (t.dtype !== first.dtype) throw new TypeError(`tensors[${i}]: dtype ${t.dtype} differs from tensors[0]'s ${first.dtype}`);
    if (t.device !== first.device) throw new TypeError(`tensors[${i}]: on ${t.device} but tensors[0] is on ${first.device}`);
    if (t.shape.length !== first.shape.length || t.shape.some((d, j) => j > 0 && d !== first.shape[j]))
      throw new RangeError(`tensors[${i}]: shape [${t.shape.join(', ')}] does not match tensors[0]'s [${first.shape.join(', ')}] past dimension 0`);
  });
  const rows = tensors.reduce((a, t) => a + t.shape[0], 0);
  const held = tensors.map((t) => t.hold());
  try {
    const out = emptyTensor(first.dtype, [rows, ...first.shape.slice(1)], first.device) as Tensor<D>;
    try {
      let offset = 0;
      for (const h of held) {
        const part = out.storage().view(offset, h.bytes);
        try {
          await part.copyFrom(h);
        } finally {
          part.dispose();
        }
        offset += h.bytes;
      }
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  } finally {
    for (const h of held) h.dispose();
  }
}

/** Bytes a device can hold at most: host RAM, or the (first) GPU's memory. */
export function deviceCapacity(device: Device): number {
  let bytes = capacities.get(device);
  if (bytes === undefined) {
    bytes = device === 'cpu' ? os.totalmem() : backends().cuda.devices[0]?.totalMemory ?? 0;
    capacities.set(device, bytes);
  }
  return bytes;
}
const capacities = new Map<Device, number>();

// `name` is what the caller calls this tensor in an error ('shape' for tensor() / zeros(), 'output'
// for an op's result): a size no device holds is a RangeError before anything is allocated.
function allocate(dtype: DType, shape: number[], device: Device, zero = false, name = 'shape'): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const bytes = size * DTYPE_BYTES[dtype];
  const capacity = deviceCapacity(device);
  if (bytes > capacity)
    throw new RangeError(`${name}: [${shape.join(', ')}] of ${dtype} needs ${bytes} bytes, more than the ${device} device holds (${capacity})`);
  const storage = new (native().Storage)(device, bytes, zero);
  return new Tensor(storage, dtype, shape, device);
}

/** @internal An uninitialised tensor for op outputs. */
export function emptyTensor(dtype: DType, shape: number[], device: Device): Tensor {
  return allocate(dtype, shape, device, false, 'output');
}

/**
 * @internal An op's outputs: all of them, or, when one cannot be allocated, none (those made
 * before are disposed) and the error.
 */
export function emptyTensors(specs: [DType, number[]][], device: Device): Tensor[] {
  const made: Tensor[] = [];
  try {
    for (const [dtype, shape] of specs) made.push(allocate(dtype, shape, device, false, 'output'));
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
  return made;
}

const INT32_MIN = -(2 ** 31), INT32_MAX = 2 ** 31 - 1;

// Values are checked when a tensor is made (SPEC §11): never a silent wrap-around or NaN.
function checkValues(data: ArrayLike<number>, dtype: DType): void {
  if (data instanceof BigInt64Array || data instanceof BigUint64Array)
    throw new TypeError('data: BigInt arrays (int64) are not supported; convert ids to an Int32Array (fromOrt() does, with a range check)');
  const typed = ArrayBuffer.isView(data);
  if (dtype === 'int32') {
    if (data instanceof Int32Array) return;
    for (let i = 0; i < data.length; i++) {
      const x = data[i];
      if (typeof x === 'bigint') throw new TypeError(`data: element ${i} is a BigInt; int32 tensors take numbers (convert int64 ids with Number() after a range check)`);
      if (typeof x !== 'number') throw new TypeError(`data: element ${i} is ${x === null ? 'null' : typeof x}, expected a number`);
      if (!Number.isInteger(x)) throw new TypeError(`data: int32 tensors need integers, got ${x} at ${i}`);
      if (x < INT32_MIN || x > INT32_MAX) throw new RangeError(`data: int32 tensors need integers in [-2^31, 2^31 - 1], got ${x} at ${i}`);
    }
  } else if (!typed) {
    for (let i = 0; i < data.length; i++)
      if (typeof data[i] !== 'number') throw new TypeError(`data: element ${i} is ${data[i] === null ? 'null' : typeof data[i]}, expected a number`);
  }
}

function toStorageArray(data: ArrayLike<number>, dtype: DType): ArrayBufferView {
  checkValues(data, dtype);
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array ? data : Float32Array.from(data);
    case 'int32':
      return data instanceof Int32Array ? data : Int32Array.from(data);
    default:
      // Uint16Array is taken as raw float16 / bfloat16 bits (as onnxruntime does); numbers are converted.
      if (data instanceof Uint16Array) return data;
      return native().fromFloat32(data instanceof Float32Array ? data : Float32Array.from(data), DTYPE_CODE[dtype]);
  }
}

// A Node Buffer or an ArrayBuffer holds raw bytes (as read from a file or a socket): its elements are
// the dtype's, `byteLength / element size` of them. Aligned bytes are viewed in place, others copied.
function fromBytes(data: ArrayBuffer | Uint8Array, dtype: DType, size: number, dims: number[], copy: boolean): TensorData {
  const bytes = DTYPE_BYTES[dtype];
  const offset = data instanceof ArrayBuffer ? 0 : data.byteOffset;
  const length = data.byteLength;
  const what = data instanceof ArrayBuffer ? 'an ArrayBuffer' : 'a Buffer';
  if (length !== size * bytes)
    throw new RangeError(`data: shape [${dims.join(', ')}] of ${dtype} needs ${size * bytes} bytes, got ${what} of ${length} bytes (${what} is read as raw ${dtype} elements)`);
  const buffer = data instanceof ArrayBuffer ? data : (data.buffer as ArrayBuffer);
  if (offset % bytes === 0) return new (arrayClass(dtype))(buffer, offset, size);
  if (!copy) throw new RangeError(`data: copy: false needs ${bytes}-byte aligned ${dtype} elements, but this Buffer starts at byte offset ${offset}`);
  return new (arrayClass(dtype))(buffer.slice(offset, offset + length));
}

/**
 * A tensor from a typed array or number[] (`length` = the product of `shape`), or from raw bytes (a
 * Node Buffer or an ArrayBuffer of `size × element size` bytes). float16 / bfloat16: a Uint16Array
 * is raw bits, other arrays are converted (round to nearest even). `{ copy: false }` uses the
 * array in place (CPU; the dtype's own typed array), as onnxruntime-node's Tensor does.
 */
export function tensor<D extends DType>(data: TensorInput, shape: readonly number[], options: TensorOptions<D> & { dtype: D }): Tensor<D>;
export function tensor(data: Int32Array, shape: readonly number[], options?: TensorOptions<'int32'>): Tensor<'int32'>;
export function tensor(data: TensorInput, shape: readonly number[], options?: TensorOptions<'float32'>): Tensor<'float32'>;
export function tensor(data: TensorInput, shape: readonly number[], options?: TensorOptions): Tensor;
export function tensor(data: TensorInput, shape: readonly number[], options: TensorOptions = {}): Tensor {
  const raw = data instanceof ArrayBuffer || Buffer.isBuffer(data);
  if (!raw && (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number'))
    throw new TypeError('data: expected a typed array, an array of numbers, a Buffer or an ArrayBuffer');
  const dims = checkShape(shape);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { dtype?, device?, copy? }');
  const copy = options.copy ?? true;
  if (typeof copy !== 'boolean') throw new TypeError(`options.copy: expected a boolean, got ${String(copy)}`);
  const dtype = checkDType(options.dtype ?? (raw ? 'float32' : defaultDType(data as ArrayLike<number>)), 'dtype');
  const device = checkDevice(options.device ?? 'cpu', 'device');
  const size = dims.reduce((a, b) => a * b, 1);
  const values = raw ? fromBytes(data as ArrayBuffer | Uint8Array, dtype, size, dims, copy) : (data as ArrayLike<number>);
  if (values.length !== size)
    throw new RangeError(`data: shape [${dims.join(', ')}] needs ${size} elements, got ${values.length}`);
  if (!copy) {
    if (device !== 'cpu') throw new TypeError(`options.copy: false uses host memory in place; a ${device} tensor needs a copy`);
    const cls = arrayClass(dtype);
    if (!(values instanceof cls)) throw new TypeError(`options.copy: false needs the ${dtype} elements as a ${cls.name}, got ${describe(values)}`);
    return new Tensor(native().wrapHost(values), dtype, dims, device);
  }
  const stored = toStorageArray(values, dtype);
  const t = allocate(dtype, dims, device);
  try {
    t.storage().write(stored);
  } catch (e) {
    t.dispose();
    throw e;
  }
  return t;
}

function defaultDType(data: ArrayLike<number>): DType {
  return data instanceof Int32Array ? 'int32' : 'float32';
}

/** A tensor of zeros. */
export function zeros<D extends DType>(shape: readonly number[], options: TensorOptions<D> & { dtype: D }): Tensor<D>;
export function zeros(shape: readonly number[], options?: TensorOptions<'float32'>): Tensor<'float32'>;
export function zeros(shape: readonly number[], options?: TensorOptions): Tensor;
export function zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
  const dims = checkShape(shape);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { dtype?, device? }');
  const dtype = checkDType(options.dtype ?? 'float32', 'dtype');
  const device = checkDevice(options.device ?? 'cpu', 'device');
  return allocate(dtype, dims, device, true);
}

/** @internal A zero-filled tensor for op outputs. */
export function zeroTensor<D extends DType>(dtype: D, shape: number[], device: Device): Tensor<D> {
  return allocate(dtype, shape, device, true, 'output') as Tensor<D>;
}
