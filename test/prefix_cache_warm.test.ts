import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EngineCore } from '../src/engine/engine_core.js';
import { KvBlockPool } from '../src/runtime/kv_block_pool.js';
import type { ModelRunner } from '../src/runtime/model_runner.js';
import { fixtureExport } from './support/engine.js';
import { CHUNK, greedy, ids, type Outcome, run, strip, tokenizer, variants } from './support/prefix_cache_harness.js';
import { openRunner } from './support/runner.js';

// Warming a conversation's next turn while idle must never change a result: every test
// runs the same requests with and without warm-ups and compares tokens and log-probabilities.

async function warmedConversation(
  dir: string,
  cacheBlocks: number,
  warm: boolean,
): Promise<{ outcomes: Outcome[]; prompts: number[][]; prefixes: number[][]; core: EngineCore }> {
  let prompt = ids(45, 1);
  const prompts: number[][] = [];
  const prefixes: number[][] = [];
  const outcomes: Outcome[] = [];
  let core: EngineCore | undefined;
  for (let turn = 0; turn < 4; turn++) {
    prompts.push(prompt);
    // 20 tokens: each warmed prefix's last whole block holds part of the answer, which the prompt alone never caches.
    const r = await run(dir, [{ req: greedy(prompt, 20) }], { cacheBlocks, core });
    core = r.core;
    outcomes.push(r.outcomes[0]);
    const prefix = [...prompt.slice(0, prompt.length - 4), ...r.outcomes[0].tokens, 11, 12, 13];
    prefixes.push(prefix);
    if (warm) {
      core.warm(prefix);
      // Idle steps: only the speculative prefill runs.
      await run(dir, [], { core });
    }
    prompt = [...prefix, ...ids(20 + turn * 3, turn + 2)];
  }
  return { outcomes, prompts, prefixes, core: core! };
}

for (const [name, exportDir] of variants.slice(0, 3)) {
  test(`${name}: warming a conversation's next turn while idle changes no result, and the next turn finds its whole history cached, the answer included`, async () => {
    const dir = await exportDir();
    const warmed = await warmedConversation(dir, 256, true);
    const cold = await warmedConversation(dir, 0, false);
    const plain = await warmedConversation(dir, 256, false);
    assert.deepEqual(warmed.prompts, cold.prompts, 'the same conversation');
    warmed.outcomes.forEach((o, i) => {
      assert.deepEqual(strip(o), strip(cold.outcomes[i]), `turn ${i + 1}, against the cache off`);
      assert.deepEqual(strip(plain.outcomes[i]), strip(cold.outcomes[i]), `turn ${i + 1}, cache on without warming`);
    });
    for (let i = 1; i < warmed.prompts.length; i++) {
      // Every whole block of the warmed prefix is cached; the last chunk is always computed.
      const expected = Math.min(Math.floor(warmed.prefixes[i - 1].length / CHUNK), Math.floor((warmed.prompts[i].length - 1) / CHUNK)) * CHUNK;
      assert.equal(warmed.outcomes[i].cached, expected, `turn ${i + 1}`);
      assert.ok(
        warmed.outcomes[i].cached > plain.outcomes[i].cached,
        `turn ${i + 1} hits more than without warming (${warmed.outcomes[i].cached} vs ${plain.outcomes[i].cached})`,
      );
    }
    // Each warm-up computed its prefix's whole blocks past those its turn's prompt had cached.
    const stats = warmed.core.stats();
    const expectedWarmed = warmed.prefixes.reduce(
      (s, p, i) => s + Math.floor(p.length / CHUNK) * CHUNK - Math.floor((warmed.prompts[i].length - 4) / CHUNK) * CHUNK,
      0,
    );
    assert.equal(stats.warmedTokensTotal, expectedWarmed);
    // Warm-ups are no requests: the prefix cache's query and hit counters count only the turns.
    assert.equal(
      stats.prefixCache!.queriedTokens,
      warmed.prompts.reduce((s, p) => s + p.length, 0),
    );
    assert.equal(
      stats.prefixCache!.hitTokens,
      warmed.outcomes.reduce((s, o) => s + o.cached, 0),
    );
    assert.equal(stats.requestsFinished, 4);
    assert.equal(plain.core.stats().warmedTokensTotal, 0);
  });
}

/**
 * A conversation in the chat template's shape: every message opens with `<|im_start|>`
 * (the engine cuts chunks there, but before an assistant's), the prompt ends with the
 * assistant's opening, and once an answer ends the engine warms the next prompt up to the
 * opening of the user's message. `runs` lists each turn's prefill runs, in tokens.
 */
