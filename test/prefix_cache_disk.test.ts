import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readdirSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DiskBlockStore } from '../src/engine/disk_block_store.js';
import { EngineCore } from '../src/engine/engine_core.js';
import type { EngineEvent, GenerateRequest } from '../src/engine/types.js';
import { KvBlockPool } from '../src/runtime/kv_block_pool.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport, request } from './support/engine.js';
import { FIXTURE_DIR, openRunner, tempDir } from './support/runner.js';

// The prefix cache's disk tier in the engine: blocks the pool lets go and blocks written
// through reach the directory, a new engine on the same directory serves them, and no
// result changes: tokens and log-probabilities are compared with the cache off.

const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
const CHUNK = 32;
const FINGERPRINT = createHash('sha256').update('prefix_cache_disk.test').digest();

interface Outcome {
  tokens: number[];
  logprobs: unknown[];
  cached: number;
}

async function engine(
  dir: string,
  o: { cacheBlocks: number; disk?: string; warnings?: string[] },
): Promise<{ core: EngineCore; store: DiskBlockStore | null }> {
  const runner = await openRunner(dir);
  const pool = o.cacheBlocks > 0 ? new KvBlockPool(runner.blockLayout(CHUNK), o.cacheBlocks) : null;
  const store =
    pool && o.disk
      ? DiskBlockStore.open({
          dir: o.disk,
          capacityBytes: 64 * 2 ** 20,
          fingerprint: FINGERPRINT,
          payloadBytes: pool.bytesPerBlock,
          warn: (m) => o.warnings?.push(m),
        })
      : null;
  const core = new EngineCore(
    runner,
    tokenizer,
    { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: 8192 },
    { prefixCachePool: pool, prefixCacheDisk: store, warmAfterIdleMs: 0 },
  );
  return { core, store };
}

/** Runs requests to their end; a step that moved nothing (blocks being read) lets I/O in. */
async function run(core: EngineCore, reqs: GenerateRequest[]): Promise<Outcome[]> {
  const events: EngineEvent[] = [];
  for (const r of reqs) await core.submit(r);
  // As the worker's loop does: I/O between steps.
  while (core.hasWork()) {
    await core.step();
    events.push(...core.takeEvents());
    await new Promise((r) => setImmediate(r));
  }
  return reqs.map((req) => {
    const mine = events.filter((e) => e.requestId === req.requestId);
    return {
      tokens: mine.flatMap((e) => e.tokenIds),
      logprobs: mine.flatMap((e) => e.logprobs ?? []),
      cached: mine.find((e) => e.finishReason)?.metrics?.cachedTokens ?? -1,
    };
  });
}

const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 60000));
const greedy = (promptIds: number[]) => request(promptIds, { maxTokens: 8, ignoreEos: true, sampling: { logprobs: 3 } });
const same = (a: Outcome, b: Outcome, what: string) => assert.deepEqual([a.tokens, a.logprobs], [b.tokens, b.logprobs], what);

test('blocks a tiny pool lets go are written to disk and read back, and a new engine on the directory serves them: results unchanged', async () => {
  const model = await fixtureExport('fast');
  const dir = tempDir('qwen3-serve-disk-');
  const prompts = [ids(200, 1), ids(170, 2), [...ids(200, 1), ...ids(40, 3)], [...ids(170, 2), ...ids(20, 4)]];
  const { core: cold } = await engine(model, { cacheBlocks: 0 });
  const expected = await run(cold, prompts.map(greedy));

  // Seven pool slots (and the disk tier's scratch): every prompt's blocks push out the last one's, which go to disk.
  const first = await engine(model, { cacheBlocks: 8, disk: dir });
  const got = [];
  for (const p of prompts) {
    got.push(...(await run(first.core, [greedy(p)])));
    // The disk tier writes in the background: wait for the spilled blocks, not on luck.
    await first.store!.close(false);
  }
  got.forEach((o, i) => same(o, expected[i], `prompt ${i}`));
  assert.equal(got[2].cached, 6 * CHUNK, 'the third prompt found the first one’s six blocks, partly read back from disk');
  assert.equal(got[3].cached, 5 * CHUNK, 'the fourth the second one’s five');
  const stats = first.core.stats().prefixCache!;
  assert.equal(stats.blocks, 7);
  assert.ok(stats.disk!.hitTokens > 0 && stats.disk!.hitTokens <= stats.disk!.loads * CHUNK, JSON.stringify(stats.disk));
  await first.core.close();
  const files = readdirSync(dir).filter((f) => f.endsWith('.kvb'));
  assert.equal(files.length, stats.disk!.blocks);

  // A new engine on the same directory: every earlier prompt's whole blocks come from disk.
  const warnings: string[] = [];
  const second = await engine(model, { cacheBlocks: 16, disk: dir, warnings });
  assert.deepEqual(warnings, []);
  assert.equal(second.core.stats().prefixCache!.disk!.blocks, files.length, 'indexed at start');
  const again = await run(second.core, [greedy(prompts[2])]);
  same(again[0], expected[2], 'after the restart');
  assert.equal(again[0].cached, 7 * CHUNK);
  assert.equal(second.core.stats().prefixCache!.disk!.hitTokens, 7 * CHUNK);
  await second.core.close();
});

test('a truncated and an edited block are deleted, never served: the prompt computes from there, with results unchanged', async () => {
  const model = await fixtureExport('fast');
  const dir = tempDir('qwen3-serve-disk-');
  const prompt = ids(200, 5);
  const { core: cold } = await engine(model, { cacheBlocks: 0 });
  const [expected] = await run(cold, [greedy(prompt)]);
  const first = await engine(model, { cacheBlocks: 16, disk: dir });
  await run(first.core, [greedy(prompt)]);
  await first.core.close();
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.kvb'))
    .map((f) => join(dir, f));
  assert.equal(files.length, 6, JSON.stringify({ files: readdirSync(dir), disk: first.core.stats().prefixCache!.disk }));
  // One file cut short (a crash or a full disk mid-write), the others with a flipped byte (a hand edit, a bad disk).
  truncateSync(files[0], 1000);
  for (const f of files.slice(1)) {
    const fd = openSync(f, 'r+');
    writeSync(fd, Buffer.from([0x5a]), 0, 1, fstatSync(fd).size - 7);
    closeSync(fd);
  }
  const warnings: string[] = [];
  const second = await engine(model, { cacheBlocks: 16, disk: dir, warnings });
  assert.equal(second.core.stats().prefixCache!.disk!.corrupt, 1, 'the truncated one, at start');
  assert.equal(second.core.stats().prefixCache!.disk!.blocks, 5);
  const [o] = await run(second.core, [greedy(prompt)]);
  same(o, expected, 'results');
  assert.equal(o.cached, 0, 'nothing served');
  const stats = second.core.stats().prefixCache!.disk!;
  assert.ok(stats.corrupt >= 2, 'an edited one, when read');
  assert.equal(stats.loads, 0);
  assert.ok(
    warnings.some((w) => /failed its check \(payload checksum mismatch\)/.test(w)),
    warnings.join('\n'),
  );
  assert.ok(
    warnings.some((w) => /deleted 1 block file/.test(w)),
    warnings.join('\n'),
  );
  await second.core.close();
  // The bad files read are gone; the prompt's blocks were computed and written again.
  assert.equal(readdirSync(dir).filter((f) => f.endsWith('.kvb')).length, 6);
});
