import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OffThreadTokenizer } from '../src/text/offthread_tokenizer.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { FIXTURE_DIR } from './support/runner.js';

test('background encodes run on the tokenizer thread only when no request job waits', async () => {
  const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
  const codec = new OffThreadTokenizer(tokenizer, FIXTURE_DIR, 30_000);
  try {
    const done: string[] = [];
    const short = 'A conversation, warmed ahead.';
    const long = 'the quick brown fox jumps over the lazy dog. '.repeat(400);
    // Queued before the thread has loaded: the request's job goes first, whatever the order.
    const jobs = [
      codec.encodeInBackground(short).then((ids) => (done.push('background 1'), ids)),
      codec.encodeInBackground(long).then((ids) => (done.push('background 2'), ids)),
      codec.encode(long).then((ids) => (done.push('request'), ids)),
    ];
    const [a, b, c] = await Promise.all(jobs);
    assert.deepEqual(done, ['request', 'background 1', 'background 2']);
    // The same ids as encoding on the calling thread.
    assert.deepEqual(a, tokenizer.encode(short));
    assert.deepEqual(b, tokenizer.encode(long));
    assert.deepEqual(c, b);
  } finally {
    await codec.close();
  }
});
