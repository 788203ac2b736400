import { createHash } from 'node:crypto';
import type { KvBlockPool, KvBlockRef } from '../runtime/kv_block_pool.js';
import type { ChunkGrid } from './chunk_grid.js';
import type { DiskTierStats } from './disk_block_store.js';

/** One cached block: the keys and values of one prefill chunk's positions, in a pool slot. */
interface Block {
  /** Hash of every token from the start of the sequence to this block's end. */
  readonly key: string;
  readonly slot: number;
  /** Positions it holds. */
  readonly tokens: number;
  readonly parent: Block | null;
  /** Its slot holds its keys and values (false from `reserve` until the step that fills it ends well). */
  written: boolean;
  readonly children: Set<Block>;
}

/**
 * What a sequence keeps for the cache: its whole chunks' keys and ends, computed once
 * each. `boundaryAtEnd`: a message start is known to follow its tokens, so a last chunk
 * short of the chunk size is whole too (a warm-up's). `salt`: the request's cache scope
 * (GenerateRequest.cacheSalt), mixed into the first block's hash, so blocks are shared
 * only between sequences with the same salt; null or empty, none.
 */
export interface PrefixKeys {
  keys: string[];
  ends: number[];
  boundaryAtEnd?: boolean;
  salt?: string | null;
}

export function prefixKeys(boundaryAtEnd = false, salt: string | null = null): PrefixKeys {
  return { keys: [], ends: [], boundaryAtEnd, salt };
}

/**
 * What a salt puts before a chain's first tokens: -1, which no token id is (so no
 * unsalted chain can begin alike), then the salt's SHA-256.
 */
export function saltPrefix(salt: string): Int32Array {
  const digest = createHash('sha256').update(salt, 'utf8').digest();
  const out = new Int32Array(9);
  out[0] = -1;
  out.set(new Int32Array(Uint8Array.from(digest).buffer), 1);
  return out;
}

/** A block evicted from the pool with its keys and values still in `slot`, until the next step's writes. */
export interface EvictedBlock {
  key: string;
  slot: number;
  tokens: number;
}

export interface PrefixCacheStats {
  /** Prompt tokens looked up and found, in tokens (vLLM's prefix_cache_queries / prefix_cache_hits). */
  queriedTokens: number;
  hitTokens: number;
  blocks: number;
  blockTokens: number;
  /** Bytes the cached blocks hold, and the bound (--prefix-cache-memory). */
  bytes: number;
  capacityBytes: number;
  bytesPerBlock: number;
  /** Blocks the pool can hold. */
  capacityBlocks: number;
  /** The tier below memory (--prefix-cache-dir), when on. */
  disk: DiskTierStats | null;
}

/**
 * The prefix cache's index (vLLM's automatic prefix caching, by block hash): which
 * blocks of which token prefixes have their keys and values in the pool, and in what
 * order they were last used. A block is named by a hash of all tokens up to its end (and
 * the request's salt, its cache scope), so prompts that share a prefix and a salt share
 * its blocks, whatever follows.
 *
 * A block is one whole chunk of the engine's prefill grid (`grid`, chunk_grid.ts: at
 * most `blockTokens`, cut at message starts): a cached block is then exactly what a cold
 * run's chunk computes there, and what a request still computes after its cached blocks
 * runs at the same positions in the same chunks as without the cache, so results are
 * bit-identical (kv_cache_manager.ts saves only blocks a whole prefill chunk computed).
 *
 * Blocks are copies in a pool of their own: running sequences never share or wait for
 * them, and when the pool is full the least recently used block goes (a chain is used
 * from its end, so its last blocks go first), with any blocks after it, which nothing
 * could reach any more.
 */
