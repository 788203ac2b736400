import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { EngineCore } from '../src/engine/engine_core.js';
import type { EngineEvent, GenerateRequest } from '../src/engine/types.js';
import { exportModel } from '../src/export/exporter.js';
import { writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { bytesPerBlock, KvBlockPool } from '../src/runtime/kv_block_pool.js';
import type { ModelRunner } from '../src/runtime/model_runner.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport, request } from './support/engine.js';
import { moeExport } from './support/moe_checkpoint.js';
import { FIXTURE_DIR, openRunner, tempDir } from './support/runner.js';

// Prefix caching must never change a result: every test runs the same requests with the
// cache on and off and compares tokens and log-probabilities for exact equality.

const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
const CHUNK = 32;

interface Outcome {
  tokens: number[];
  logprobs: unknown[];
  prompt: unknown;
  cached: number;
  preemptions: number;
  finish: string | null;
}

/** Runs requests on one engine core to the end, submitting each at its step; returns each one's outcome. */
async function run(
  dir: string,
  requests: Array<{ req: GenerateRequest; atStep?: number }>,
  o: { cacheBlocks?: number; kvBudgetTokens?: number; core?: EngineCore } = {},
): Promise<{ outcomes: Outcome[]; core: EngineCore }> {
  let core = o.core;
  if (!core) {
    const runner = await openRunner(dir);
    const prefixCachePool = o.cacheBlocks ? new KvBlockPool(runner.blockLayout(CHUNK), o.cacheBlocks) : null;
    core = new EngineCore(
      runner,
      tokenizer,
      { maxNumSeqs: 8, maxNumBatchedTokens: CHUNK, maxQueue: 64, maxModelLen: 2048, kvBudgetTokens: o.kvBudgetTokens ?? 8192 },
      { prefixCachePool, warmAfterIdleMs: 0 },
    );
  }
  const events: EngineEvent[] = [];
  let step = 0;
  const pending = [...requests];
  const submitDue = () => {
    for (const r of pending.filter((p) => (p.atStep ?? 0) <= step)) {
      pending.splice(pending.indexOf(r), 1);
      void core.submit(r.req);
    }
  };
  submitDue();
  while (core.hasWork() || pending.length > 0) {
    await core.step();
    step++;
    events.push(...core.takeEvents());
    submitDue();
  }
  const outcomes = requests.map(({ req }) => {
    const mine = events.filter((e) => e.requestId === req.requestId);
    const end = mine.find((e) => e.finishReason);
    return {
      tokens: mine.flatMap((e) => e.tokenIds),
      logprobs: mine.flatMap((e) => e.logprobs ?? []),
      prompt: mine.find((e) => e.promptLogprobs)?.promptLogprobs ?? null,
      cached: end?.metrics?.cachedTokens ?? -1,
      preemptions: end?.metrics?.preemptions ?? -1,
      finish: end?.finishReason ?? null,
    };
  });
  return { outcomes, core };
}

/** Deterministic token ids. */
const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 60000));
const greedy = (promptIds: number[], maxTokens = 10, extra: Partial<GenerateRequest> = {}) =>
  request(promptIds, { maxTokens, ignoreEos: true, sampling: { logprobs: 3 }, ...extra });

const strip = (o: Outcome) => ({ tokens: o.tokens, logprobs: o.logprobs, prompt: o.prompt, finish: o.finish });

/** A chat client's conversation: each turn is the last prompt, less its last few tokens (the template's generation prompt), plus the answer and a new message. */
async function conversation(dir: string, cacheBlocks: number, drop = 4): Promise<{ outcomes: Outcome[]; prompts: number[][]; core: EngineCore }> {
  let prompt = ids(45, 1);
  const prompts: number[][] = [];
  const outcomes: Outcome[] = [];
  let core: EngineCore | undefined;
  for (let turn = 0; turn < 5; turn++) {
    prompts.push(prompt);
    const r = await run(dir, [{ req: greedy(prompt) }], { cacheBlocks, core });
    core = r.core;
    outcomes.push(r.outcomes[0]);
    prompt = [...prompt.slice(0, prompt.length - drop), ...r.outcomes[0].tokens, ...ids(23 + turn * 5, turn + 2)];
  }
  return { outcomes, prompts, core: core! };
}

/** Tokens a prompt can take from the cache: whole blocks shared with an earlier prompt's whole blocks, short of its last chunk. */
function expectedHit(prompts: number[][], i: number): number {
  let best = 0;
  for (let j = 0; j < i; j++) {
    let common = 0;
    while (common < prompts[i].length && common < prompts[j].length && prompts[i][common] === prompts[j][common]) common++;
    best = Math.max(best, Math.min(Math.floor(common / CHUNK), Math.floor(prompts[j].length / CHUNK)));
  }
  return Math.min(best, Math.floor((prompts[i].length - 1) / CHUNK)) * CHUNK;
}

async function ownCheckpoint(dtype: 'fp16' | 'int4', layout: 'fast' | 'standard' = 'fast'): Promise<string> {
  const src = join(tempDir(), 'deeper');
  writeRandomCheckpoint(src, { hiddenSize: 128, intermediateSize: 256, numLayers: 5, numHeads: 4, numKvHeads: 2, headDim: 32, seed: 7 });
  const out = `${src}-${dtype}-${layout}`;
  await exportModel({ modelDir: src, outDir: out, dtype, layout });
  return out;
}

const variants: Array<[string, () => Promise<string>]> = [
  ['fixture, fp32 fast', () => fixtureExport('fast')],
  ['fixture, fp32 standard', () => fixtureExport('standard')],
  ['5-layer checkpoint, int4 fast', () => ownCheckpoint('int4')],
  ['5-layer checkpoint, fp16 fast', () => ownCheckpoint('fp16')],
  // Qwen3-MoE: a dense layer between sparse ones, then every second layer sparse (int4).
  ['MoE checkpoint, fp32 fast', () => moeExport('renorm-dense-middle')],
  ['MoE checkpoint, int4 fast', () => moeExport('softmax-step2-untied', 'int4')],
];

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
    const r = await run(dir, [{ req: greedy(prompt, 40) }], { cacheBlocks, core });
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
    const r = await run(dir, [{ req: greedy(prompt, 30) }], { core });
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
