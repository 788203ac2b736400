import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyLimitError, QueueFullError } from '../errors.js';
import type { KvCostModel } from '../runtime/kv_cost.js';
import { ChunkGrid } from './chunk_grid.js';
import { KvCacheManager, type Lookup } from './kv_cache_manager.js';
import { prefixKeys } from './prefix_cache.js';
import { Scheduler, type StepPlan } from './scheduler.js';
import type { CacheableSequence } from './sequence.js';

// The scheduler alone, with no model: sequences are token counts, the KV cost is slots.
const perToken: KvCostModel = { slotsFor: (lengths) => lengths.reduce((a, b) => a + b, 0) };
let nextId = 0;
const seq = (promptLength: number, warmUp = false): CacheableSequence => ({
  id: nextId++,
  tokens: Array.from({ length: promptLength }, (_, i) => i),
  promptLength,
  numComputed: 0,
  state: 'waiting',
  preemptions: 0,
  cachedTokens: null,
  warmUp,
  prefixKeys: prefixKeys(),
  prompt: null,
});
const warmUp = (promptLength: number) => seq(promptLength, true);

function scheduler(o: Partial<{ maxNumSeqs: number; maxNumBatchedTokens: number; maxQueue: number; kvBudgetTokens: number }> = {}) {
  return new Scheduler({ maxNumSeqs: 4, maxNumBatchedTokens: 32, maxQueue: 8, kvBudgetTokens: 10_000, ...o }, new KvCacheManager(perToken));
}

/** Runs a planned step as the engine would: the model "runs", then each decoded sequence takes a token. */
function step(s: Scheduler, plan: StepPlan<CacheableSequence> = s.schedule()): StepPlan<CacheableSequence> {
  const { promptDone } = s.update(plan);
  for (const d of plan.decode) d.tokens.push(0);
  if (promptDone) promptDone.tokens.push(0);
  return plan;
}

test('prompts prefill in fixed chunks at fixed positions, one prompt per step, FIFO', () => {
  const s = scheduler();
  const a = seq(70);
  const b = seq(10);
  s.add(a);
  s.add(b);
  const chunks: Array<[number, number, number]> = [];
  for (let i = 0; i < 6; i++) {
    const plan = step(s);
    if (plan.prefill) chunks.push([plan.prefill.seq.id, plan.prefill.start, plan.prefill.end]);
  }
  assert.deepEqual(chunks, [
    [a.id, 0, 32],
    [a.id, 32, 64],
    [a.id, 64, 70],
    [b.id, 0, 10],
  ]);
  assert.equal(a.state, 'decode');
  assert.equal(a.tokens.length, 70 + 4, 'a decoded in every step after its prompt');
});

test("with message starts marked, a prompt's chunks end where each message starts but an assistant's, and at most a chunk apart", () => {
  const [M, A] = [999, 998];
  const s = new Scheduler(
    { maxNumSeqs: 4, maxNumBatchedTokens: 32, maxQueue: 8, kvBudgetTokens: 10_000 },
    new KvCacheManager(perToken),
    new ChunkGrid(32, new Set([M]), new Set([A])),
  );
  const a = seq(90);
  for (const at of [0, 40, 45, 60]) a.tokens[at] = M;
  a.tokens[61] = A;
  s.add(a);
  const chunks: Array<[number, number]> = [];
  for (let i = 0; i < 5; i++) {
    const plan = step(s);
    if (plan.prefill) chunks.push([plan.prefill.start, plan.prefill.end]);
  }
  assert.deepEqual(chunks, [
    [0, 32],
    [32, 40],
    [40, 45],
    [45, 77],
    [77, 90],
  ]);
});

test('admission stops at max-num-seqs; the queue bound counts only requests that must wait', () => {
  const s = scheduler({ maxNumSeqs: 2, maxQueue: 1 });
  const seqs = [seq(4), seq(4), seq(4)];
  for (const x of seqs) s.add(x); // 2 free batch slots + 1 queue place
  assert.throws(() => s.add(seq(4)), QueueFullError);
  for (let i = 0; i < 5; i++) step(s);
  assert.equal(s.numRunning, 2);
  assert.equal(s.numWaiting, 1);
  assert.equal(seqs[2].state, 'waiting');
  s.remove(seqs[0]);
  for (let i = 0; i < 2; i++) step(s);
  assert.equal(seqs[2].state, 'decode');
});

