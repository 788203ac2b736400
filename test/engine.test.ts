import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { QueueFullError } from '../src/errors.js';
import { exportModel } from '../src/export/exporter.js';
import { writeRandomCheckpoint } from '../src/model/random_checkpoint.js';
import { type Collected, collect, Engine, engineOptions, fixtureExport, request } from './support/engine.js';
import { moeExport } from './support/moe_checkpoint.js';
import { FIXTURE_REFERENCE, type ReferenceCase, tempDir } from './support/runner.js';

describe('test/engine.test', () => {
  const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;
  const engines: Engine[] = [];
  after(async () => {
    for (const e of engines) await e.close();
  });

  async function startEngine(...args: Parameters<typeof engineOptions>): Promise<Engine> {
    const e = await Engine.start(engineOptions(...args), undefined, CRASHING_WORKER);
    engines.push(e);
    return e;
  }

  /** The real worker, which a request named "crash…" makes die (test/support/crashing_worker.ts). */
  const CRASHING_WORKER = new URL('./support/crashing_worker.js', import.meta.url);
  let crashes = 0;

  /** Kills the engine's worker with an uncaught error, as a bug would. */
  function crash(engine: Engine): void {
    collect(engine, request([1], { requestId: `crash-${crashes++}` })).catch(() => {});
  }

  const extraPrompts = [
    [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198],
    Array.from({ length: 150 }, (_, i) => 1000 + ((i * 7919) % 50000)),
    [9707],
    Array.from({ length: 70 }, (_, i) => 20000 + i * 13),
    [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 13048, 151645],
  ];

  for (const layout of ['fast', 'standard'] as const) {
    test(`${layout}: the engine reproduces the fixture's greedy ids, and batching changes nothing`, async () => {
      const engine = await startEngine(await fixtureExport(layout), { maxNumBatchedTokens: 16 });
      const prompts = [...cases.map((c) => c.prompt_ids), ...extraPrompts];
      const alone: Collected[] = [];
      for (const p of prompts) alone.push(await collect(engine, request(p, { maxTokens: 12, ignoreEos: true })));
      cases.forEach((c, i) => assert.deepEqual(alone[i].tokens.slice(0, 8), c.greedy_ids));
      // All eight again, arriving staggered while others decode: token-identical.
      const together = await Promise.all(
        prompts.map(async (p, i) => {
          await sleep(i * 7);
          return collect(engine, request(p, { maxTokens: 12, ignoreEos: true }));
        }),
      );
      together.forEach((r, i) => {
        assert.deepEqual(r.tokens, alone[i].tokens, `prompt ${i}`);
        assert.equal(r.text, alone[i].text);
        assert.equal(r.finish?.finishReason, 'length');
        assert.equal(r.finish?.metrics?.completionTokens, 12);
        assert.equal(r.finish?.metrics?.promptTokens, prompts[i].length);
      });
      const stats = await engine.stats();
      assert.equal(stats.running, 0);
      assert.equal(stats.waiting, 0);
    });
  }

  for (const dtype of ['fp32', 'int4'] as const) {
    test(`Qwen3-MoE (${dtype}): prompts routed to different experts give the same tokens and log-probabilities alone and batched`, async () => {
      const engine = await startEngine(await moeExport('renorm-dense-middle', dtype), { maxNumBatchedTokens: 16 });
      const prompts = [...cases.map((c) => c.prompt_ids), ...extraPrompts];
      const ask = (p: number[]) => request(p, { maxTokens: 10, ignoreEos: true, sampling: { logprobs: 2 } });
      const logprobsOf = async (p: number[]) => {
        const seen: unknown[] = [];
        const r = await collect(engine, ask(p), undefined, (e) => seen.push(...(e.logprobs ?? [])));
        return { tokens: r.tokens, logprobs: seen };
      };
      const alone: Array<{ tokens: number[]; logprobs: unknown[] }> = [];
      for (const p of prompts) alone.push(await logprobsOf(p));
      assert.ok(alone.every((a) => a.logprobs.length === 10));
      // All again at once: each step's batch mixes prefill chunks and decode rows with different routes.
      const together = await Promise.all(prompts.map((p) => logprobsOf(p)));
      together.forEach((r, i) => {
        assert.deepEqual(r.tokens, alone[i].tokens, `prompt ${i}`);
        if (dtype === 'fp32') assert.deepEqual(r.logprobs, alone[i].logprobs, `prompt ${i}: the same bits`);
      });
    });
  }

  test('seeded sampling gives the same output alone and in a busy batch', async () => {
    const engine = await startEngine(await fixtureExport('fast'));
    const seeded = (seed: number) =>
      request(cases[0].prompt_ids, { maxTokens: 16, ignoreEos: true, sampling: { temperature: 1, topP: 0.9, topK: 50, seed } });
    const alone = await collect(engine, seeded(11));
    const busy = await Promise.all([
      collect(engine, seeded(11)),
      ...extraPrompts.map((p) => collect(engine, request(p, { maxTokens: 16, ignoreEos: true, sampling: { temperature: 1 } }))),
    ]);
    assert.deepEqual(busy[0].tokens, alone.tokens);
    const other = await collect(engine, seeded(12));
    assert.notDeepEqual(other.tokens, alone.tokens, 'another seed gives another sample');
  });

  test('stop strings end generation and are not emitted; stop token ids too', async () => {
    const engine = await startEngine(await fixtureExport('fast'));
    const full = await collect(engine, request(cases[1].prompt_ids, { maxTokens: 12, ignoreEos: true }));
    assert.ok(full.text.length > 3);
    const stopAt = full.text.slice(2, 4);
    const cut = await collect(engine, request(cases[1].prompt_ids, { maxTokens: 12, ignoreEos: true, stop: [stopAt] }));
    assert.equal(cut.text, full.text.slice(0, full.text.indexOf(stopAt)));
    assert.equal(cut.finish?.finishReason, 'stop');
    assert.equal(cut.finish?.stopReason, stopAt);
    const byId = await collect(engine, request(cases[1].prompt_ids, { maxTokens: 12, stopTokenIds: [full.tokens[3]] }));
    assert.deepEqual(byId.tokens, full.tokens.slice(0, 4));
    assert.equal(byId.finish?.finishReason, 'stop');
    assert.equal(byId.finish?.stopReason, full.tokens[3]);
  });

  test('abort frees the sequence within a step; a full queue and an over-long request are rejected at once', async () => {
    const engine = await startEngine(await fixtureExport('fast'), { maxNumSeqs: 1, maxQueue: 1, maxModelLen: 512 });
    const controller = new AbortController();
    let seen = 0;
    let running: () => void = () => {};
    const started = new Promise<void>((r) => (running = r));
    const long = collect(engine, request([1, 2, 3], { maxTokens: 400, ignoreEos: true }), controller.signal, () => {
      running();
      if (++seen === 5) controller.abort();
    });
    // While it runs, one more waits and the next is refused (requests reach the worker in order).
    await started;
    const waiting = collect(engine, request([4, 5, 6], { maxTokens: 4, ignoreEos: true }));
    await assert.rejects(
      collect(engine, request([7], { maxTokens: 4 })),
      (err: Error) => err instanceof Error && (err as QueueFullError).status === 429,
    );
    const aborted = await long;
    assert.equal(aborted.finish?.finishReason, 'abort');
    assert.ok(aborted.tokens.length < 400);
    assert.equal((await waiting).tokens.length, 4);
    const stats = await engine.stats();
    assert.equal(stats.running, 0);
    assert.equal(stats.waiting, 0);
    await assert.rejects(
      collect(engine, request(new Array(500).fill(9), { maxTokens: 100 })),
      /maximum context length is 512 tokens.*600 tokens \(500 in the prompt, 100 for the completion\)/,
    );
  });

  test('the main thread keeps running timers during a long prefill in the worker', async () => {
    const src = join(tempDir(), 'wide');
    writeRandomCheckpoint(src, { hiddenSize: 256, intermediateSize: 1024, numLayers: 6, numHeads: 8, numKvHeads: 4, headDim: 32, vocabSize: 4096 });
    const out = `${src}-export`;
    await exportModel({ modelDir: src, outDir: out });
    const engine = await startEngine(out, { maxNumBatchedTokens: 4096 });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const started = performance.now();
    const r = await collect(
      engine,
      request(
        // 1,000 tokens: a prefill of most of a second here (3,000 took eight), far more 5 ms ticks than a blocked thread would see.
        Array.from({ length: 1000 }, (_, i) => 100 + i),
        { maxTokens: 1 },
      ),
    );
    const elapsed = performance.now() - started;
    clearInterval(timer);
    assert.equal(r.tokens.length, 1);
    // A blocked main thread would see ~0 ticks; allow for timer coarseness on a busy CI box.
    assert.ok(ticks >= Math.floor(elapsed / 5 / 4), `${ticks} ticks in ${elapsed.toFixed(0)} ms`);
  });

  test('a crashed worker ends requests in flight with an error, then the engine restarts and serves', async () => {
    const engine = await startEngine(await fixtureExport('fast'));
    let running: () => void = () => {};
    const started = new Promise<void>((r) => (running = r));
    const inflight = collect(engine, request([1, 2, 3], { maxTokens: 30000, ignoreEos: true }), undefined, () => running());
    await started;
    crash(engine);
    await assert.rejects(inflight, (err: Error & { status?: number }) => err.status === 503);
    // A generous bound: a restart loads the session again, slow on a loaded 2-core box.
    for (let i = 0; i < 1200 && engine.state !== 'ready'; i++) await sleep(25);
    assert.equal(engine.state, 'ready');
    const r = await collect(engine, request(cases[0].prompt_ids));
    assert.deepEqual(r.tokens, cases[0].greedy_ids);
  });

  test('without --max-num-batched-tokens the prefill chunk follows the device (64 tokens on CPU)', async () => {
    const engine = await startEngine(await fixtureExport('fast'), { maxNumBatchedTokens: null });
    assert.equal(engine.info?.device, 'cpu');
    assert.equal(engine.info?.limits.maxNumBatchedTokens, 64);
    // A prompt longer than one chunk still completes, in several steps.
    const prompt = Array.from({ length: 100 }, (_, i) => 1000 + i);
    const before = (await engine.stats()).steps;
    const r = await collect(engine, request(prompt, { maxTokens: 2, ignoreEos: true }));
    assert.equal(r.tokens.length, 2);
    // ceil(100 / 64) = 2 prefill steps, then one decode step.
    assert.equal((await engine.stats()).steps - before, 3);
  });

  test('--kv-cache-prefault writes the KV budget at start, and generation is unchanged', async () => {
    const dir = await fixtureExport('fast');
    const budget = 192 * 2 ** 20;
    const plain = await startEngine(dir, { kvCacheMemory: budget });
    assert.equal(plain.info?.kvPrefaultedBytes, 0);
    const touched = await startEngine(dir, { kvCacheMemory: budget, kvCachePrefault: true });
    const bytes = touched.info!.kvPrefaultedBytes;
    // The buffers hold the whole budget (rounded down to whole 64-token blocks).
    assert.ok(bytes > 0.9 * budget && bytes <= budget, `${bytes} bytes prefaulted`);
    const r = await collect(touched, request(cases[0].prompt_ids));
    assert.deepEqual(r.tokens, cases[0].greedy_ids);
    // With prefaulted buffers, prompts prefill in a staging buffer and move into the decoding
    // one at their first decode: prompts joining while others decode still give their own.
    const together = await Promise.all(cases.map((c) => collect(touched, request(c.prompt_ids))));
    together.forEach((t, i) => assert.deepEqual(t.tokens, cases[i].greedy_ids, `case ${i}`));
  });

  test('the worker is restarted after a death until it dies 3 times within a minute, and the log says so', async () => {
    const errors: string[] = [];
    const log = { info() {}, warn() {}, error: (o: object | string, msg?: string) => errors.push(msg ?? String(o)) };
    const engine = await Engine.start(engineOptions(await fixtureExport('fast')), log, CRASHING_WORKER);
    engines.push(engine);
    const restarts = () => errors.filter((e) => e.includes('exited; restarting')).length;
    for (let death = 1; death <= 2; death++) {
      crash(engine);
      for (let i = 0; i < 1200 && !(restarts() === death && engine.state === 'ready'); i++) await sleep(25);
      assert.equal(engine.state, 'ready', `restarted after death ${death}`);
    }
    crash(engine);
    for (let i = 0; i < 1200 && engine.state !== 'down'; i++) await sleep(25);
    assert.equal(engine.state, 'down');
    assert.equal(restarts(), 2);
    assert.ok(
      errors.some((e) => /died 3 times within a minute; not restarting/.test(e)),
      errors.join('\n'),
    );
  });
});
