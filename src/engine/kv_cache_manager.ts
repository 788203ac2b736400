import type { KvBlockPool, KvBlockRef } from '../runtime/kv_block_pool.js';
import type { KvCostModel } from '../runtime/kv_cost.js';
import { PrefixCache, type PrefixKeys, prefixKeys } from './prefix_cache.js';
import { prefillRuns } from './prompt_scores.js';
import type { CacheableSequence } from './sequence.js';

/** The cached blocks found for a sequence being admitted: the tokens they cover and their pool slots. */
export interface Lookup {
  cached: number;
  slots: number[];
}

/**
 * The row an admitted sequence gets, set up after the step's decode run: a warm-up's row
 * taken over (cut to `length` tokens), or a new row filled with the pool's `load` blocks
 * after `free` (a finished warm-up's row no request took) is let go.
 */
export interface RowSetup {
  id: number;
  takeOver: { from: number; length: number } | null;
  free: number | null;
  load: KvBlockRef[];
  /** The length it will soon reach (its prompt's end), so capacity grows once. */
  expect: number;
}

/** The block a prefill chunk completes, copied from the sequence's row into the pool's `slot` once the chunk ran. */
export interface BlockSave {
  id: number;
  start: number;
  tokens: number;
  slot: number;
}

/** A step plan's KV work, done by the step executor in this order around the model runs. */
export interface KvSteps {
  /** Rows freed before the model runs: preempted sequences, warm-ups given up. */
  free: number[];
  rows: RowSetup[];
  save: BlockSave | null;
}

/** Chunks of room a warm-up's row expects beyond its prompt: the next turn's message and the reply prompt. */
const NEXT_TURN_ROOM = 2;

/**
 * The KV memory a step plan needs, decided with the plan (vLLM's KVCacheManager): the
 * cost of a set of rows in the KV budget, the prefix cache's lookups at admission and
 * the block each whole prefill chunk leaves, and the row of a finished warm-up, which the
 * turn it warmed takes over rather than loading the same blocks back from the pool.
 */
export class KvCacheManager<S extends CacheableSequence = CacheableSequence> {
  /** A finished warm-up's row, kept until anything else is admitted. */
  private warmUpRow: { id: number; tokens: number[]; salt: string | null } | null = null;
  /** Warm-up rows let go outside a plan, freed by the next one. */
  private readonly orphans: number[] = [];
  /** The block reserved for the running step's save, until it is written. */
  private reserved: { seq: S; index: number } | null = null;

  constructor(
    private readonly cost: KvCostModel,
    /** Absent: every prompt is computed whole. */
    readonly prefixCache: PrefixCache | null = null,
  ) {}

  get pool(): KvBlockPool | null {
    return this.prefixCache?.pool ?? null;
  }

  slotsFor(lengths: number[]): number {
    return this.cost.slotsFor(lengths);
  }

  /**
   * The cached blocks a sequence being admitted can start from, of its first `target`
   * tokens. The chunk holding its last prefill token is always computed, as without the
   * cache: its logits give the next token. A request scoring its prompt needs every
   * position's logits, so it takes only blocks before the positions it has yet to score.
   */
  lookUp(seq: S, target: number): Lookup {
    const cache = this.prefixCache;
    if (!cache) return { cached: 0, slots: [] };
    // A warm-up needs no logits, only blocks: every cached one serves it.
    const limit = Math.min(seq.warmUp ? target : target - 1, seq.prompt?.scoredTo ?? Infinity);
    const slots = cache.match(seq.tokens, limit, seq.warmUp ? null : target, seq.prefixKeys);
    return { cached: PrefixCache.covered(seq.prefixKeys, slots.length), slots };
  }

  /** The row of `seq`, admitted with `found`: the warm-up's row when its first tokens are the cached ones, else a new one. */
  admit(seq: S, found: Lookup, chunk: number): RowSetup {
    const expect = seq.promptLength + (seq.warmUp ? NEXT_TURN_ROOM * chunk : 0);
    const w = this.warmUpRow;
    this.warmUpRow = null;
    if (
      w &&
      found.cached > 0 &&
      found.cached <= w.tokens.length &&
      w.salt === (seq.prefixKeys.salt ?? null) &&
      w.tokens.slice(0, found.cached).every((t, i) => t === seq.tokens[i])
    ) {
      return { id: seq.id, takeOver: { from: w.id, length: found.cached }, free: null, load: [], expect };
    }
    const load = found.cached > 0 ? PrefixCache.blocks(seq.prefixKeys, found.slots) : [];
    return { id: seq.id, takeOver: null, free: w?.id ?? null, load, expect };
  }

  /**
   * The block the chunk [start, end) of `seq` completes, reserved in the pool, when the
   * chunk is computed in one run: the block is then exactly what any later prompt with
   * these tokens would compute there.
   */
  save(seq: S, start: number, end: number): BlockSave | null {
    const cache = this.prefixCache;
    if (!cache || prefillRuns(seq.prompt, start, end) > 1) return null;
    const index = cache.chunkIndex(seq.tokens, start, end, seq.prefixKeys);
    if (index === null) return null;
    const slot = cache.reserve(seq.tokens, index, seq.prefixKeys);
    if (slot === null) return null;
    this.reserved = { seq, index };
    return { id: seq.id, start, tokens: end - start, slot };
  }

  /** The step ended: its saved block holds its keys and values, or (`ok` false) it never will. */
  settle(ok: boolean): void {
    const r = this.reserved;
    this.reserved = null;
    if (r && !ok) this.prefixCache!.release(r.seq.tokens, r.index, r.seq.prefixKeys);
  }

  /** Rows to free before a plan runs, besides its own: warm-up rows let go since the last one. */
  takeOrphans(): number[] {
    return this.orphans.splice(0);
  }

  /** A warm-up finished: its row stays for the turn it warmed. */
  keepWarmUpRow(seq: S): void {
    if (this.warmUpRow) this.orphans.push(this.warmUpRow.id);
    this.warmUpRow = { id: seq.id, tokens: seq.tokens, salt: seq.prefixKeys.salt ?? null };
  }

  /** Lets a finished warm-up's row go (a fault, the shutdown); its id, to free, or null. */
  dropWarmUpRow(): number | null {
    const id = this.warmUpRow?.id ?? null;
    this.warmUpRow = null;
    return id;
  }

  /**
   * The part of `promptIds` a warm-up computes: its whole chunks (they end where the next
   * message starts, or are a whole chunk long), with their keys under `salt` (the
   * request's cache scope); null when they are all cached already, or there is none.
   */
  warmUpPrompt(promptIds: number[], maxModelLen: number, salt: string | null = null): { tokens: number[]; keys: PrefixKeys } | null {
    const cache = this.prefixCache;
    if (!cache) return null;
    const keys: PrefixKeys = prefixKeys(false, salt);
    const limit = Math.min(promptIds.length, maxModelLen - 1);
    let count = 0;
    while (cache.keysFor(promptIds, count + 1, keys).length > count && keys.ends[count] <= limit) count++;
    const whole = PrefixCache.covered(keys, count);
    if (whole === 0) return null;
    const tokens = promptIds.slice(0, whole);
    keys.keys.length = count;
    keys.ends.length = count;
    // Its last chunk ends where a message starts (or is a whole chunk long): it is whole.
    keys.boundaryAtEnd = true;
    if (cache.cachedTokens(tokens, keys) >= whole) return null;
    return { tokens, keys };
  }
}
