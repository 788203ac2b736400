import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyLimitError } from '../errors.js';
import type { ApiKey } from './api_keys.js';
import { KeyLimiter, openAIRateHeaders, resetText } from './key_limits.js';

const key = (tokensPerMinute: number | null, maxConcurrent: number | null = null, maxQueued: number | null = null): ApiKey => ({
  name: 'k',
  digest: Buffer.alloc(32),
  limits: { tokensPerMinute, maxConcurrent, maxQueued },
});

test("OpenAI's reset durations", () => {
  assert.deepEqual([0, 20, 999, 1000, 1500, 59_999, 60_000, 361_000].map(resetText), [
    '0ms',
    '20ms',
    '999ms',
    '1s',
    '1.5s',
    '59.999s',
    '1m0s',
    '6m1s',
  ]);
});

test('tokens_per_minute: refused once the last 60 s hold the limit, until enough of them are older; the reset says when', () => {
  let now = 0;
  const limiter = new KeyLimiter({ maxNumSeqs: 4, maxQueue: 8 }, () => now);
  const k = key(100);
  const done: Array<() => void> = [];
  limiter.begin(k, (cb) => done.push(cb));
  limiter.record('k', 60);
  now = 10_000;
  limiter.begin(k, (cb) => done.push(cb));
  limiter.record('k', 50);
  now = 20_000;
  assert.throws(
    () => limiter.begin(k, () => {}),
    (e: unknown) => e instanceof KeyLimitError && e.limit === 'tokens_per_minute' && e.retryAfter === 40,
  );
  const h = openAIRateHeaders(limiter.state(k));
  assert.equal(h['x-ratelimit-remaining-tokens'], '0');
  assert.equal(h['x-ratelimit-reset-tokens'], '50s');
  // At 60 s the first 60 tokens are a minute old: 50 remain, below the limit.
  now = 60_000;
  limiter.begin(k, () => {});
  assert.equal(limiter.state(k).tokens?.remaining, 50);
});

test('requests in flight count against max_concurrent + max_queued in the headers, and leave when done', () => {
  const limiter = new KeyLimiter({ maxNumSeqs: 4, maxQueue: 8 });
  const k = key(null, 2, null);
  const done: Array<() => void> = [];
  limiter.begin(k, (cb) => done.push(cb));
  limiter.begin(k, (cb) => done.push(cb));
  // max_queued unset: the server's --max-queue stands in.
  assert.deepEqual(limiter.state(k).requests, { limit: 10, remaining: 8 });
  for (const d of done) d();
  assert.deepEqual(limiter.state(k).requests, { limit: 10, remaining: 10 });
  assert.equal(limiter.state(key(null)).requests, null);
});

test('across models: max_concurrent is one gate for all models (first come, first served) and max_concurrent + max_queued bounds requests in flight', async () => {
  const limiter = new KeyLimiter({ maxNumSeqs: 4, maxQueue: 8, acrossModels: true });
  const k = key(null, 1, 1);
  const order: string[] = [];
  /** A request as app.ts makes one; `end` is its reply's close. */
  const request = (tag: string) => {
    let end = () => {};
    const admitted = limiter.begin(k, (cb) => (end = cb)).then(() => order.push(tag));
    return { admitted, end: () => end() };
  };
  const first = request('first');
  await first.admitted;
  const second = request('second');
  // Two in flight (max_concurrent 1 + max_queued 1): a third is refused, whatever model it names.
  assert.throws(
    () => limiter.begin(k, () => {}),
    (e: unknown) => e instanceof KeyLimitError && e.limit === 'max_queued' && /2 requests in flight/.test(e.message),
  );
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(order, ['first'], 'the second waits while the first holds max_concurrent');
  first.end();
  await second.admitted;
  assert.deepEqual(order, ['first', 'second']);
  // One that leaves while it waits never goes on, and frees its place.
  const third = request('third');
  const gone = third.admitted.then(
    () => 'admitted',
    (e: unknown) => (e as Error).constructor.name,
  );
  third.end();
  assert.equal(await gone, 'AbortedError');
  second.end();
  await request('fourth').admitted;
  assert.deepEqual(order, ['first', 'second', 'fourth']);
});
