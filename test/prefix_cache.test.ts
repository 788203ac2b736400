import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bytesPerBlock } from '../src/runtime/kv_block_pool.js';
import { fixtureExport, request } from './support/engine.js';
import { moeExport } from './support/moe_checkpoint.js';
import { CHUNK, conversation, expectedHit, greedy, ids, run, strip, variants } from './support/prefix_cache_harness.js';
import { openRunner } from './support/runner.js';

// Prefix caching must never change a result: every test runs the same requests with the
// cache on and off and compares tokens and log-probabilities for exact equality.

for (const [name, exportDir] of variants) {
  test(`${name}: a multi-turn conversation gives the same tokens and log-probabilities with the prefix cache on and off, and reuses each earlier turn`, async () => {
    const dir = await exportDir();
    const on = await conversation(dir, 256);
    const off = await conversation(dir, 0);
    assert.deepEqual(on.prompts, off.prompts, 'the same conversation');
    on.outcomes.forEach((o, i) => {
      assert.deepEqual(strip(o), strip(off.outcomes[i]), `turn ${i + 1}`);
      assert.equal(o.cached, expectedHit(on.prompts, i), `turn ${i + 1} reuses every whole block it shares`);
      assert.equal(off.outcomes[i].cached, 0);
    });
    assert.ok(
      on.outcomes.slice(1).every((o) => o.cached >= CHUNK),
      'every later turn hits',
    );
    const stats = on.core.stats().prefixCache!;
    assert.equal(
      stats.hitTokens,
      on.outcomes.reduce((s, o) => s + o.cached, 0),
    );
    assert.equal(
      stats.queriedTokens,
      on.prompts.reduce((s, p) => s + p.length, 0),
    );
  });
}

test('a raw-prompt conversation (each prompt the last one plus its answer) reuses only what prefill computed: the answer, decoded a token at a time, is computed again', async () => {
  // Keys and values a decode step writes differ in the last bits from those a prefill
  // chunk writes at the same position; a cache serving them would change the log-probabilities.
  const dir = await fixtureExport('fast');
  const on = await conversation(dir, 256, 0);
  const off = await conversation(dir, 0, 0);
  on.outcomes.forEach((o, i) => {
    assert.deepEqual(strip(o), strip(off.outcomes[i]), `turn ${i + 1}`);
    assert.equal(o.cached, expectedHit(on.prompts, i), `turn ${i + 1}`);
  });
});

for (const [name, exportDir] of [
  ['fixture', () => fixtureExport('fast')],
  ['MoE checkpoint', () => moeExport('softmax-step2-untied')],
  ['MoE checkpoint in int4 (experts in QMoE)', () => moeExport('renorm-dense-middle', 'int4')],
] as const) {
  test(`${name}: prompts sharing a prefix, batched together (and n > 1 sampling from one prompt), give the same results with the cache on and off`, async () => {
    const dir = await exportDir();
    const shared = ids(70, 3);
    const make = () => [
      ...[0, 1, 2, 3].map((k) => ({ req: greedy([...shared, ...ids(9 + k * 7, 10 + k)], 12), atStep: k })),
      // Two choices of one seeded, sampled prompt (as the API submits n = 2).
      ...[0, 1].map((k) => ({
        req: request([...shared, 5, 6, 7], { maxTokens: 12, ignoreEos: true, sampling: { temperature: 1, seed: 40 + k, logprobs: 2 } }),
      })),
    ];
    const on = await run(dir, make(), { cacheBlocks: 64 });
    const off = await run(dir, make(), {});
    on.outcomes.forEach((o, i) => assert.deepEqual(strip(o), strip(off.outcomes[i]), `request ${i}`));
    // The first admitted computes the shared 64 tokens (two blocks); every later one takes them.
    assert.deepEqual(
      on.outcomes.map((o) => o.cached).sort((a, b) => a - b),
      [0, 64, 64, 64, 64, 64],
    );
  });
}

test('results stay the same across a preemption, and the recompute takes the blocks its first pass left', async () => {
  const dir = await fixtureExport('fast');
  // A (126 tokens) decodes while B (40 tokens) joins; once A needs a 192-slot bucket, two
  // rows no longer fit 320 slots and B, the youngest, is preempted and recomputed after A.
  const make = () => [{ req: greedy(ids(126, 4), 8) }, { req: greedy(ids(40, 5), 12) }];
  const on = await run(dir, make(), { cacheBlocks: 64, kvBudgetTokens: 320 });
  const off = await run(dir, make(), { kvBudgetTokens: 320 });
  assert.equal(on.outcomes[1].preemptions, 1, 'B was preempted with the cache on');
  assert.equal(off.outcomes[1].preemptions, 1, 'and off');
  on.outcomes.forEach((o, i) => assert.deepEqual(strip(o), strip(off.outcomes[i]), `request ${i}`));
  // B's recompute hit its own first block (queried twice: at admission and re-admission).
  const stats = on.core.stats().prefixCache!;
  assert.ok(stats.hitTokens >= CHUNK, `hits: ${stats.hitTokens}`);
});

test('a tiny prefix cache evicts all the time and still changes nothing and fails nothing', async () => {
  const dir = await fixtureExport('fast');
  const make = () =>
    // Pairs share a prefix of one or two blocks; each pair's blocks push out the last pair's.
    [0, 1, 2, 3, 4, 5].map((k) => ({ req: greedy([...ids(40 + (k % 3) * 33, Math.floor(k / 2)), ...ids(20, 50 + k)], 6), atStep: k * 3 }));
  const on = await run(dir, make(), { cacheBlocks: 2 });
  const off = await run(dir, make(), {});
  on.outcomes.forEach((o, i) => {
    assert.equal(o.finish, 'length');
    assert.deepEqual(strip(o), strip(off.outcomes[i]), `request ${i}`);
  });
  const stats = on.core.stats().prefixCache!;
  assert.ok(stats.blocks <= 2);
  assert.ok(stats.hitTokens > 0, 'some prompts still hit');
});

test('a prompt-scoring request on a cached prefix returns the same scores as a cold one, and its blocks serve later prompts', async () => {
  const dir = await fixtureExport('fast');
  const prompt = ids(100, 6);
  const scoring = () => request(prompt, { maxTokens: 2, ignoreEos: true, promptLogprobs: 2 });
  const plain = () => greedy([...prompt.slice(0, 80), ...ids(10, 7)]);
  const make = () => [{ req: plain() }, { req: scoring(), atStep: 8 }, { req: plain(), atStep: 16 }];
  const on = await run(dir, make(), { cacheBlocks: 64 });
  const off = await run(dir, make(), {});
  on.outcomes.forEach((o, i) => assert.deepEqual(strip(o), strip(off.outcomes[i]), `request ${i}`));
  assert.equal((on.outcomes[1].prompt as unknown[]).length, 100, 'every prompt token scored');
  assert.equal(on.outcomes[1].cached, 0, 'scoring computes every position');
  assert.equal(on.outcomes[2].cached, 64);
});

test('the KV block pool holds what its memory bound allows', async () => {
  const runner = await openRunner(await fixtureExport('fast'));
  const layout = runner.blockLayout(CHUNK);
  // Fixture: 2 layers × (keys + values) × 2 KV heads × 16 dims × 32 tokens, fp32.
  assert.equal(bytesPerBlock(layout), 2 * 2 * 2 * 16 * 32 * 4);
});

/**
 * A chat conversation whose next turns are warmed: after each answer the engine is asked
 * to prefill the next prompt's beginning (the last prompt less its generation prompt,
 * the answer, and the template's opening of the next message), as the chat layer does.
 */
