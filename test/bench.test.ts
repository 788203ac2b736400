import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { renderChart } from '../src/bench/chart.js';
import { markdownTable, randomPrompts, runLoadBench, summarize } from '../src/bench/load_bench.js';
import { fixtureExport } from './support/engine.js';
import { startTestServer, type TestServer } from './support/server.js';

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
