import type { KvBlockPool, KvBlockRef } from '../runtime/kv_block_pool.js';
import type { KvCostModel } from '../runtime/kv_cost.js';
import type { DiskBlockStore, LoadedBlock } from './disk_block_store.js';
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
  /** The disk tier's key, when the block is to be written there too (after it is saved). */
  diskKey: string | null;
}

/** A block read from the disk tier, copied into pool slot `slot` before any row is set up. */
export interface BlockFill {
  slot: number;
  block: LoadedBlock;
}

/** A block the pool let go, written to the disk tier from its `slot` before the step writes to the pool. */
export interface BlockSpill {
  slot: number;
  tokens: number;
  diskKey: string;
}

/** A step plan's KV work, done by the step executor in this order around the model runs. */
export interface KvSteps {
  /** Rows freed before the model runs: preempted sequences, warm-ups given up. */
  free: number[];
  /** Evicted blocks to write to disk, first: their slots are reused by this step. */
  spill: BlockSpill[];
  /** Blocks read from disk into the pool, before the rows: admitted sequences load them. */
  fill: BlockFill[];
  rows: RowSetup[];
  save: BlockSave | null;
}

/** A step's KV work before the scheduler adds to it. */
export function kvSteps(free: number[]): KvSteps {
  return { free, spill: [], fill: [], rows: [], save: null };
}

/** Blocks read ahead from disk for the sequence waiting on them (the disk tier's readAhead). */
const DISK_WINDOW = 8;

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
  /** The blocks reserved for the running step's save and fills, until they are written. */
  private reserved: Array<{ seq: S; index: number }> = [];
  /** The running step's fills, whose read buffers go back to the disk tier when it ends. */
  private fills: LoadedBlock[] = [];
  /** Prompt tokens of requests served from blocks the disk tier held. */
  private diskHits = 0;

  constructor(
    private readonly cost: KvCostModel,
    /** Absent: every prompt is computed whole. */
    readonly prefixCache: PrefixCache | null = null,
    /** The tier below memory (--prefix-cache-dir); absent: blocks the pool lets go are gone. */
    readonly disk: DiskBlockStore | null = null,
  ) {
    if (prefixCache && disk) prefixCache.keepEvicted = true;
  }

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
   * With the disk tier, the blocks it holds after those in memory are read first: null
   * while they are read (the sequence waits, `kv` gets the ones read so far).
   */
  lookUp(seq: S, target: number, kv: KvSteps): Lookup | null {
    const cache = this.prefixCache;
    if (!cache) return { cached: 0, slots: [] };
    // A warm-up needs no logits, only blocks: every cached one serves it.
    const limit = Math.min(seq.warmUp ? target : target - 1, seq.prompt?.scoredTo ?? Infinity);
    if (this.fillFromDisk(seq, limit, kv) === null) return null;
    const slots = cache.match(seq.tokens, limit, seq.warmUp ? null : target, seq.prefixKeys);
    return { cached: PrefixCache.covered(seq.prefixKeys, slots.length), slots };
  }

  /**
   * Puts the blocks of `seq` the disk tier holds after those in memory into the pool, in
   * order, as far as they are read: null while the next one is being read (reads for
   * the blocks after it run meanwhile). Warm-ups compute instead.
   */
  private fillFromDisk(seq: S, limit: number, kv: KvSteps): true | null {
    const cache = this.prefixCache!;
    const disk = this.disk;
    if (!disk || seq.warmUp) return true;
    const keys = seq.prefixKeys;
    for (let k = cache.leadingCount(seq.tokens, limit, keys); ; k++) {
      const key = cache.keysFor(seq.tokens, k + 1, keys)[k];
      if (key === undefined || keys.ends[k] > limit) break;
      const diskKey = disk.keyOf(key);
      const got = disk.take(diskKey);
      if (got === 'missing') break;
      if (got === 'pending') {
        disk.want(this.diskKeysFrom(seq, k, limit));
        this.spill(kv);
        return null;
      }
      const length = keys.ends[k] - (k === 0 ? 0 : keys.ends[k - 1]);
      const slot = got.tokens === length ? cache.reserve(seq.tokens, k, keys) : null;
      if (slot === null) {
        disk.release(got);
        break;
      }
      kv.fill.push({ slot, block: got });
      this.fills.push(got);
      this.reserved.push({ seq, index: k });
      this.diskHits += length;
    }
    disk.want([]);
    this.spill(kv);
    return true;
  }

  /** The disk keys of `seq`'s blocks from `k` on that the disk tier holds, in order, up to DISK_WINDOW. */
  private diskKeysFrom(seq: S, k: number, limit: number): string[] {
    const cache = this.prefixCache!;
    const disk = this.disk!;
    const out: string[] = [];
    for (let i = k; out.length < DISK_WINDOW; i++) {
      const key = cache.keysFor(seq.tokens, i + 1, seq.prefixKeys)[i];
      if (key === undefined || seq.prefixKeys.ends[i] > limit) break;
      const diskKey = disk.keyOf(key);
      if (!disk.available(diskKey)) break;
      out.push(diskKey);
    }
    return out;
  }

  /** The blocks the pool let go since the last call, to write to disk before this step reuses their slots. */
  private spill(kv: KvSteps): void {
    const cache = this.prefixCache!;
    const disk = this.disk;
    const evicted = cache.takeEvicted();
    if (!disk) return;
    for (const e of evicted) {
      const diskKey = disk.keyOf(e.key);
      if (!disk.has(diskKey)) kv.spill.push({ slot: e.slot, tokens: e.tokens, diskKey });
    }
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
  save(seq: S, start: number, end: number, kv: KvSteps): BlockSave | null {
    const cache = this.prefixCache;
    if (!cache || prefillRuns(seq.prompt, start, end) > 1) return null;
    const index = cache.chunkIndex(seq.tokens, start, end, seq.prefixKeys);
    if (index === null) return null;
    const slot = cache.reserve(seq.tokens, index, seq.prefixKeys);
    if (slot !== null) this.reserved.push({ seq, index });
    const disk = this.disk;
    if (!disk) return slot === null ? null : { id: seq.id, start, tokens: end - start, slot, diskKey: null };
    this.spill(kv);
    // Written through to disk as well: a restart, even a crash, then finds it there. A
    // block the pool cannot take (a prompt longer than it) goes to disk alone, through
    // the pool's last slot, which the memory cache never uses.
    const key = disk.keyOf(seq.prefixKeys.keys[index]);
    const diskKey = disk.has(key) ? null : key;
    if (slot === null && (diskKey === null || cache.has(seq.prefixKeys.keys[index]))) return null;
    return { id: seq.id, start, tokens: end - start, slot: slot ?? cache.pool.slots - 1, diskKey };
  }

  /** The step ended: its saved and filled blocks hold their keys and values, or (`ok` false) they never will. */
  settle(ok: boolean): void {
    const cache = this.prefixCache;
    if (cache && ok) cache.commit();
    // Later blocks first: releasing a block releases those after it.
    if (cache && !ok) for (const r of this.reserved.reverse()) cache.release(r.seq.tokens, r.index, r.seq.prefixKeys);
    this.reserved = [];
    for (const block of this.fills) this.disk!.release(block);
    this.fills = [];
  }

  /** Prompt tokens of requests served from blocks read from the disk tier. */
  get diskHitTokens(): number {
    return this.diskHits;
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
