import { ConfigError } from '../errors.js';
import type { Manifest } from '../export/manifest.js';
import { BYTES } from './kv_array.js';

// How much KV memory the engine may use, in bytes and in token slots, decided once at start (worker.ts).

/** Bytes of KV per token: keys and values, every layer (int8 entries carry one float32 scale per token and head). */
export function kvBytesPerToken(m: Manifest): number {
  const c = m.config;
  const perHead = c.headDim * BYTES[m.kvDtype] + (m.kvDtype === 'int8' ? BYTES.float32 : 0);
  return 2 * c.numLayers * c.numKvHeads * perHead;
}

/** A memory setting in bytes: bytes as given, or a fraction (≤ 1) of `freeBytes`. */
export function memoryBytes(setting: number, freeBytes: number): number {
  return setting <= 1 ? Math.floor(freeBytes * setting) : Math.floor(setting);
}

export interface KvBudget {
  /** The KV budget in token slots: the one name the scheduler, the runners and the stats use. */
  kvBudgetTokens: number;
  bytes: number;
  /** The longest sequence allowed, lowered to what the budget can hold. */
  maxModelLen: number;
}

/**
 * The KV budget for a memory setting: `memory` bytes, or a fraction (≤ 1) of `freeBytes`.
 * `slotsForOne` is the layout's cost of one sequence of a given length (`slotsForOne` in
 * kv_cost.ts, capacity steps or growth included): the longest allowed sequence is lowered
 * until one fits, and a budget too small for a single token is a configuration error.
 */
export function kvBudget(
  manifest: Manifest,
  memory: number,
  freeBytes: number,
  maxModelLen: number,
  slotsForOne: (length: number) => number,
): KvBudget {
  const perToken = kvBytesPerToken(manifest);
  const bytes = memoryBytes(memory, freeBytes);
  const kvBudgetTokens = Math.floor(bytes / perToken);
  const smallest = slotsForOne(1);
  if (kvBudgetTokens < smallest) {
    throw new ConfigError(
      `--kv-cache-memory gives ${bytes} bytes, less than one ${smallest}-token block (${perToken * smallest} bytes) of this model's KV cache.`,
    );
  }
  // The cost only grows with the length: the longest that fits, by bisection.
  let lo = 1;
  let hi = maxModelLen;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (slotsForOne(mid) <= kvBudgetTokens) lo = mid;
    else hi = mid - 1;
  }
  return { kvBudgetTokens, bytes, maxModelLen: lo };
}
