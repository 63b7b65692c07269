// lifelong-kernels: attention and memory kernels for generative recommenders over lifelong histories.
export { Tensor, tensor, zeros } from './tensor';
export type { DType, Device, TensorData, TensorOptions } from './tensor';
export { backends } from './backends';
export type { Backends, CudaDevice, EmulatorCounters } from './backends';
export { maskedAttention } from './attention';
export type { MaskedAttentionOptions, AttentionResult } from './attention';
export { maskPlan, MaskPlan } from './mask-plan';
export type { MaskPlanLayouts, MaskPlanOptions, MaskPlanStats } from './mask-plan';
export { presets, encodeRule } from './rules';
export type { MaskRule, RuleEntry, RoleName, SegRelation, PresetName } from './rules';
export type { Layout } from './layout';
export * as reference from './reference/index';
export { MemoryBank } from './memory-bank';
export type { MemoryBankOptions, BankMode, BankOverflow, RoleSelect } from './memory-bank';
export { indexerScores, topK, sparseAttention, indexedCrossAttention } from './sparse';
export type { SparseLayout, IndexedCrossAttentionOptions } from './sparse';
