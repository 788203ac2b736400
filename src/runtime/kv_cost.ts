import type { Manifest } from '../export/manifest.js';

/** What a set of resident sequences costs in the KV budget's token slots: the scheduler's admission and preemption test. */
export interface KvCostModel {
  slotsFor(lengths: number[]): number;
}

/** Capacity grows and shrinks in these steps: attention's cost grows with capacity (docs/architecture.md, KV cache). */
export const CAPACITY_STEP = 64;

/** Slots a fast-layout row of `length` tokens takes: its capacity step. */
export function capacityBucket(length: number): number {
  return Math.max(CAPACITY_STEP, Math.ceil(length / CAPACITY_STEP) * CAPACITY_STEP);
}

/** Slots one standard-layout sequence of `length` tokens may take: its buffers grow by doubling, so that worst case. */
export function standardSlots(length: number): number {
  return Math.max(64, 2 ** Math.ceil(Math.log2(Math.max(length, 1))));
}

/** The cost of one sequence of a given length, in the layout's own steps. */
export function slotsForOne(layout: Manifest['layout']): (length: number) => number {
  return layout === 'fast' ? capacityBucket : standardSlots;
}

/**
 * The layout's cost model: the fast layout's buffer holds rows × the longest row's
 * bucket (kv_cache.ts), the standard layout's sequences grow each on their own.
 */
export function kvCostModel(layout: Manifest['layout']): KvCostModel {
  if (layout === 'fast') return { slotsFor: (lengths) => (lengths.length === 0 ? 0 : lengths.length * capacityBucket(Math.max(...lengths))) };
  return { slotsFor: (lengths) => lengths.reduce((n, l) => n + standardSlots(l), 0) };
}
