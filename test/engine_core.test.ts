import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { EngineCore } from '../src/engine/engine_core.js';
import type { EngineEvent, GenerateRequest } from '../src/engine/types.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport, request } from './support/engine.js';
import { FIXTURE_DIR, FIXTURE_REFERENCE, openRunner, type ReferenceCase } from './support/runner.js';

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
    kvBudgetTokens: 4096,
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

const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);

/** Runs requests on one core to the end (in this thread: the scheduler's plans are seen as they are). */
async function run(kvBudgetTokens: number, requests: GenerateRequest[]): Promise<EngineEvent[]> {
  const runner = await openRunner(await fixtureExport('fast'));
  const core = new EngineCore(runner, tokenizer, { maxNumSeqs: 4, maxNumBatchedTokens: 32, maxQueue: 8, maxModelLen: 512, kvBudgetTokens });
  for (const r of requests) core.submit(r);
  const events: EngineEvent[] = [];
  while (core.hasWork()) {
    await core.step();
    events.push(...core.takeEvents());
  }
  return events;
}

test('prompt scores survive a preemption mid-prompt: computed once, equal to an undisturbed run', async () => {
  const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + ((i * 37) % 2000));
  // A (126 tokens) decodes while B (120 tokens, scored) prefills in chunks of 32; once A
  // needs a 192-slot bucket, two rows no longer fit 320 slots and B, the youngest, is
  // preempted after two chunks, then recomputed when A is done.
  const a = request(ids(126, 1000), { maxTokens: 6, ignoreEos: true });
  const b = () => request(ids(120, 5000), { maxTokens: 2, ignoreEos: true, promptLogprobs: 2 });
  const busy = b();
  const events = await run(320, [a, busy]);
  const mine = events.filter((e) => e.requestId === busy.requestId);
  const finish = mine.find((e) => e.finishReason)!;
  assert.equal(finish.metrics!.preemptions, 1, 'B was preempted');
  const scored = mine.filter((e) => e.promptLogprobs);
  assert.equal(scored.length, 1, 'the prompt scores come once, with the first event');
  // B's prompt was cut before it finished: its first event follows A's end.
  const aEnd = events.findIndex((e) => e.requestId === a.requestId && e.finishReason);
  assert.ok(events.indexOf(scored[0]) > aEnd, 'B was preempted mid-prompt and recomputed after A');
  const alone = (await run(4096, [b()])).find((e) => e.promptLogprobs)!;
  const got = scored[0].promptLogprobs!;
  assert.equal(got.length, 120);
  assert.equal(got[0], null);
  got.slice(1).forEach((lp, p) => {
    const want = alone.promptLogprobs![p + 1]!;
    assert.equal(lp!.token, want.token);
    assert.ok(Math.abs(lp!.logprob - want.logprob) < 1e-4, `position ${p + 1}: ${lp!.logprob} vs ${want.logprob}`);
    assert.deepEqual(
      lp!.top.map((t) => t.token),
      want.top.map((t) => t.token),
    );
  });
  // Its generated tokens are those of the undisturbed run too.
  const tokens = (evs: EngineEvent[], id: string) => evs.filter((e) => e.requestId === id).flatMap((e) => e.tokenIds);
  const aloneRun = b();
  assert.deepEqual(tokens(mine, busy.requestId), tokens(await run(4096, [aloneRun]), aloneRun.requestId));
});