test('a batch outgrowing the KV budget preempts its youngest sequence, which is recomputed without its last token and samples nothing', () => {
  const s = scheduler({ kvBudgetTokens: 40 });
  const old = seq(16);
  const young = seq(16);
  s.add(old);
  s.add(young);
  let plan: StepPlan<CacheableSequence> | null = null;
  let generated = 0;
  for (let i = 0; i < 20; i++) {
    const next = s.schedule();
    if (next.preempted.length > 0) {
      plan = next;
      break;
    }
    step(s, next);
  }
  assert.ok(plan, 'a preemption happened');
  assert.deepEqual(plan.preempted, [young]);
  assert.equal(young.preemptions, 1);
  assert.deepEqual(plan.decode, [old]);
  generated = young.tokens.length - young.promptLength;
  assert.ok(generated > 0);
  // Its recompute (here at once: all but its last token fit beside the old one) covers
  // the tokens it had, then it decodes its last token again; the recompute samples nothing.
  assert.equal(plan.prefill?.seq, young);
  assert.deepEqual([plan.prefill!.start, plan.prefill!.end], [0, young.tokens.length - 1]);
  assert.equal(s.update(plan).promptDone, null);
  assert.equal(young.tokens.length - young.promptLength, generated);
  assert.equal(young.state, 'decode');
  assert.equal(young.numComputed, young.tokens.length - 1);
});

test('a sequence the caller holds back keeps its place and cache but sits out decode steps', () => {
  const s = scheduler();
  const a = seq(4);
  const b = seq(4);
  s.add(a);
  s.add(b);
  for (let i = 0; i < 3; i++) step(s);
  const plan = step(
    s,
    s.schedule((x) => x !== a),
  );
  assert.deepEqual(plan.decode, [b]);
  assert.equal(a.state, 'decode');
  assert.deepEqual(step(s).decode, [a, b]);
});

test('a warm-up runs only while nothing else runs or waits, and is given up at the first step a request waits', () => {
  const s = scheduler();
  const a = seq(8);
  const warm = warmUp(96);
  s.add(a);
  s.addWarmUp(warm);
  // A request runs: the warm-up waits, though there is room beside it.
  for (let i = 0; i < 3; i++) assert.equal(step(s).prefill?.seq === warm, false);
  assert.equal(warm.state, 'waiting');
  s.remove(a);
  const first = step(s);
  assert.deepEqual(first.admitted, [warm]);
  assert.deepEqual([first.prefill?.seq, first.prefill?.start, first.prefill?.end], [warm, 0, 32]);
  assert.equal(s.numRunning, 0, 'it is not a request');
  assert.equal(s.numWaiting, 0);
  // A request arrives: the next step gives the warm-up up and admits the request.
  const b = seq(8);
  s.add(b);
  const next = s.schedule();
  assert.deepEqual(next.dropped, [warm]);
  assert.deepEqual(next.kv.free, [warm.id], 'its row is freed');
  assert.equal(warm.state, 'finished');
  assert.deepEqual(next.admitted, [b]);
  assert.equal(next.prefill?.seq, b);
  step(s, next);
  for (let i = 0; i < 3; i++) step(s);
  s.remove(b);
  assert.equal(s.hasWork(), false, 'a dropped warm-up does not come back');
});

test('a warm-up that completes leaves the scheduler and samples nothing; beyond max-num-seqs the oldest queued is forgotten', () => {
  const s = scheduler({ maxNumSeqs: 2 });
  const [w1, w2, w3] = [warmUp(64), warmUp(40), warmUp(32)];
  assert.equal(s.addWarmUp(w1), null);
  assert.equal(s.addWarmUp(w2), null);
  assert.equal(s.addWarmUp(w3), w1, 'the oldest queued is forgotten');
  const done: CacheableSequence[] = [];
  const chunks: Array<[number, number, number]> = [];
  for (let i = 0; i < 4; i++) {
    const plan = s.schedule();
    if (plan.prefill) chunks.push([plan.prefill.seq.id, plan.prefill.start, plan.prefill.end]);
    const outcome = s.update(plan);
    assert.equal(outcome.promptDone, null);
    if (outcome.warmUpDone) done.push(outcome.warmUpDone);
  }
  assert.deepEqual(chunks, [
    [w2.id, 0, 32],
    [w2.id, 32, 40],
    [w3.id, 0, 32],
  ]);
  assert.deepEqual(done, [w2, w3]);
  assert.equal(w2.state, 'finished');
  assert.equal(s.hasWork(), false);
});

