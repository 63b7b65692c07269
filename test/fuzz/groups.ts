// The fuzz groups: one child process per (device, group).
import { Rng } from '../helpers';
import type { CaseSpec, Scope } from './harness';
import { genTensorGroup } from './gen-tensor';
import { genAttentionGroup } from './gen-attention';
import { genSparseGroup } from './gen-sparse';
import { genBankGroup } from './gen-bank';
import { genReferenceGroup } from './gen-reference';

export const GROUPS: Record<string, (rng: Rng, s: Scope) => Promise<CaseSpec>> = {
  tensor: genTensorGroup,
  attention: genAttentionGroup,
  sparse: genSparseGroup,
  bank: genBankGroup,
  reference: genReferenceGroup,
};

/** Groups that do not depend on a device (run once, with the CPU). */
export const DEVICE_FREE = ['reference'];
