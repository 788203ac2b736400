import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OffThreadTokenizer } from '../src/text/offthread_tokenizer.js';
import { readTokenizerFiles } from '../src/text/token_vocabulary.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { TokenizerThread } from '../src/text/tokenizer_thread_client.js';
import { FIXTURE_DIR } from './support/runner.js';

test('background encodes run on the tokenizer thread only when no request job waits', async () => {
  // An instance of its own, so its thread is new (fromDir's would be shared with other tests).
  const tokenizer = new QwenTokenizer(readTokenizerFiles(FIXTURE_DIR));
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

test('models sharing a tokenizer share its thread; a job after every user left loads it again', async () => {
  const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
  const a = TokenizerThread.acquire(tokenizer, FIXTURE_DIR);
  const b = TokenizerThread.acquire(QwenTokenizer.fromDir(FIXTURE_DIR), FIXTURE_DIR);
  assert.equal(a, b, 'one thread for one tokenizer');
  const long = 'tokens on a shared thread. '.repeat(400);
  const [x, y] = await Promise.all([a.run({ type: 'encode', text: long }, 30_000), b.run({ type: 'encode', text: long }, 30_000, true)]);
  assert.deepEqual(x.ids, tokenizer.encode(long));
  assert.deepEqual(y.ids, x.ids);
  a.release();
  b.release();
  const again = await a.run({ type: 'decode', ids: x.ids!, skipSpecialTokens: false }, 30_000);
  assert.equal(again.text, long);
  // The two codecs of two servers on one model folder close independently.
  const one = new OffThreadTokenizer(tokenizer, FIXTURE_DIR, 30_000);
  const two = new OffThreadTokenizer(tokenizer, FIXTURE_DIR, 30_000);
  one.start();
  two.start();
  await one.close();
  const busy = two.encode(long);
  assert.ok(ports() > idlePorts, 'a job under way keeps the process alive');
  assert.deepEqual(await busy, x.ids);
  await two.close();
  await assert.rejects(one.encode(long), /closed/);
  // The thread is kept a while for another model, but never keeps the process from exiting.
  assert.equal(ports(), idlePorts);
});

/** Message ports holding the event loop open (a busy worker thread's among them). */
const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;
const idlePorts = ports();