async function messageConversation(
  dir: string,
  cacheBlocks: number,
): Promise<{ outcomes: Outcome[]; prompts: number[][]; prefixes: number[][]; runs: number[][] }> {
  const IM = tokenizer.tokenId('<|im_start|>')!;
  const END = tokenizer.tokenId('<|im_end|>')!;
  const [SYSTEM, USER, ASSISTANT] = [8948, 872, 77091];
  assert.equal(tokenizer.tokenId('assistant'), ASSISTANT);
  let history = [IM, SYSTEM, ...ids(50, 90), END, IM, USER, ...ids(30, 91), END];
  const runner = await openRunner(dir);
  const runs: number[][] = [];
  let turnRuns: number[] | null = null; // null while a warm-up runs
  const { prefill } = runner;
  runner.prefill = (id, tokens, every) => (turnRuns?.push(tokens.length), prefill.call(runner, id, tokens, every));
  const prefixCachePool = cacheBlocks > 0 ? new KvBlockPool(runner.blockLayout(CHUNK), cacheBlocks) : null;
  const core = new EngineCore(
    runner,
    tokenizer,
    { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: 8192 },
    { prefixCachePool, warmAfterIdleMs: 0 },
  );
  const prompts: number[][] = [];
  const prefixes: number[][] = [];
  const outcomes: Outcome[] = [];
  for (let turn = 0; turn < 4; turn++) {
    const prompt = [...history, IM, ASSISTANT, 198];
    prompts.push(prompt);
    turnRuns = [];
    runs.push(turnRuns);
    const r = await run(dir, [{ req: greedy(prompt, 16) }], { core });
    turnRuns = null;
    outcomes.push(r.outcomes[0]);
    const prefix = [...history, IM, ASSISTANT, ...r.outcomes[0].tokens, END, IM, USER];
    prefixes.push(prefix);
    if (cacheBlocks > 0) {
      core.warm(prefix);
      await run(dir, [], { core });
    }
    history = [...prefix, ...ids(25 + turn * 7, 92 + turn), END];
  }
  return { outcomes, prompts, prefixes, runs };
}

for (const [name, exportDir] of variants.slice(0, 3)) {
  test(`${name}: chunks end where messages but an assistant's start, so a warmed turn takes every token before its new message and computes the rest in the fewest runs, with results unchanged`, async () => {
    const dir = await exportDir();
    const on = await messageConversation(dir, 256);
    const off = await messageConversation(dir, 0);
    assert.deepEqual(on.prompts, off.prompts, 'the same conversation');
    on.outcomes.forEach((o, i) => assert.deepEqual(strip(o), strip(off.outcomes[i]), `turn ${i + 1}`));
    // The first turn's system message is whole too, but nothing earlier shares it.
    assert.equal(on.outcomes[0].cached, 0);
    for (let i = 1; i < on.outcomes.length; i++) {
      const userStart = on.prefixes[i - 1].length - 2;
      assert.equal(on.outcomes[i].cached, userStart, `turn ${i + 1}: everything before its message's <|im_start|>`);
      assert.notEqual(userStart % CHUNK, 0, `turn ${i + 1}: a boundary the fixed grid would not have`);
      // The user's message and the assistant's opening run together, a chunk at a time.
      const fresh = on.prompts[i].length - userStart;
      const expected = [...Array(Math.floor(fresh / CHUNK)).fill(CHUNK), ...(fresh % CHUNK ? [fresh % CHUNK] : [])];
      assert.deepEqual(on.runs[i], expected, `turn ${i + 1}: its ${fresh} new tokens`);
    }
    assert.ok(on.runs.slice(1).some((r) => r.length === 1) && on.runs.slice(1).some((r) => r.length === 2), 'turns of one run and of two');
  });
}

test('a request arriving during a warm-up takes its place at the next step, with unchanged results, and finds the blocks it finished', async () => {
  const dir = await fixtureExport('fast');
  const history = ids(200, 21);
  const other = greedy(ids(50, 22), 8);
  const next = greedy([...history, ...ids(15, 23)], 8);
  const runner = await openRunner(dir);
  const core = new EngineCore(
    runner,
    tokenizer,
    { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: 8192 },
    { prefixCachePool: new KvBlockPool(runner.blockLayout(CHUNK), 64) },
  );
  assert.equal(core.warm(history), true);
  assert.equal(core.warm(ids(20, 24)), false, 'less than a block: nothing to warm');
  await core.step();
  await core.step();
  assert.equal(core.stats().warmedTokensTotal, 2 * CHUNK);
  assert.equal(core.stats().running, 0, 'a warm-up is not a running request');
  // The request arrives: the warm-up is given up before the next step's runs.
  const on = await run(dir, [{ req: other }, { req: next, atStep: 1 }], { core });
  assert.equal(core.stats().warmedTokensTotal, 2 * CHUNK, 'no warm-up chunk ran after the request came');
  assert.equal(core.warm(history.slice(0, 64)), false, 'its finished blocks stay cached');
  const off = await run(dir, [{ req: greedy(ids(50, 22), 8) }, { req: greedy([...history, ...ids(15, 23)], 8), atStep: 1 }]);
  on.outcomes.forEach((o, i) => assert.deepEqual(strip(o), strip(off.outcomes[i]), `request ${i}`));
  assert.equal(on.outcomes[0].cached, 0);
  assert.equal(on.outcomes[1].cached, 2 * CHUNK, 'the next turn takes the two blocks the warm-up finished');
  // A fault, or the shutdown deadline, forgets warm-ups, running or queued.
  for (const end of [() => core.failAll('model step failed'), () => core.abortAll()]) {
    assert.equal(core.warm(ids(200, 30 + core.stats().steps)), true);
    assert.equal(core.warm(ids(200, 31 + core.stats().steps)), true);
    await core.step();
    end();
    assert.equal(core.hasWork(), false);
  }
});

