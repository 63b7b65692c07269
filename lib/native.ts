// Loads the addon once, on first use: the prebuilt or locally built binary through node-gyp-build,
// or the emulated-CUDA build when LIFELONG_CUDA_EMULATE=1 (see README, "How CUDA is verified").
import * as fs from 'fs';
import * as path from 'path';

export interface NativeStorage {
  readonly bytes: number;
  readonly device: 'cpu' | 'cuda';
  readonly disposed: boolean;
  dispose(): void;
  write(data: ArrayBufferView): void;
  read(): Promise<ArrayBuffer>;
  copyTo(device: 'cpu' | 'cuda'): Promise<NativeStorage>;
  /** Another handle on the same memory: it stays alive until every handle is disposed. */
  share(): NativeStorage;
  /** A handle on bytes [byteOffset, byteOffset + bytes) of this memory (no copy; keeps it alive). */
  view(byteOffset: number, bytes: number): NativeStorage;
  /** Copies the storage into a caller's typed array of exactly `bytes` bytes. */
  readInto(array: ArrayBufferView): Promise<void>;
  /** Copies another storage of the same size into this one (any devices). */
  copyFrom(source: NativeStorage): Promise<void>;
  /** An ArrayBuffer on this CPU memory (no copy); it keeps the memory alive until collected. */
  hostView(): ArrayBuffer;
  /** True when the memory is a caller's array wrapped without a copy. */
  readonly external: boolean;
}

/** The numeric codes the kernels read (native/binding.cc `codes()`); TypeScript encodes with these. */
export interface NativeCodes {
  dtype: Record<'float32' | 'float16' | 'bfloat16' | 'int32', number>;
  dtypeBytes: Record<'float32' | 'float16' | 'bfloat16' | 'int32', number>;
  role: Record<'item' | 'memory' | 'target', number>;
  roleCount: number;
  segRelation: Record<'none' | 'self' | 'same' | 'earlier' | 'same-or-earlier' | 'any', number>;
  normalize: Record<'softmax' | 'silu', number>;
}

/** The addon's limits (one place: native/binding.cc); TypeScript checks against these. */
export interface NativeLimits {
  maxHeads: number;
  maxHeadDim: number;
  maxIndexerDim: number;
  maxTopK: number;
  maxGatherSources: number;
  cuda: { headSizes: number[]; maxTopK?: number; indexerMaxElements?: number; indexerMaxHeads?: number };
}

export interface NativeBackends {
  cpu: { threads: number; simd: string; isaPaths: string[] };
  cuda: {
    available: boolean;
    compiled: boolean;
    emulated: boolean;
    devices: { name: string; computeCapability: string; totalMemory: number }[];
    reason?: string;
    emulator?: EmulatorCounters;
  };
}

/** The emulated build's execution counters since load (SPEC §8). */
export interface EmulatorCounters {
  launches: number;
  mma: number;
  ldmatrix: number;
  cpAsync: number;
}

/** What the CUDA host path has done since load (cuda/backend.h, HostPathStats). */
export interface CudaHostPathStats {
  submitted: number; completed: number; inFlight: number;
  issuerWaits: number; completionWaits: number;
  deviceMallocs: number; deviceFrees: number; cacheHits: number; trims: number; allocRetries: number;
  cachedBytes: number; reservedBytes: number; cacheLimit: number;
  pinnedMallocs: number; pinnedHits: number; pinnedCachedBytes: number;
}

