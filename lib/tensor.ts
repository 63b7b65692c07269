// Tensors as Node users know them from onnxruntime-common: dims/type/data, plus a device and an
// explicit dispose(). Storage is native memory (host or GPU) owned by the addon.
import { native, NativeStorage } from './native';
import * as os from 'os';
import { backends, cudaDisabledReason } from './backends';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32';
export type Device = 'cpu' | 'cuda';
export type TensorData = Float32Array | Uint16Array | Int32Array;

export const DTYPE_CODE: Record<DType, number> = { float32: 0, float16: 1, bfloat16: 2, int32: 3 };
const DTYPE_BYTES: Record<DType, number> = { float32: 4, float16: 2, bfloat16: 2, int32: 4 };

export interface TensorOptions {
  dtype?: DType;
  device?: Device;
}

function checkDType(dtype: unknown, name: string): DType {
  if (dtype === 'float32' || dtype === 'float16' || dtype === 'bfloat16' || dtype === 'int32') return dtype;
  throw new TypeError(`${name}: expected 'float32', 'float16', 'bfloat16' or 'int32', got ${String(dtype)}`);
}

export function checkDevice(device: unknown, name: string): Device {
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`${name}: expected 'cpu' or 'cuda', got ${String(device)}`);
  if (device === 'cuda') {
    const reason = cudaDisabledReason();
    if (reason) throw new Error(`${name}: CUDA is not available: ${reason}`);
  }
  return device;
}

function checkShape(shape: unknown): number[] {
  if (!Array.isArray(shape)) throw new TypeError('shape: expected an array of non-negative integers');
  let size = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0)
      throw new RangeError(`shape: expected non-negative integers, got [${shape.join(', ')}]`);
    size *= d;
  }
  if (size * 4 > Number.MAX_SAFE_INTEGER) throw new RangeError(`shape: [${shape.join(', ')}] holds more elements than any device can`);
  return shape.slice();
}

const finalizeTokens = new WeakSet<object>();

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: Device;
  readonly size: number;
  #storage: NativeStorage | undefined;

  /** @internal Use `tensor()` / `zeros()`; ops create their outputs themselves. */
  constructor(storage: NativeStorage, dtype: DType, shape: readonly number[], device: Device) {
    this.#storage = storage;
    this.dtype = dtype;
    this.shape = Object.freeze(shape.slice());
    this.device = device;
    this.size = shape.reduce((a, b) => a * b, 1);
    finalizeTokens.add(this);
  }

  /** ONNX Runtime's names for the same facts. */
  get dims(): readonly number[] { return this.shape; }
  get type(): DType { return this.dtype; }
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

  /** The raw elements as a typed array (Uint16Array holds float16 / bfloat16 bits). */
  async data(): Promise<TensorData> {
    const bytes = await this.storage().read();
    switch (this.dtype) {
      case 'float32': return new Float32Array(bytes, 0, this.size);
      case 'int32': return new Int32Array(bytes, 0, this.size);
      default: return new Uint16Array(bytes, 0, this.size);
    }
  }

  /** The elements converted to float32 (any float dtype). */
  async float32(): Promise<Float32Array> {
    if (this.dtype === 'int32') throw new TypeError('float32(): tensor dtype is int32, not a float type');
    const raw = await this.data();
    if (raw instanceof Float32Array) return raw;
    return native().toFloat32(raw as Uint16Array, DTYPE_CODE[this.dtype]);
  }

  /** A copy on another device (the same tensor's data, new storage). */
  async to(device: Device): Promise<Tensor> {
    const target = checkDevice(device, 'device');
    return new Tensor(await this.storage().copyTo(target), this.dtype, this.shape, target);
  }

  /** Frees the storage now; later use throws `Error('tensor is disposed')`. Idempotent. */
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
    throw new TypeError('data: BigInt arrays are not supported; pass numbers or a Float32Array / Int32Array / Uint16Array');
  const typed = ArrayBuffer.isView(data);
  if (dtype === 'int32') {
    if (data instanceof Int32Array) return;
    for (let i = 0; i < data.length; i++) {
      const x = data[i];
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

/**
 * A tensor from a typed array or number[]; `data.length` must equal the product of `shape`.
 * float16 / bfloat16: a Uint16Array is raw bits, anything else is converted (round to nearest even).
 */
export function tensor(data: ArrayLike<number>, shape: readonly number[], options: TensorOptions = {}): Tensor {
  if (data === null || typeof data !== 'object' || typeof (data as ArrayLike<number>).length !== 'number')
    throw new TypeError('data: expected a typed array or an array of numbers');
  const dims = checkShape(shape);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { dtype?, device? }');
  const dtype = checkDType(options.dtype ?? defaultDType(data), 'dtype');
  const device = checkDevice(options.device ?? 'cpu', 'device');
  const size = dims.reduce((a, b) => a * b, 1);
  if (data.length !== size)
    throw new RangeError(`data: shape [${dims.join(', ')}] needs ${size} elements, got ${data.length}`);
  const values = toStorageArray(data, dtype);
  const t = allocate(dtype, dims, device);
  try {
    t.storage().write(values);
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
export function zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
  const dims = checkShape(shape);
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { dtype?, device? }');
  const dtype = checkDType(options.dtype ?? 'float32', 'dtype');
  const device = checkDevice(options.device ?? 'cpu', 'device');
  return allocate(dtype, dims, device, true);
}
