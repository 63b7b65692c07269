// What can run here: backends() as in SPEC §1, with a reason in words when CUDA cannot be used.
import { native } from './native';
import type { EmulatorCounters } from './native';

export type { EmulatorCounters };

export interface CudaDevice {
  name: string;
  computeCapability: string;
  totalMemory: number;
}

export interface Backends {
  /**
   * simd: the instruction set the CPU kernels run on now (the best of isaPaths, unless LK_CPU_ISA
   * forces one of them); isaPaths: every set this CPU and build can run.
   */
  cpu: { threads: number; simd: string; isaPaths: string[] };
  cuda: {
    available: boolean;
    compiled: boolean;
    emulated: boolean;
    devices: CudaDevice[];
    reason?: string;
    /**
     * Emulated build only: launches run, warp-wide mma / ldmatrix instructions and per-thread
     * 16-byte cp.async copies executed by the CUDA emulator since the addon was loaded.
     */
    emulator?: EmulatorCounters;
  };
}

export function backends(): Backends {
  const b = native().backends();
  const cuda: Backends['cuda'] = { ...b.cuda, devices: b.cuda.devices.slice() };
  if (b.cuda.emulator) cuda.emulator = { ...b.cuda.emulator };
  if (process.env.LIFELONG_DEVICE === 'cpu') {
    cuda.reason = cuda.available ? 'disabled by LIFELONG_DEVICE=cpu' : `disabled by LIFELONG_DEVICE=cpu (and: ${cuda.reason})`;
    cuda.available = false;
  }
  return { cpu: { ...b.cpu, isaPaths: b.cpu.isaPaths.slice() }, cuda };
}

/** Why 'cuda' cannot be used right now, or undefined when it can. */
export function cudaDisabledReason(): string | undefined {
  const cuda = backends().cuda;
  return cuda.available ? undefined : cuda.reason ?? 'CUDA is unavailable';
}