/** A mask plan's native half (native/binding.cc MaskPlanHandle). */
export interface NativeMaskPlan {
  prepare(args: { dtype: number; headDim: number; valueDim: number }): Promise<void>;
  stats(): Array<Record<string, number>>;
  /** Test support: a CUDA plan's lists for these tile sizes, built afresh on the device or by the host walk. */
  _lists?(blockM: number, blockN: number, onDevice: boolean): Promise<{
    work: Int32Array; runs: Int32Array; combine: Int32Array; stats: Record<string, number>;
  }>;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeAddon {
  Storage: new (device: 'cpu' | 'cuda', bytes: number, zero?: boolean) => NativeStorage;
  backends(): NativeBackends;
  maskedAttention(args: Record<string, unknown>): Promise<void>;
  MaskPlan: new (args: Record<string, unknown>) => NativeMaskPlan;
  gatherRows(args: Record<string, unknown>): Promise<void>;
  indexerScores(args: Record<string, unknown>): Promise<void>;
  topK(args: Record<string, unknown>): Promise<void>;
  sparseAttention(args: Record<string, unknown>): Promise<void>;
  indexedCrossAttention(args: Record<string, unknown>): Promise<void>;
  maskedAttentionBackward(args: Record<string, unknown>): Promise<void>;
  sparseAttentionBackward(args: Record<string, unknown>): Promise<void>;
  indexerScoresBackward(args: Record<string, unknown>): Promise<void>;
  multiStreamAttention(args: Record<string, unknown>): Promise<void>;
  toFloat32(bits: Uint16Array, dtype: number): Float32Array;
  externalMemory(): number;
  fromFloat32(values: Float32Array, dtype: number): Uint16Array;
  limits(): NativeLimits;
  codes(): NativeCodes;
  /** A CPU storage on a caller's typed array's own memory (kept alive by the storage). */
  wrapHost(data: ArrayBufferView): NativeStorage;
  /** Native storage alive now: exact, for leak checks (V8's external total also counts ArrayBuffers). */
  liveMemory(): { buffers: number; bytes: number };
  /** Test support: a pool call whose task `failAt` throws; must reject and leave the pool healthy. */
  _failInPoolTask(tasks: number, failAt: number): Promise<void>;
  /** Test support: forces the CPU kernels' instruction set (one of backends().cpu.isaPaths). */
  _setCpuIsa(isa: string): void;
  /** Test support: the CPU kernels' exp (native/cpu/simd.h exp8) on the active ISA path. */
  _cpuExp(values: Float32Array): Float32Array;
  /** Test support: the CPU kernels' float32 -> float16 / bfloat16 narrowing (native/cpu/convert.h narrow_row) on the active ISA path. */
  _cpuNarrowRow(values: Float32Array, dtype: number): Uint16Array;
  /** Test support: CPU sparse / indexed attention calls run as dense `full` attention since load. */
  _cpuSparseDenseDispatches(): number;
  _cpuHeadsLanesCalls(): number;
  /** Test support: key blocks (per head group) of CPU attention whose GEMMs ran natively on bfloat16 (AVX512-BF16) since load. */
  _cpuBf16NativeBlocks(): number;
  /** Test support, CUDA builds only (cuda/backend.h): the host path's counters since load. */
  _cudaHostPath?(): CudaHostPathStats;
  /** The host caching allocator (native/storage.cc): cached blocks of 2 MiB and more. */
  _hostCache(): { hits: number; misses: number; blocks: number; cachedBytes: number; limit: number };
  _hostCacheSetLimit(bytes: number): void;
  /** Test support: while held, the completion thread waits for no event (nothing executes on the emulator). */
  _cudaHoldCompletions?(hold: boolean): void;
  /** Test support: the caching allocator's bound. */
  _cudaSetCacheLimit?(bytes: number): void;
  /** Test support: a CUDA op failing when its kernel runs (mode 0) or when it is launched (mode 1). */
  _cudaFaultOp?(mode: 0 | 1): Promise<void>;
}

/** The package root: the nearest folder above this file whose package.json names this package. */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest) && JSON.parse(fs.readFileSync(manifest, 'utf8')).name === 'lifelong-kernels') return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error('lifelong-kernels: cannot find the package root above ' + __dirname);
    dir = parent;
  }
}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  const root = packageRoot();
  const explicit = process.env.LIFELONG_ADDON;
  if (explicit) {
    addon = require(path.resolve(explicit)) as NativeAddon;
  } else if (process.env.LIFELONG_CUDA_EMULATE === '1') {
    const file = path.join(root, 'build-emu', 'Release', 'lifelong_kernels.node');
    if (!fs.existsSync(file))
      throw new Error('LIFELONG_CUDA_EMULATE=1 but the emulated build is missing: run `npm run build:emu` first');
    addon = require(file) as NativeAddon;
  } else {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    addon = require('node-gyp-build')(root) as NativeAddon;
  }
  return addon;
}

let cachedLimits: NativeLimits | undefined;

/** The addon's limits, read once. */
export function limits(): NativeLimits {
  cachedLimits ??= native().limits();
  return cachedLimits;
}

let cachedCodes: NativeCodes | undefined;

/** The addon's codes, read once. */
export function codes(): NativeCodes {
  cachedCodes ??= native().codes();
  return cachedCodes;
}

/**
 * A frozen record of `names` whose values are read from the addon on first use: the names are this
 * package's API, the numbers belong to the kernels (so importing the package loads no addon).
 */
export function addonRecord<K extends string>(names: readonly K[], read: () => Record<K, number>): Readonly<Record<K, number>> {
  const record = {} as Record<K, number>;
  for (const name of names) Object.defineProperty(record, name, { enumerable: true, get: () => read()[name] });
  return Object.freeze(record);
}
