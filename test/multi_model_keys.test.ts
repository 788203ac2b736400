import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { retrievalCheckpoint } from './support/retrieval_models.js';
import { FIXTURE_DIR, tempDir } from './support/runner.js';
import { keysFile } from './support/server.js';

describe('test/multi_model_keys.test', () => {
  // API keys in a server of two chat models and an embedding model: a key's limits hold
  // for the server, not for each model (spreading over models gets no more), and its
  // embedding requests count toward its tokens_per_minute.

  const work = tempDir('qwen3-multi-keys-');
  const KEYS = { conc: 'sk-conc-0123456789', tpm: 'sk-tpm-0123456789', alice: 'sk-alice-0123456789', bob: 'sk-bob-0123456789' };
  let server: RunningServer;

  before(async () => {
    const file = keysFile([
      { name: 'conc', key: KEYS.conc, limits: { max_concurrent: 1, max_queued: 1 } },
      { name: 'tpm', key: KEYS.tpm, limits: { tokens_per_minute: 4 } },
      { name: 'alice', key: KEYS.alice },
      { name: 'bob', key: KEYS.bob },
    ]);
    const config = parseServeConfig(
      [
        ...['--port', '0', '--threads', '1', '--cache-dir', join(work, 'cache'), '--kv-cache-memory', '64MiB', '--no-ui'],
        ...['--model', `a=${FIXTURE_DIR}`, '--model', `b=${FIXTURE_DIR}`, '--model', `e=${retrievalCheckpoint('embedding')}`],
        ...['--api-keys-file', file],
      ],
      {},
    )!;
    server = await startServer(config, { logger: pino({ level: 'silent' }) });
  });
  after(async () => {
    await server?.close();
  });

  function post(key: string, path: string, body: unknown, signal?: AbortSignal) {
    return fetch(`${server.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify(body),
      signal,
    });
  }

  const streamOn = (model: string, maxTokens: number) => ({ model, prompt: 'Count on.', max_tokens: maxTokens, stream: true, ignore_eos: true });

  test("max_concurrent and max_queued hold across models: while the key's one request runs on a, the next (on b) waits and one more is a 429", async () => {
    const first = new AbortController();
    const running = await post(KEYS.conc, '/v1/completions', streamOn('a', 1500), first.signal);
    assert.equal(running.status, 200);
    const reader = running.body!.getReader();
    await reader.read();
    // Two more on model b: one waits for the key's running request (max_queued 1), the other is refused at once.
    let firstEnded = false;
    const sent = [0, 1].map((i) =>
      post(KEYS.conc, '/v1/completions', streamOn('b', 4)).then(async (r) => ({ i, r, firstEnded, text: await r.text() })),
    );
    const refused = await Promise.race(sent);
    assert.equal(refused.r.status, 429);
    const err = (JSON.parse(refused.text) as { error: { code: string; param: string; message: string } }).error;
    assert.equal(err.code, 'rate_limit_exceeded');
    assert.equal(err.param, 'max_queued');
    assert.match(err.message, /API key 'conc'.*across this server's models/);
    // The waiting one goes on only once the running one has ended.
    firstEnded = true;
    first.abort();
    const served = await sent[1 - refused.i];
    assert.equal(served.r.status, 200);
    assert.ok(served.firstEnded, 'it started only after the running request ended');
    assert.match(served.text, /data: \[DONE\]/);
  });

  test("embedding tokens count toward the key's tokens_per_minute, which holds across models and endpoints", async () => {
    const embedded = await post(KEYS.tpm, '/v1/embeddings', { model: 'e', input: 'one two three four five six' });
    assert.equal(embedded.status, 200);
    assert.equal(embedded.headers.get('x-ratelimit-limit-tokens'), '4');
    const usage = ((await embedded.json()) as { usage: { prompt_tokens: number } }).usage;
    assert.ok(usage.prompt_tokens > 4);
    // The embedding's tokens used up the minute: chat on another model and another embedding are refused.
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEYS.tpm, maxRetries: 0 });
    const chat = await client.chat.completions.create({ model: 'a', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }).then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(chat instanceof OpenAI.RateLimitError, String(chat));
    assert.equal(chat.param, 'tokens_per_minute');
    const again = await client.embeddings.create({ model: 'e', input: 'x' }).then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(again instanceof OpenAI.RateLimitError, String(again));
    assert.equal(again.headers.get('x-ratelimit-remaining-tokens'), '0');
  });

  test("the 429s of keys' limits are counted once for the server, and each key's tokens per model", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(text, /^qwen3_serve_api_key_rate_limited_total\{api_key="conc",limit="max_queued"\} 1$/m);
    assert.match(text, /^qwen3_serve_api_key_rate_limited_total\{api_key="tpm",limit="tokens_per_minute"\} 2$/m);
    assert.match(text, /^qwen3_serve_api_key_prompt_tokens_total\{api_key="tpm",model="e"\} [1-9]\d*$/m);
  });

  test("embeddings keep to the key's prefix cache: bob's repeat of alice's text finds none of her blocks, his own repeat finds his", async () => {
    const input = Array.from({ length: 120 }, (_, i) => `word${i % 37}`).join(' ');
    const cached = async (key: string) => {
      const res = await post(key, '/v1/embeddings', { model: 'e', input });
      assert.equal(res.status, 200, await res.clone().text());
      return ((await res.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens;
    };
    assert.equal(await cached(KEYS.alice), 0);
    assert.ok((await cached(KEYS.alice)) > 0, "alice's repeat is served from her blocks");
    assert.equal(await cached(KEYS.bob), 0, "bob gets nothing of alice's");
    assert.ok((await cached(KEYS.bob)) > 0, "bob's repeat is served from his own");
  });
});