/** Watches a real runner: which sequences hold a cache, and how many times blocks were loaded or a cache handed over. */
function watch(runner: ModelRunner): { live: Set<number>; loads: number; handOvers: number } {
  const w = { live: new Set<number>(), loads: 0, handOvers: 0 };
  const { addSequence, removeSequence, loadBlocks, handOver } = runner;
  runner.addSequence = (id) => (w.live.add(id), addSequence.call(runner, id));
  runner.removeSequence = (id) => (w.live.delete(id), removeSequence.call(runner, id));
  runner.loadBlocks = (...a) => (w.loads++, loadBlocks.apply(runner, a));
  runner.handOver = (from, to, length) => (w.handOvers++, w.live.delete(from), w.live.add(to), handOver.call(runner, from, to, length));
  return w;
}

for (const layout of ['fast', 'standard'] as const) {
  test(`fixture, fp32 ${layout}: the turn a warm-up computed takes over its cache rather than loading its blocks; any other admission frees it first`, async () => {
    const dir = await fixtureExport(layout);
    const runner = await openRunner(dir);
    const w = watch(runner);
    const core = new EngineCore(
      runner,
      tokenizer,
      { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: 8192 },
      { prefixCachePool: new KvBlockPool(runner.blockLayout(CHUNK), 64), warmAfterIdleMs: 0 },
    );
    const warmUp = async (tokens: number[]) => {
      assert.equal(core.warm(tokens), true);
      while (core.hasWork()) await core.step();
      assert.equal(w.live.size, 1, 'the finished warm-up keeps its cache');
    };
    // Each turn follows a warm-up of a history of its own: 6 whole blocks computed and kept.
    const history = (i: number) => ids(200, 61 + i);
    const turns = [
      // The turn it warmed: every whole block of its history, the cache taken over as it is.
      greedy([...history(0), ...ids(15, 62)], 6),
      // An edited history: the blocks before the edit, the rest of the taken cache forgotten.
      greedy([...history(1).slice(0, 80), ...ids(40, 63)], 6),
      // Another conversation: the warm-up's cache is freed before it is admitted.
      greedy(ids(120, 64), 6),
    ];
    const cachedWant = [6 * CHUNK, 2 * CHUNK, 0];
    const handOversWant = [1, 1, 0];
    for (const [i, req] of turns.entries()) {
      await warmUp(history(i));
      const loads = w.loads;
      const handOvers = w.handOvers;
      const on = await run(dir, [{ req }], { core });
      const off = await run(dir, [{ req: greedy(req.promptIds, 6) }]);
      assert.deepEqual(strip(on.outcomes[0]), strip(off.outcomes[0]), `turn ${i}: the same results as without the cache`);
      assert.equal(on.outcomes[0].cached, cachedWant[i], `turn ${i}: cached tokens`);
      assert.equal(w.handOvers - handOvers, handOversWant[i], `turn ${i}: caches taken over`);
      assert.equal(w.loads - loads, 0, `turn ${i}: no blocks loaded`);
      assert.equal(w.live.size, 0, `turn ${i}: every cache freed once the request is done`);
    }
    // A fault, or the shutdown deadline, frees a finished warm-up's cache too.
    for (const end of [() => core.failAll('model step failed'), () => core.abortAll()]) {
      await warmUp(ids(100, 80 + w.live.size + core.stats().steps));
      end();
      assert.equal(w.live.size, 0);
    }
  });
}

test('a warm-up waits until no request has run or arrived for warmAfterIdleMs', async () => {
  const dir = await fixtureExport('fast');
  const runner = await openRunner(dir);
  let clock = 0;
  const core = new EngineCore(
    runner,
    tokenizer,
    { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: 8192 },
    { prefixCachePool: new KvBlockPool(runner.blockLayout(CHUNK), 64), warmAfterIdleMs: 250, now: () => clock },
  );
  await run(dir, [{ req: greedy(ids(40, 40), 4) }], { core });
  assert.equal(core.warm(ids(100, 41)), true);
  clock = 249;
  assert.equal(await core.step(), false, 'too soon after the request: nothing moves');
  assert.equal(core.stats().warmedTokensTotal, 0);
  clock = 250;
  assert.equal(await core.step(), true);
  assert.equal(core.stats().warmedTokensTotal, CHUNK);
  // A request arriving restarts the wait for whatever warm-up comes next.
  await run(dir, [{ req: greedy(ids(40, 42), 4) }], { core });
  assert.equal(core.warm(ids(100, 43)), true);
  assert.equal(await core.step(), false);
  clock = 500;
  assert.equal(await core.step(), true);
  assert.equal(core.stats().warmedTokensTotal, 2 * CHUNK);
});
