import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { renderChart } from '../src/bench/chart.js';
import { markdownTable, randomPrompts, runLoadBench, sharedPrefixPrompts, summarize } from '../src/bench/load_bench.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/bench.test', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer(await fixtureExport('fast'));
  });
  after(async () => {
    await s.close();
  });

  test('summaries: mean, median and p99 by linear interpolation', () => {
    assert.deepEqual(summarize([]), { mean: 0, median: 0, p99: 0, max: 0 });
    const r = summarize([4, 1, 3, 2]);
    assert.equal(r.mean, 2.5);
    assert.equal(r.median, 2.5);
    assert.ok(Math.abs(r.p99 - 3.97) < 1e-9);
    assert.equal(r.max, 4);
    assert.deepEqual(randomPrompts(2, 5, 7, 'completions'), randomPrompts(2, 5, 7, 'completions'), 'seeded');
    assert.equal((randomPrompts(1, 5, 7, 'completions')[0] as number[]).length, 5);
  });

  test('the load generator measures our server: every request completes with the asked lengths', async () => {
    for (const endpoint of ['completions', 'chat'] as const) {
      const { levels } = await runLoadBench({
        baseUrl: `${s.url}/v1`,
        model: null,
        apiKey: null,
        endpoint,
        inputLen: 16,
        outputLen: 6,
        numPrompts: 6,
        concurrency: [1, 3],
        requestRate: null,
        seed: 1,
        timeout: 60,
      });
      assert.equal(levels.length, 2);
      for (const l of levels) {
        assert.equal(l.completed, 6, JSON.stringify(l.errors));
        assert.equal(l.failed, 0);
        assert.equal(l.meanOutputTokens, 6);
        if (endpoint === 'completions') assert.equal(l.meanInputTokens, 16);
        assert.ok(l.ttftMs.median > 0 && l.e2eMs.median >= l.ttftMs.median);
        assert.ok(l.tpotMs.mean > 0 && l.outputThroughput > 0);
      }
      assert.match(markdownTable(levels), /\| 3 \|/);
      const png = await renderChart(levels, 'test');
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], 'a PNG');
    }
  });

  test('the engine microbenchmark script: usage on --help, named bad flags, and rows for each batch and context', async () => {
    const script = new URL('../scripts/bench_engine.js', import.meta.url).pathname;
    const run = (args: string[]) => spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' });
    const help = run(['--help']);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /usage: bench_engine --model/);
    const bogus = run(['--bogus']);
    assert.equal(bogus.status, 2);
    assert.match(bogus.stderr, /--bogus[\s\S]*usage:/);
    const json = join(tempDir(), 'rows.json');
    const ok = run([
      '--model',
      await fixtureExport('fast'),
      '--batch',
      '1,2',
      '--context',
      '16,40',
      '--steps',
      '2',
      '--chunk',
      '8',
      '--threads',
      '1',
      '--json',
      json,
    ]);
    assert.equal(ok.status, 0, ok.stderr);
    const rows = JSON.parse(readFileSync(json, 'utf8')) as Array<{
      layout: string;
      dtype: string;
      batch: number;
      context: number;
      decodeMsPerStep: number;
      prefillTokensPerSecond: number;
    }>;
    assert.deepEqual(
      rows.map((r) => [r.layout, r.dtype, r.batch, r.context]),
      [
        ['fast', 'fp32', 1, 16],
        ['fast', 'fp32', 2, 16],
        ['fast', 'fp32', 1, 40],
        ['fast', 'fp32', 2, 40],
      ],
    );
    for (const r of rows) assert.ok(r.decodeMsPerStep > 0 && r.prefillTokensPerSecond > 0);
    // --kv-cache-prefault: the prompt runs in a runner reserved for it and written first, as the server's.
    const prefaulted = run([
      '--model',
      await fixtureExport('fast'),
      '--batch',
      '1',
      '--context',
      '16,100',
      '--steps',
      '1',
      '--chunk',
      '8',
      '--threads',
      '1',
      '--kv-cache-prefault',
    ]);
    assert.equal(prefaulted.status, 0, prefaulted.stderr);
    assert.match(prefaulted.stdout, /batch 1 context 16: prefill \d+ tok\/s[\s\S]*batch 1 context 100: prefill \d+ tok\/s/);
  });

  test("the shared-prefix and multi-turn datasets: prompts share their prefix, conversations grow turn by turn, and the server's cache shows in the results", async () => {
    const base = { baseUrl: `${s.url}/v1`, model: null, apiKey: null, outputLen: 4, requestRate: null, seed: 2, timeout: 60 };
    const shared = sharedPrefixPrompts(3, 40, 5, 9, 'completions') as number[][];
    assert.deepEqual(shared[1].slice(0, 40), shared[0].slice(0, 40));
    assert.notDeepEqual(shared[1].slice(40), shared[0].slice(40));
    const prefix = await runLoadBench({
      ...base,
      endpoint: 'completions',
      dataset: 'shared-prefix',
      prefixLen: 128,
      inputLen: 8,
      numPrompts: 4,
      concurrency: [1],
    });
    assert.equal(prefix.levels[0].completed, 4);
    assert.equal(prefix.levels[0].meanInputTokens, 136);
    // The first computes the prefix; the other three take its 128 tokens (two 64-token blocks).
    assert.equal(prefix.levels[0].meanCachedTokens, (3 * 128) / 4);
    const talk = await runLoadBench({
      ...base,
      endpoint: 'chat',
      dataset: 'multi-turn',
      turns: 3,
      inputLen: 30,
      numPrompts: 2,
      concurrency: [2],
      thinking: false,
    });
    const turns = talk.levels[0].turns!;
    assert.equal(talk.levels[0].completed, 6);
    assert.deepEqual(
      turns.map((t) => t.turn),
      [1, 2, 3],
    );
    assert.ok(turns[1].promptTokens > turns[0].promptTokens && turns[2].promptTokens > turns[1].promptTokens, 'each turn sends the history');
    assert.equal(turns[0].cachedTokens, 0);
    // At least the first user message and answer: chunks end where the next user message starts.
    assert.ok(
      turns[2].cachedTokens > 0 && turns[2].cachedTokens >= turns[1].cachedTokens,
      `later turns hit the cache: ${turns.map((t) => t.cachedTokens)}`,
    );
    assert.match(markdownTable(talk.levels), /\| turn \| TTFT mean/);
    await assert.rejects(
      runLoadBench({ ...base, endpoint: 'completions', dataset: 'multi-turn', inputLen: 4, numPrompts: 1, concurrency: [1] }),
      /needs --endpoint chat/,
    );
    // --think-time: the user reads each answer before the next turn goes out.
    const reading = await runLoadBench({
      ...base,
      endpoint: 'chat',
      dataset: 'multi-turn',
      turns: 2,
      inputLen: 8,
      numPrompts: 1,
      concurrency: [1],
      thinking: false,
      thinkTime: 0.3,
    });
    const [first, second] = [...reading.levels[0].requests].sort((a, b) => a.sentAt - b.sentAt);
    assert.ok(
      second.sentAt - (first.sentAt + first.e2eMs) >= 280,
      `the second turn went out ${second.sentAt - first.sentAt - first.e2eMs} ms after the first answer ended`,
    );
  });
});