export class PrefixCache {
  /** In order of last use, least recent first (a Map keeps insertion order). */
  private readonly blocks = new Map<string, Block>();
  private readonly freeSlots: number[];
  private queried = 0;
  private hits = 0;
  /** Blocks whose slots were filled by a step that has not ended yet. */
  private readonly unwritten = new Set<Block>();
  /** Evicted blocks, kept for `takeEvicted` when `keepEvicted` (the disk tier writes them). */
  private evicted: EvictedBlock[] = [];
  keepEvicted = false;
  constructor(
    /** The engine's prefill grid: blocks are its whole chunks. */
    private readonly grid: ChunkGrid,
    readonly pool: KvBlockPool,
    /** Slots [0, slots) of the pool hold blocks; any after are another's (the disk tier's scratch). */
    private readonly slots = pool.slots,
  ) {
    this.freeSlots = Array.from({ length: slots }, (_, i) => slots - 1 - i);
  }

  /** Tokens of a whole chunk at most: the prefill chunk. */
  get blockTokens(): number {
    return this.grid.size;
  }

  /**
   * The keys of `tokens`' first `count` whole chunks (fewer if it has fewer), extending
   * what `keys` already has. A last chunk cut short by the tokens' end is not whole: a
   * longer sequence may run it longer.
   */
  keysFor(tokens: readonly number[], count: number, keys: PrefixKeys): string[] {
    for (let k = keys.keys.length; k < count; k++) {
      const start = k === 0 ? 0 : keys.ends[k - 1];
      if (start >= tokens.length) break;
      const end = this.grid.end(tokens, start);
      if (!this.grid.whole(tokens, start, end, keys.boundaryAtEnd)) break;
      const hash = createHash('sha256');
      if (k > 0) hash.update(keys.keys[k - 1]);
      else if (keys.salt) hash.update(saltPrefix(keys.salt));
      hash.update(Int32Array.from(tokens.slice(start, end)));
      keys.keys.push(hash.digest('base64'));
      keys.ends.push(end);
    }
    return keys.keys;
  }

  /** Tokens the first `count` blocks of a sequence cover (its keys computed that far). */
  static covered(keys: PrefixKeys, count: number): number {
    return count === 0 ? 0 : keys.ends[count - 1];
  }

  /** The pool slots and lengths of blocks `slots`, the first ones of a sequence, for loading. */
  static blocks(keys: PrefixKeys, slots: readonly number[]): KvBlockRef[] {
    return slots.map((slot, k) => ({ slot, tokens: keys.ends[k] - (k === 0 ? 0 : keys.ends[k - 1]) }));
  }

  /**
   * The cached blocks that begin `tokens`, ending at or before `limit`, as pool slots in
   * order; they become the most recently used. Counts `queried` tokens as looked up and
   * the tokens found as hits, unless `queried` is null (a lookup for no request).
   */
  match(tokens: readonly number[], limit: number, queried: number | null, keys: PrefixKeys): number[] {
    const found = this.leading(tokens, limit, keys);
    for (let i = found.length - 1; i >= 0; i--) this.touch(found[i]);
    if (queried !== null) {
      this.queried += queried;
      this.hits += PrefixCache.covered(keys, found.length);
    }
    return found.map((block) => block.slot);
  }

  /** How many tokens of `tokens`, from the start, are cached in whole blocks; uses nothing and counts nothing. */
  cachedTokens(tokens: readonly number[], keys: PrefixKeys): number {
    return PrefixCache.covered(keys, this.leading(tokens, tokens.length, keys).length);
  }

  /** Whether the block named `key` is in the pool. */
  has(key: string): boolean {
    return this.blocks.has(key);
  }

  /** How many whole blocks of `tokens`, ending at or before `limit`, are cached from the start; uses nothing and counts nothing. */
  leadingCount(tokens: readonly number[], limit: number, keys: PrefixKeys): number {
    return this.leading(tokens, limit, keys).length;
  }

  private leading(tokens: readonly number[], limit: number, keys: PrefixKeys): Block[] {
    const found: Block[] = [];
    for (let k = 0; ; k++) {
      const key = this.keysFor(tokens, k + 1, keys)[k];
      if (key === undefined || keys.ends[k] > limit) break;
      const block = this.blocks.get(key);
      if (!block) break;
      found.push(block);
    }
    return found;
  }

