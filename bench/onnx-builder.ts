// A minimal ONNX model builder for the benchmark peers: a tiny protobuf *encoder* (no decoder, no
// reflection) plus helpers that serialize just the parts of onnx.proto (syntax proto2) we need.
// The result is the bytes of a ModelProto, which `ort.InferenceSession.create(bytes)` accepts.
//
// Protobuf wire format recap: every field is `key = (fieldNumber << 3) | wireType` as a varint,
// followed by its payload. Wire types used here:
//   0 = varint (int32 / int64 / enum; negatives are 10-byte two's complement),
//   2 = length-delimited (strings, bytes, sub-messages, packed repeated scalars),
//   5 = fixed32 (float).
// Field order does not matter to parsers, and repeated scalars may be packed (proto2 parsers accept
// packed and unpacked alike), so we always pack them.

/** onnx.TensorProto.DataType values we use. */
export const DataType = { FLOAT: 1, INT32: 6, INT64: 7 } as const;
export type DataTypeCode = (typeof DataType)[keyof typeof DataType];

/** onnx.AttributeProto.AttributeType values we use. */
const AttrType = { FLOAT: 1, INT: 2, FLOATS: 6, INTS: 7 } as const;

// ---------------------------------------------------------------------------------------------
// Protobuf writer

/** Append-only byte buffer with the protobuf primitives. */
export class ProtoWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  private byte(b: number): void {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  /** Unsigned varint; negative numbers are written as 64-bit two's complement (10 bytes), as int64 requires. */
  varint(value: number | bigint): this {
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value)) throw new RangeError(`varint: expected a safe integer, got ${value}`);
      if (value >= 0) {
        while (value >= 0x80) {
          this.byte((value % 0x80) | 0x80);
          value = Math.floor(value / 0x80);
        }
        this.byte(value);
        return this;
      }
      value = BigInt(value);
    }
    let v = BigInt.asUintN(64, value);
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.byte(Number(v));
    return this;
  }

  private key(field: number, wireType: 0 | 2 | 5): void {
    this.varint(field * 8 + wireType);
  }

  private raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** Varint-typed scalar field (int32, int64, enum). */
  int(field: number, value: number | bigint): this {
    this.key(field, 0);
    return this.varint(value);
  }

  /** float field (fixed32, little-endian). */
  float(field: number, value: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.raw(b);
    return this;
  }

  /** bytes / sub-message field. */
  bytes(field: number, payload: Uint8Array): this {
    this.key(field, 2);
    this.varint(payload.length);
    this.raw(payload);
    return this;
  }

  /** UTF-8 string field. */
  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  /** Embedded message field, encoded by `fill` into a fresh writer. */
  message(field: number, fill: (w: ProtoWriter) => void): this {
    const sub = new ProtoWriter();
    fill(sub);
    return this.bytes(field, sub.finish());
  }

  /** Packed repeated varint field (repeated int64 / int32). */
  packedInts(field: number, values: ReadonlyArray<number | bigint>): this {
    const sub = new ProtoWriter();
    for (const v of values) sub.varint(v);
    return this.bytes(field, sub.finish());
  }

  /** Packed repeated float field. */
  packedFloats(field: number, values: ArrayLike<number>): this {
    const b = new Uint8Array(values.length * 4);
    const dv = new DataView(b.buffer);
    for (let i = 0; i < values.length; i++) dv.setFloat32(i * 4, values[i], true);
    return this.bytes(field, b);
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

// ---------------------------------------------------------------------------------------------
// ONNX model description

/** A dimension: a fixed size, or a symbolic name (`'B'`, `'L'`) bound at run time. */
export type Dim = number | string;

/** A graph input / output (ValueInfoProto with a tensor TypeProto). */
export interface ValueInfoSpec {
  name: string;
  dims: readonly Dim[];
  /** Element type; default float32. */
  elemType?: DataTypeCode;
}

/** A node attribute. Build with `attr.int / attr.float / attr.ints / attr.floats`. */
export type AttributeSpec =
  | { name: string; type: 'int'; value: number }
  | { name: string; type: 'float'; value: number }
  | { name: string; type: 'ints'; value: readonly number[] }
  | { name: string; type: 'floats'; value: readonly number[] };

export const attr = {
  int: (name: string, value: number): AttributeSpec => ({ name, type: 'int', value }),
  float: (name: string, value: number): AttributeSpec => ({ name, type: 'float', value }),
  ints: (name: string, value: readonly number[]): AttributeSpec => ({ name, type: 'ints', value }),
  floats: (name: string, value: readonly number[]): AttributeSpec => ({ name, type: 'floats', value }),
};

export interface NodeSpec {
  op: string;
  inputs: readonly string[];
  outputs: readonly string[];
  name?: string;
  /** Operator domain; default '' (the ONNX default domain). */
  domain?: string;
  attrs?: readonly AttributeSpec[];
}

/** A constant tensor (initializer). Float32Array → FLOAT, BigInt64Array → INT64, stored as raw_data. */
export interface TensorSpec {
  name: string;
  dims: readonly number[];
  data: Float32Array | BigInt64Array;
}

export interface GraphSpec {
  name: string;
  nodes: readonly NodeSpec[];
  inputs: readonly ValueInfoSpec[];
  outputs: readonly ValueInfoSpec[];
  initializers?: readonly TensorSpec[];
}

export interface ModelSpec {
  graph: GraphSpec;
  /** Default 8. */
  irVersion?: number;
  /** Default-domain opset version; default 17. */
  opset?: number;
  producer?: string;
}

/** A float32 scalar (rank-0) initializer. */
export function floatScalar(name: string, value: number): TensorSpec {
  return { name, dims: [], data: Float32Array.of(value) };
}

/** A float32 initializer of the given shape. */
export function floatTensor(name: string, dims: readonly number[], data: ArrayLike<number>): TensorSpec {
  const n = dims.reduce((a, b) => a * b, 1);
  if (data.length !== n) throw new RangeError(`floatTensor ${name}: expected ${n} values for [${dims.join(', ')}], got ${data.length}`);
  return { name, dims, data: Float32Array.from(data) };
}

// ---------------------------------------------------------------------------------------------
// Encoders, one per message (field numbers from onnx.proto)

// TensorProto: dims = 1 (repeated int64), data_type = 2, name = 8, raw_data = 9 (little-endian).
function writeTensor(w: ProtoWriter, t: TensorSpec): void {
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (t.data.length !== n) throw new RangeError(`initializer ${t.name}: ${t.data.length} values for shape [${t.dims.join(', ')}]`);
  if (t.dims.length > 0) w.packedInts(1, t.dims);
  const isFloat = t.data instanceof Float32Array;
  w.int(2, isFloat ? DataType.FLOAT : DataType.INT64);
  w.string(8, t.name);
  const raw = new Uint8Array(t.data.length * (isFloat ? 4 : 8));
  const dv = new DataView(raw.buffer);
  for (let i = 0; i < t.data.length; i++) {
    if (t.data instanceof Float32Array) dv.setFloat32(i * 4, t.data[i], true);
    else dv.setBigInt64(i * 8, t.data[i], true);
  }
  w.bytes(9, raw);
}

// ValueInfoProto: name = 1, type = 2.
// TypeProto: tensor_type = 1.  TypeProto.Tensor: elem_type = 1, shape = 2.
// TensorShapeProto: dim = 1 (repeated Dimension).  Dimension: dim_value = 1 | dim_param = 2.
function writeValueInfo(w: ProtoWriter, v: ValueInfoSpec): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, v.elemType ?? DataType.FLOAT);
      tensor.message(2, (shape) => {
        for (const d of v.dims)
          shape.message(1, (dim) => (typeof d === 'number' ? dim.int(1, d) : dim.string(2, d)));
      });
    }),
  );
}

