import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseScenarios } from './compare.js';
import { estimateRunS } from './compare_estimate.js';
import { formatDuration } from './compare_types.js';

test('scenarios: load rows with an optional request count, and agent rows', () => {
  assert.deepEqual(parseScenarios('12:4:1, 4096:128:1:2,agent:12000,agent:300:8'), [
    { kind: 'load', inputLen: 12, outputLen: 4, concurrency: 1, numPrompts: null },
    { kind: 'load', inputLen: 4096, outputLen: 128, concurrency: 1, numPrompts: 2 },
    { kind: 'agent', promptTokens: 12000, outputLen: 32 },
    { kind: 'agent', promptTokens: 300, outputLen: 8 },
  ]);
  assert.throws(() => parseScenarios('128:128'), /expected input:output:concurrency/);
  assert.throws(() => parseScenarios('8:8:0'), /at least 1/);
});

test('the duration estimate grows with the work, and there is none without a probe', () => {
  const p = { prefillTokS: 100, tpotMs: 20 };
  const [short, long, wide, agent] = parseScenarios('128:128:1:4,1024:128:1:4,128:128:8:16,agent:12000');
  assert.ok(estimateRunS(long, p, 8) > estimateRunS(short, p, 8));
  // 16 requests 8 at a time take two rounds of decode, not sixteen.
  assert.ok(estimateRunS(wide, p, 8) < 4 * estimateRunS(short, p, 8));
  assert.ok(estimateRunS(agent, p, 8) > 12000 / 100);
  assert.ok(Number.isNaN(estimateRunS(short, null, 8)));
  assert.deepEqual([formatDuration(42), formatDuration(600), formatDuration(7500)], ['42 s', '10 min', '2 h 5 min']);
});
