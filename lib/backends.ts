// What can run here: backends() as in SPEC §1, with a reason in words when CUDA cannot be used.
import { native } from './native';

export interface CudaDevice {
  name: string;
  computeCapability: string;
  totalMemory: number;
}

export interface Backends {
  cpu: { threads: number; simd: string };
  cuda: { available: boolean; compiled: boolean; emulated: boolean; devices: CudaDevice[]; reason?: string };
}

export function backends(): Backends {
  const b = native().backends();
  const cuda = { ...b.cuda, devices: b.cuda.devices.slice() };
  if (process.env.LIFELONG_DEVICE === 'cpu') {
    cuda.reason = cuda.available ? 'disabled by LIFELONG_DEVICE=cpu' : `disabled by LIFELONG_DEVICE=cpu (and: ${cuda.reason})`;
    cuda.available = false;
  }
  return { cpu: { ...b.cpu }, cuda };
}

/** Why 'cuda' cannot be used right now, or undefined when it can. */
export function cudaDisabledReason(): string | undefined {
  const cuda = backends().cuda;
  return cuda.available ? undefined : cuda.reason ?? 'CUDA is unavailable';
}
