import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KvBlockPool } from '../runtime/kv_block_pool.js';
import { ChunkGrid } from './chunk_grid.js';
import { PrefixCache, type PrefixKeys, prefixKeys } from './prefix_cache.js';

const B = 4;
const pool = (slots: number) => new KvBlockPool({ layers: 1, planes: [{ type: 'float32', elements: 2 }] }, slots);
const keys = (): PrefixKeys => prefixKeys();
/** Publishes every whole block of `tokens`, as the engine does chunk by chunk. */
function publish(cache: PrefixCache, tokens: number[]): number[] {
  const k = keys();
  const slots: number[] = [];
  for (let i = 0; (i + 1) * B <= tokens.length; i++) {
    const slot = cache.reserve(tokens, i, k);
    if (slot !== null) slots.push(slot);
  }
  return slots;
}
const seq = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

test('a prompt finds the whole blocks of earlier prompts it begins with, and only those', () => {
  const cache = new PrefixCache(new ChunkGrid(B), pool(16));
  publish(cache, seq(10));
  assert.equal(cache.stats().blocks, 2, 'two whole blocks of 10 tokens');
  assert.equal(cache.match(seq(20), 20, 20, keys()).length, 2);
  // Diverging inside the second block: only the first matches.
  assert.equal(cache.match([...seq(6), 99, 98, 97], 9, 9, keys()).length, 1);
  // The same tokens at another position are another block.
  assert.equal(cache.match(seq(8, 4), 8, 8, keys()).length, 0);
  // The limit bounds the match (the chunk holding the last prompt token is always computed).
  assert.equal(cache.match(seq(20), 7, 20, keys()).length, 1);
  assert.deepEqual({ queried: cache.stats().queriedTokens, hit: cache.stats().hitTokens }, { queried: 57, hit: 4 * (2 + 1 + 0 + 1) });
  // Publishing the same block again takes no slot.
  assert.deepEqual(publish(cache, seq(8)), []);
});

test('a full pool evicts the least recently used block and every block after it', () => {
  const cache = new PrefixCache(new ChunkGrid(B), pool(4));
  publish(cache, seq(8, 0)); // a0 a1
  publish(cache, seq(8, 100)); // b0 b1
  cache.match(seq(8, 0), 8, 8, keys()); // a is now the more recent
  publish(cache, seq(4, 200)); // evicts b0, and b1 with it
  assert.equal(cache.match(seq(8, 100), 8, 8, keys()).length, 0);
  assert.equal(cache.match(seq(8, 0), 8, 8, keys()).length, 2);
  assert.equal(cache.match(seq(4, 200), 4, 4, keys()).length, 1);
  assert.equal(cache.stats().blocks, 3);
  assert.equal(cache.stats().bytes, 3 * 2 * 4);
});

test('a prompt longer than the pool keeps its first blocks', () => {
  const cache = new PrefixCache(new ChunkGrid(B), pool(3));
  const slots = publish(cache, seq(40));
  assert.equal(new Set(slots).size, 3);
  assert.deepEqual(cache.match(seq(40), 40, 40, keys()), slots);
  // Another prompt then takes the least recently used blocks: the chain's last first.
  publish(cache, seq(4, 500));
  assert.equal(cache.match(seq(40), 40, 40, keys()).length, 2);
});

test('a pool of one block still works', () => {
  const cache = new PrefixCache(new ChunkGrid(B), pool(1));
  publish(cache, seq(12));
  assert.equal(cache.match(seq(12), 12, 12, keys()).length, 1);
  publish(cache, seq(4, 50));
  assert.equal(cache.match(seq(12), 12, 12, keys()).length, 0);
  assert.equal(cache.match(seq(4, 50), 4, 4, keys()).length, 1);
});

test('with message starts marked, blocks end where a message starts: a shared opening message is cached whole, whatever its length', () => {
  const M = 500;
  const cache = new PrefixCache(new ChunkGrid(B, new Set([M])), pool(16));
  // A 6-token system message, then a user message: chunks [0, 4), [4, 6), [6, 10), [10, 11).
  const first = [M, 1, 2, 3, 4, 5, M, 7, 8, 9, 10];
  const k = keys();
  for (let i = 0; cache.keysFor(first, i + 1, k).length > i; i++) cache.reserve(first, i, k);
  assert.deepEqual(k.ends, [4, 6, 10], 'three whole chunks; the last one, cut short by the end, is not');
  assert.equal(cache.chunkIndex(first, 4, 6, k), 1);
  assert.equal(cache.chunkIndex(first, 4, 8, k), null, 'not a chunk of this grid');
  // Another user message after the same system message takes the whole system message.
  const second = [M, 1, 2, 3, 4, 5, M, 20, 21, 22, 23, 24];
  const k2 = keys();
  const slots = cache.match(second, second.length - 1, second.length, k2);
  assert.equal(slots.length, 2);
  assert.equal(PrefixCache.covered(k2, slots.length), 6);
  assert.deepEqual(
    PrefixCache.blocks(k2, slots).map((b) => b.tokens),
    [4, 2],
  );
  assert.equal(cache.stats().hitTokens, 6);
  // A warm-up's tokens end where a message is known to start: its short last chunk is whole.
  const warm = prefixKeys(true);
  assert.equal(cache.keysFor([M, 1, 2, 3, 4, 5], 5, warm).length, 2);
  assert.equal(cache.cachedTokens([M, 1, 2, 3, 4, 5], warm), 6);
});

test('a salt scopes the chain: blocks are found only under the salt they were saved with', () => {
  const cache = new PrefixCache(new ChunkGrid(B), pool(16));
  const tokens = seq(12);
  const publishSalted = (salt: string | null) => {
    const k = prefixKeys(false, salt);
    for (let i = 0; i < 3; i++) cache.reserve(tokens, i, k);
  };
  publishSalted('alice');
  assert.equal(cache.match(tokens, 12, 12, prefixKeys(false, 'alice')).length, 3);
  assert.equal(cache.match(tokens, 12, 12, prefixKeys(false, 'bob')).length, 0);
  assert.equal(cache.match(tokens, 12, 12, prefixKeys()).length, 0, 'unsalted requests do not see salted blocks');
  publishSalted(null);
  assert.equal(cache.match(tokens, 12, 12, prefixKeys(false, 'bob')).length, 0, 'salted requests do not see unsalted blocks');
  assert.equal(cache.match(tokens, 12, 12, prefixKeys()).length, 3);
  assert.equal(cache.stats().blocks, 6, 'the same tokens under two salts are two chains');
  // Only the first block's hash takes the salt; the rest chain from it, so every key differs.
  const a = cache.keysFor(tokens, 3, prefixKeys(false, 'alice'));
  const b = cache.keysFor(tokens, 3, prefixKeys(false, 'bob'));
  assert.ok(a.every((key, i) => key !== b[i]));
  // An empty salt is no salt.
  assert.deepEqual(cache.keysFor(tokens, 3, prefixKeys(false, '')), cache.keysFor(tokens, 3, prefixKeys()));
});
