// onnxruntime-node interop (SPEC §11): dense layers run in ONNX Runtime, attention and memory here,
// and tensors cross without copies on the CPU where the dtypes allow. onnxruntime is not a
// dependency: the caller passes its module, and only its Tensor class is used.
import { DTYPE_CODE, DType, Device, Tensor, TensorData, describe, tensor } from './tensor';
import { native } from './native';

/** The part of an onnxruntime-common Tensor this module reads. */
export interface OrtTensorLike {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: unknown;
  readonly location?: string;
}

/** The part of the onnxruntime-node module `toOrt` uses: its Tensor constructor. */
export interface OrtModuleLike<T extends OrtTensorLike = OrtTensorLike> {
  Tensor: new (type: never, data: never, dims: readonly number[]) => T;
}

export interface ToOrtOptions {
  /**
   * The ORT element type wanted: by default float32 / float16 / int32 as they are (no copy) and
   * bfloat16 as float32 (converted; ORT's JavaScript API has no bfloat16). 'float32' converts
   * float16 too; 'int64' converts int32 (ids, offsets) to BigInt64Array.
   */
  type?: 'float32' | 'int64';
}

/**
 * An onnxruntime Tensor of a CPU tensor's elements: it views the same memory (no copy) for float32,
 * float16 (Uint16Array bits) and int32, and keeps that memory alive until it is collected even if
 * `t` is disposed. Writes through either are seen by both. A CUDA tensor must be copied to the CPU
 * first (`await t.to('cpu')`).
 */
export function toOrt<T extends OrtTensorLike>(t: Tensor, ort: OrtModuleLike<T>, options: ToOrtOptions = {}): T {
  if (!(t instanceof Tensor)) throw new TypeError('t: expected a Tensor');
  if (ort === null || typeof ort !== 'object' || typeof ort.Tensor !== 'function')
    throw new TypeError("ort: expected the onnxruntime-node module (require('onnxruntime-node'))");
  if (options === null || typeof options !== 'object') throw new TypeError("options: expected { type?: 'float32' | 'int64' }");
  const want = options.type;
  if (want !== undefined && want !== 'float32' && want !== 'int64') throw new TypeError(`options.type: expected 'float32' or 'int64', got ${String(want)}`);
  if (t.device !== 'cpu') throw new TypeError(`t: on ${t.device}; onnxruntime-node takes CPU tensors: pass await t.to('cpu')`);
  const memory = t.storage().hostView();
  const make = (type: string, data: ArrayBufferView) => new ort.Tensor(type as never, data as never, t.shape.slice());
  if (want === 'int64') {
    if (t.dtype !== 'int32') throw new TypeError(`options.type: 'int64' converts int32 tensors, this one is ${t.dtype}`);
    return make('int64', BigInt64Array.from(new Int32Array(memory, 0, t.size), (x) => BigInt(x)));
  }
  switch (t.dtype) {
    case 'float32': return make('float32', new Float32Array(memory, 0, t.size));
    case 'int32':
      if (want === 'float32') throw new TypeError("options.type: 'float32' converts float16 / bfloat16 tensors, this one is int32");
      return make('int32', new Int32Array(memory, 0, t.size));
    case 'float16':
      if (want === 'float32') return make('float32', native().toFloat32(new Uint16Array(memory, 0, t.size), DTYPE_CODE.float16));
      return make('float16', new Uint16Array(memory, 0, t.size));
    case 'bfloat16':
      return make('float32', native().toFloat32(new Uint16Array(memory, 0, t.size), DTYPE_CODE.bfloat16));
  }
}

export interface FromOrtOptions {
  /** Where the tensor goes; 'cpu' (default) wraps ORT's array in place where the dtype allows. */
  device?: Device;
}

const INT32_MIN = -(2n ** 31n), INT32_MAX = 2n ** 31n - 1n;

/**
 * A Tensor of an onnxruntime Tensor's elements: float32, float16 and int32 CPU data are used in
 * place (no copy; the tensor keeps ORT's array alive), int64 ids / offsets become int32 after a
 * range check (RangeError naming the first element outside it). `device: 'cuda'` copies.
 */
export function fromOrt(ortTensor: OrtTensorLike, options: FromOrtOptions = {}): Tensor {
  if (ortTensor === null || typeof ortTensor !== 'object' || typeof ortTensor.type !== 'string' || !Array.isArray(ortTensor.dims))
    throw new TypeError('ortTensor: expected an onnxruntime Tensor ({ type, dims, data })');
  if (options === null || typeof options !== 'object') throw new TypeError('options: expected { device? }');
  const location = ortTensor.location ?? 'cpu';
  if (location !== 'cpu' && location !== 'cpu-pinned')
    throw new TypeError(`ortTensor: its data is on '${location}'; download it to the CPU first (await ortTensor.getData())`);
  const device = options.device ?? 'cpu';
  const dims = ortTensor.dims.slice();
  const data = ortTensor.data;
  const inPlace = device === 'cpu';
  const wrap = <D extends DType>(dtype: D, array: TensorData<D>) => tensor(array, dims, { dtype, device, copy: !inPlace }) as Tensor<D>;
  switch (ortTensor.type) {
    case 'float32':
      if (data instanceof Float32Array) return wrap('float32', data);
      break;
    case 'int32':
      if (data instanceof Int32Array) return wrap('int32', data);
      break;
    case 'float16':
      if (data instanceof Uint16Array) return wrap('float16', data);
      // Float16Array (newer Node): its values convert, as tensor() converts any number array
      if (ArrayBuffer.isView(data) && (data as { constructor: { name: string } }).constructor.name === 'Float16Array')
        return tensor(data as unknown as ArrayLike<number>, dims, { dtype: 'float16', device });
      break;
    case 'int64':
      if (data instanceof BigInt64Array) {
        const ids = new Int32Array(data.length);
        for (let i = 0; i < data.length; i++) {
          const x = data[i];
          if (x < INT32_MIN || x > INT32_MAX) throw new RangeError(`ortTensor: int64 element ${i} = ${x} is outside the int32 range this package uses for ids and offsets`);
          ids[i] = Number(x);
        }
        return tensor(ids, dims, { dtype: 'int32', device });
      }
      break;
    default:
      throw new TypeError(`ortTensor: type '${ortTensor.type}' is not supported; expected float32, float16, int32 or int64`);
  }
  throw new TypeError(`ortTensor: type '${ortTensor.type}' with data of ${describe(data)} is not an onnxruntime CPU tensor`);
}
