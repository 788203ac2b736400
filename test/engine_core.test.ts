import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { EngineCore } from '../src/engine/engine_core.js';
import type { EngineEvent } from '../src/engine/types.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport, request } from './support/engine.js';
import { FIXTURE_REFERENCE, openRunner, type ReferenceCase } from './support/runner.js';

const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;

// The worker handles messages while ONNX Runtime computes a step, so an abort can land
// between a step's start and its end. CI once failed here with "sequence 0 has no KV row".
test('an abort that arrives while a step runs takes effect when the step ends, and the other rows keep their caches', async () => {
  const dir = await fixtureExport('fast');
  const core = new EngineCore(await openRunner(dir), QwenTokenizer.fromDir(dir), {
    maxNumSeqs: 4,
    maxNumBatchedTokens: 64,
    maxQueue: 8,
    maxModelLen: 512,
    kvCacheTokens: 4096,
  });
  // The aborted request holds row 0, so freeing it moves the survivor's cache into its place.
  const doomed = request(cases[0].prompt_ids, { maxTokens: 100, ignoreEos: true });
  const survivor = request(cases[1].prompt_ids, { maxTokens: cases[1].greedy_ids.length, ignoreEos: true });
  core.submit(doomed);
  core.submit(survivor);
  const events: EngineEvent[] = [];
  const tokensOf = (id: string) => events.filter((e) => e.requestId === id).flatMap((e) => e.tokenIds);
  while (tokensOf(survivor.requestId).length < 2) {
    await core.step();
    events.push(...core.takeEvents());
  }
  const running = core.step();
  core.abort(doomed.requestId);
  assert.equal(core.takeEvents().length, 0, 'nothing ends before the step does');
  await running;
  events.push(...core.takeEvents());
  const end = events.find((e) => e.requestId === doomed.requestId && e.finishReason !== null);
  assert.equal(end?.finishReason, 'abort');
  assert.equal(core.stats().running, 1);
  while (core.hasWork()) {
    await core.step();
    events.push(...core.takeEvents());
  }
  assert.deepEqual(tokensOf(survivor.requestId), cases[1].greedy_ids);
  assert.equal(core.stats().running, 0);
});