  /** The index of the whole chunk [start, end) of `tokens`, or null if that is not one. */
  chunkIndex(tokens: readonly number[], start: number, end: number, keys: PrefixKeys): number | null {
    for (let k = 0; ; k++) {
      if (this.keysFor(tokens, k + 1, keys)[k] === undefined) return null;
      const from = k === 0 ? 0 : keys.ends[k - 1];
      if (from > start) return null;
      if (from === start) return keys.ends[k] === end ? k : null;
    }
  }

  /**
   * Makes room for block `index` of `tokens` and returns its slot for the caller to fill,
   * or null when it is cached already or its parent is not (a block nothing could reach).
   */
  reserve(tokens: readonly number[], index: number, keys: PrefixKeys): number | null {
    const all = this.keysFor(tokens, index + 1, keys);
    const key = all[index];
    if (key === undefined) return null;
    const existing = this.blocks.get(key);
    if (existing) {
      this.touchChain(existing);
      return null;
    }
    const parent = index > 0 ? (this.blocks.get(all[index - 1]) ?? null) : null;
    if (index > 0 && !parent) return null;
    if (parent) this.touchChain(parent);
    if (this.freeSlots.length === 0 && !this.evictOldest(parent)) return null;
    const tokenCount = keys.ends[index] - (index === 0 ? 0 : keys.ends[index - 1]);
    const block: Block = { key, slot: this.freeSlots.pop()!, tokens: tokenCount, parent, children: new Set(), written: false };
    this.unwritten.add(block);
    parent?.children.add(block);
    this.blocks.set(key, block);
    return block.slot;
  }

  /** The step that filled the blocks reserved since the last call ended well: their slots hold what they name. */
  commit(): void {
    for (const block of this.unwritten) block.written = true;
    this.unwritten.clear();
  }

  /** Blocks evicted since the last call whose slots still hold them, until the next step writes to the pool. */
  takeEvicted(): EvictedBlock[] {
    const out = this.evicted;
    this.evicted = [];
    return out;
  }

  /** Drops a block whose slot could not be filled after `reserve`. */
  release(tokens: readonly number[], index: number, keys: PrefixKeys): void {
    const block = this.blocks.get(this.keysFor(tokens, index + 1, keys)[index]);
    if (block) this.evict(block);
  }

  stats(): PrefixCacheStats {
    return {
      queriedTokens: this.queried,
      hitTokens: this.hits,
      blocks: this.blocks.size,
      blockTokens: this.blockTokens,
      bytes: this.blocks.size * this.pool.bytesPerBlock,
      capacityBytes: this.slots * this.pool.bytesPerBlock,
      bytesPerBlock: this.pool.bytesPerBlock,
      capacityBlocks: this.slots,
      disk: null,
    };
  }

  private touch(block: Block): void {
    this.blocks.delete(block.key);
    this.blocks.set(block.key, block);
  }

  /**
   * Marks a block and all before it as used, the last first: a chain's first blocks, which
   * more prompts share, are then the newest, and eviction takes a chain from its end.
   */
  private touchChain(block: Block): void {
    for (let b: Block | null = block; b; b = b.parent) this.touch(b);
  }

  /**
   * Evicts the least recently used block that `keep` does not descend from (so a prompt
   * longer than the pool keeps its first blocks); false when the pool holds only that chain.
   */
  private evictOldest(keep: Block | null): boolean {
    const chain = new Set<Block>();
    for (let b = keep; b; b = b.parent) chain.add(b);
    for (const block of this.blocks.values()) {
      if (chain.has(block)) continue;
      this.evict(block);
      return true;
    }
    return false;
  }

  private evict(block: Block): void {
    for (const child of [...block.children]) this.evict(child);
    this.unwritten.delete(block);
    if (this.keepEvicted && block.written) this.evicted.push({ key: block.key, slot: block.slot, tokens: block.tokens });
    block.parent?.children.delete(block);
    this.blocks.delete(block.key);
    this.freeSlots.push(block.slot);
  }
}