// AttributeProto: name = 1, f = 2, i = 3, floats = 7, ints = 8, type = 20.
function writeAttribute(w: ProtoWriter, a: AttributeSpec): void {
  w.string(1, a.name);
  switch (a.type) {
    case 'int': w.int(20, AttrType.INT).int(3, a.value); break;
    case 'float': w.int(20, AttrType.FLOAT).float(2, a.value); break;
    case 'ints': w.int(20, AttrType.INTS).packedInts(8, a.value); break;
    case 'floats': w.int(20, AttrType.FLOATS).packedFloats(7, a.value); break;
  }
}

// NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7.
function writeNode(w: ProtoWriter, n: NodeSpec): void {
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name) w.string(3, n.name);
  w.string(4, n.op);
  for (const a of n.attrs ?? []) w.message(5, (m) => writeAttribute(m, a));
  if (n.domain) w.string(7, n.domain);
}

// GraphProto: node = 1, name = 2, initializer = 5, input = 11, output = 12.
function writeGraph(w: ProtoWriter, g: GraphSpec): void {
  g.nodes.forEach((n, idx) => w.message(1, (m) => writeNode(m, { ...n, name: n.name ?? `${n.op}_${idx}` })));
  w.string(2, g.name);
  for (const t of g.initializers ?? []) w.message(5, (m) => writeTensor(m, t));
  for (const i of g.inputs) w.message(11, (m) => writeValueInfo(m, i));
  for (const o of g.outputs) w.message(12, (m) => writeValueInfo(m, o));
}

/**
 * Serialize a model. ModelProto: ir_version = 1, producer_name = 2, graph = 7, opset_import = 8.
 * OperatorSetIdProto: domain = 1, version = 2 (domain left empty = the default ONNX domain).
 */
export function encodeModel(model: ModelSpec): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, model.irVersion ?? 8);
  w.string(2, model.producer ?? 'lifelong-kernels-bench');
  w.message(7, (g) => writeGraph(g, model.graph));
  w.message(8, (op) => op.int(2, model.opset ?? 17));
  return w.finish();
}
