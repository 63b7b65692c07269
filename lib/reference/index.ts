// The `reference` namespace: plain TypeScript, float64-accumulating oracles of every op.
export * from './rules';
export * from './half';
export * from './ops';
export { ReferenceMemoryBank } from './memory-bank';
export * from './multi-stream';