test('a warm-up whose prompt is all cached already is not admitted', () => {
  class AllCached extends KvCacheManager {
    override lookUp(x: CacheableSequence, target: number): Lookup {
      return { cached: x.promptLength === 64 ? target : 0, slots: [] };
    }
  }
  const s = new Scheduler({ maxNumSeqs: 4, maxNumBatchedTokens: 32, maxQueue: 8, kvBudgetTokens: 10_000 }, new AllCached(perToken));
  const cached = warmUp(64);
  const fresh = warmUp(32);
  s.addWarmUp(cached);
  s.addWarmUp(fresh);
  const plan = s.schedule();
  assert.deepEqual(plan.admitted, [fresh]);
  assert.equal(plan.prefill?.seq, fresh);
});

const keyed = (name: string, limits: { maxConcurrent?: number | null; maxQueued?: number | null } = {}) => {
  const s = seq(8);
  return Object.assign(s, { tenant: { name, maxConcurrent: limits.maxConcurrent ?? null, maxQueued: limits.maxQueued ?? null } });
};

/** Steps until nothing waits, returning the order in which sequences were admitted. */
function admissionOrder(s: Scheduler, finishAfterPrefill = true): number[] {
  const order: number[] = [];
  for (let i = 0; i < 1000 && s.numWaiting > 0; i++) {
    const plan = step(s);
    order.push(...plan.admitted.map((a) => a.id));
    // Each finishes once its prompt is done, so a slot frees at every admission.
    if (finishAfterPrefill) for (const d of plan.decode) s.remove(d);
  }
  return order;
}

test('keys take turns: while a key has requests waiting, each other key gets at most one admission before its next', () => {
  const s = scheduler({ maxNumSeqs: 2, maxQueue: 100 });
  const a = Array.from({ length: 10 }, () => keyed('a'));
  const b = Array.from({ length: 3 }, () => keyed('b'));
  for (const x of a) s.add(x);
  for (const x of b) s.add(x);
  const order = admissionOrder(s);
  const ids = (xs: CacheableSequence[]) => xs.map((x) => x.id);
  // a first (it came first), then alternating while b waits, then a's rest in order.
  assert.deepEqual(order, [a[0].id, b[0].id, a[1].id, b[1].id, a[2].id, b[2].id, ...ids(a.slice(3))]);
});

test('with one key, or none, admission stays FIFO', () => {
  for (const make of [() => keyed('only'), () => seq(8)]) {
    const s = scheduler({ maxNumSeqs: 2, maxQueue: 100 });
    const xs = Array.from({ length: 6 }, make);
    for (const x of xs) s.add(x);
    assert.deepEqual(
      admissionOrder(s),
      xs.map((x) => x.id),
    );
  }
});

test("a key's max_concurrent bounds its running requests (the rest wait, others pass), and max_queued its waiting ones", () => {
  const s = scheduler({ maxNumSeqs: 4, maxQueue: 100 });
  const a = Array.from({ length: 3 }, () => keyed('a', { maxConcurrent: 1, maxQueued: 2 }));
  const b = keyed('b');
  for (const x of a) s.add(x);
  // a has one running slot to come and two waiting: a fourth is refused, naming its limit.
  assert.throws(
    () => s.add(keyed('a', { maxConcurrent: 1, maxQueued: 2 })),
    (err: unknown) => err instanceof KeyLimitError && err.limit === 'max_queued' && err.status === 429 && /max_queued 2/.test(err.message),
  );
  s.add(b);
  const admitted: number[] = [];
  for (let i = 0; i < 6; i++) admitted.push(...step(s).admitted.map((x) => x.id));
  // a's first runs; its others wait behind max_concurrent 1 while b is admitted.
  assert.deepEqual(admitted, [a[0].id, b.id]);
  assert.equal(s.numWaiting, 2);
  s.remove(a[0]);
  assert.deepEqual(
    step(s).admitted.map((x) => x.id),
    [a[1].id],
  );
});
