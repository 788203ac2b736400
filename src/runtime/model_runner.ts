import type { Manifest } from '../export/manifest.js';
import type { KvBlockLayout, KvBlockPool, KvBlockRef } from './kv_block_pool.js';

/**
 * One model step at a time, for sequences identified by small integer ids: compute, the
 * KV rows it reads and writes, and the block copies a step plan names (the engine's
 * step_executor.ts calls it and it calls nothing back). Logits are float32, `vocabSize`
 * per row. What rows cost in the KV budget is the layout's (kv_cost.ts), not the runner's.
 */
export interface ModelRunner {
  readonly manifest: Manifest;
  readonly vocabSize: number;
  /**
   * Whether `prefill` can return every position's logits (prompt log-probabilities):
   * fast exports from before that return only the last position's.
   */
  readonly promptLogits: boolean;

  // Compute.
  /**
   * Runs a chunk of `id`'s prompt (after what is cached); returns the last token's logits,
   * or with `everyPosition` each token's [tokens.length × vocab], in order.
   */
  prefill(id: number, tokens: number[], everyPosition?: boolean): Promise<Float32Array>;
  /** One new token for each sequence; returns logits [ids.length × vocab] in that order. */
  decode(ids: number[], tokens: number[]): Promise<Float32Array>;

  // KV rows.
  addSequence(id: number): void;
  removeSequence(id: number): void;
  /**
   * Sequence `to`, new here, takes over `from`'s cache with its first `length` tokens
   * (the rest is forgotten); `from` is gone.
   */
  handOver(from: number, to: number, length: number): void;
  /** Tokens of `id` whose keys and values are cached. */
  cachedLength(id: number): number;
  /**
   * `id` will hold `length` tokens soon (its prompt's end): a hint a runner whose cache
   * grows in steps may use to grow once rather than per chunk. Results never depend on it.
   */
  expect(id: number, length: number): void;
  /**
   * Gives `id` a cache of `length` tokens whose entries are not computed: for a caller that
   * writes them itself or never reads them (decode speed does not depend on the values,
   * so the engine benchmark times long batches without minutes of prefill).
   */
  reserve(id: number, length: number): void;
  /** Bytes of KV memory currently allocated. */
  kvBytes(): number;

  // Prefix blocks.
  /** How a block of `tokens` cached positions is laid out when saved (prefix caching). */
  blockLayout(tokens: number): KvBlockLayout;
  /** Copies `id`'s cached positions [start, start + tokens) into the pool's slot `slot`. */
  saveBlock(id: number, start: number, tokens: number, pool: KvBlockPool, slot: number): void;
  /** Gives `id`, which has nothing cached yet, the pool's `blocks` as its first positions, in order. */
  loadBlocks(id: number, pool: KvBlockPool, blocks: ReadonlyArray<KvBlockRef>): void;
}
