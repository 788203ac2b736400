import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { pino } from 'pino';
import { parseServeConfig, type RunningServer, startServer } from '../src/cli/serve_command.js';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';

describe('test/server_keys.test', () => {
  // Several API keys from a keys file, against a real server: both auth headers, the key's
  // name (never the key) in the logs and metrics, per-key limits with their 429s and
  // headers, and the file changed while the server runs.

  const dir = tempDir();
  const file = join(dir, 'keys.json');
  const sha = (k: string) => createHash('sha256').update(k).digest('hex');
  const KEYS = { alice: 'sk-alice-0123456789', bob: 'sk-bob-0123456789', carol: 'sk-carol-0123456789', dave: 'sk-dave-0123456789' };

  /** Writes the keys file as an operator would: a new file renamed over the old one. */
  function writeKeys(entries: unknown[]): void {
    const tmp = `${file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ keys: entries }));
    renameSync(tmp, file);
  }

  const baseEntries = () => [
    { name: 'alice', key: KEYS.alice },
    // Only the digest is on disk for bob.
    { name: 'bob', sha256: sha(KEYS.bob) },
    { name: 'carol', key: KEYS.carol, limits: { tokens_per_minute: 10 } },
    { name: 'dave', key: KEYS.dave, limits: { max_concurrent: 2, max_queued: 3 } },
  ];

  const logLines: string[] = [];
  let s: RunningServer;
  const openai = (key: string) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0 });
  const claude = (key: string) => new Anthropic({ baseURL: s.url, apiKey: key, maxRetries: 0 });
  const ask = { model: 'tiny', messages: [{ role: 'user' as const, content: 'hi' }], max_tokens: 2 };

  before(async () => {
    writeKeys(baseEntries());
    const sink = new Writable({
      write(chunk, _enc, done) {
        logLines.push(...String(chunk).split('\n').filter(Boolean));
        done();
      },
    });
    const config = parseServeConfig(
      [
        '--model',
        await fixtureExport('fast'),
        '--port',
        '0',
        '--threads',
        '1',
        '--kv-cache-memory',
        '256MiB',
        '--cache-dir',
        tempDir(),
        '--served-model-name',
        'tiny',
        '--api-keys-file',
        file,
      ],
      {},
    )!;
    s = await startServer(config, { logger: pino({ level: 'info' }, sink) });
  });
  after(async () => {
    await s?.close();
  });

  /** Polls `ok` every 20 ms for at most `boundMs`; returns the milliseconds it took to hold. */
  async function within(boundMs: number, ok: () => Promise<boolean>): Promise<number> {
    const t0 = performance.now();
    while (!(await ok())) {
      assert.ok(performance.now() - t0 < boundMs, `not within ${boundMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return performance.now() - t0;
  }

  const works = async (key: string) => {
    const r = await fetch(`${s.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    await r.text();
    return r.status === 200;
  };

  test('each key works by Bearer (OpenAI SDK) and by x-api-key (Anthropic SDK); a wrong or missing key is a 401 in each envelope', async () => {
    const r = await openai(KEYS.alice).chat.completions.create(ask);
    assert.equal(r.choices.length, 1);
    const m = await claude(KEYS.bob).messages.create({ model: 'tiny', max_tokens: 2, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(m.type, 'message');
    await assert.rejects(openai('sk-nobody-0123456789').chat.completions.create(ask), (e: unknown) => e instanceof OpenAI.AuthenticationError);
    await assert.rejects(
      claude('sk-nobody-0123456789').messages.create({ model: 'tiny', max_tokens: 2, messages: [{ role: 'user', content: 'hi' }] }),
      (e: unknown) => e instanceof Anthropic.AuthenticationError && (e.error as { error: { type: string } }).error.type === 'authentication_error',
    );
    assert.equal((await fetch(`${s.url}/v1/models`)).status, 401);
    // The digest itself is not a key.
    assert.equal(await works(sha(KEYS.bob)), false);
    // Probes and the scraper need none.
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
  });

  test("the key's name, never the key, is in the request's log lines and in the metrics' labels", async () => {
    await openai(KEYS.alice).completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 2 });
    const done = logLines.map((l) => JSON.parse(l) as { msg: string; api_key?: string }).filter((l) => l.msg === 'request completed');
    assert.ok(done.some((l) => l.api_key === 'alice'));
    const all = logLines.join('\n');
    for (const k of Object.values(KEYS)) assert.ok(!all.includes(k), 'a key reached the logs');
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /^qwen3_serve_api_key_request_success_total\{api_key="alice",finished_reason="length",model="tiny"\} \d+$/m);
    assert.match(metrics, /^qwen3_serve_api_key_prompt_tokens_total\{api_key="bob",model="tiny"\} [1-9]\d*$/m);
    for (const k of Object.values(KEYS)) assert.ok(!metrics.includes(k));
  });

  test("tokens_per_minute: once a key's last minute holds its limit it gets 429s naming the limit, with Retry-After and OpenAI's or Anthropic's headers", async () => {
    const carol = openai(KEYS.carol);
    const first = await carol.chat.completions.create(ask).withResponse();
    assert.equal(first.response.headers.get('x-ratelimit-limit-tokens'), '10');
    // The first request's own tokens are counted once it ends: the window now holds more than 10.
    const refused = await carol.chat.completions.create(ask).then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(refused instanceof OpenAI.RateLimitError, String(refused));
    assert.equal((refused.error as { code: string }).code, 'rate_limit_exceeded');
    assert.equal(refused.param, 'tokens_per_minute');
    assert.match(refused.message, /tokens_per_minute 10/);
    const h = refused.headers;
    assert.ok(Number(h.get('retry-after')) >= 1 && Number(h.get('retry-after')) <= 60);
    assert.equal(h.get('x-ratelimit-limit-tokens'), '10');
    assert.equal(h.get('x-ratelimit-remaining-tokens'), '0');
    assert.match(h.get('x-ratelimit-reset-tokens') ?? '', /^(\d+ms|[\d.]+s|\d+m\d+s)$/);
    // The Messages API refuses it in Anthropic's envelope and headers.
    const anth = await claude(KEYS.carol)
      .messages.create({ model: 'tiny', max_tokens: 2, messages: [{ role: 'user', content: 'hi' }] })
      .then(
        () => null,
        (e: unknown) => e,
      );
    assert.ok(anth instanceof Anthropic.RateLimitError, String(anth));
    assert.equal((anth.error as { error: { type: string } }).error.type, 'rate_limit_error');
    assert.equal(anth.headers.get('anthropic-ratelimit-tokens-limit'), '10');
    assert.equal(anth.headers.get('anthropic-ratelimit-tokens-remaining'), '0');
    assert.ok(!Number.isNaN(Date.parse(anth.headers.get('anthropic-ratelimit-tokens-reset') ?? '')));
    assert.ok(anth.headers.get('retry-after'));
    // Other keys are not touched.
    assert.equal((await openai(KEYS.alice).chat.completions.create(ask)).choices.length, 1);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /^qwen3_serve_api_key_rate_limited_total\{api_key="carol",limit="tokens_per_minute",model="tiny"\} 2$/m);
  });

  test("a key's concurrency limits show in x-ratelimit-*-requests", async () => {
    const r = await openai(KEYS.dave).chat.completions.create(ask).withResponse();
    // max_concurrent 2 + max_queued 3 in flight; this request is one of them while it runs.
    assert.equal(r.response.headers.get('x-ratelimit-limit-requests'), '5');
    assert.equal(r.response.headers.get('x-ratelimit-remaining-requests'), '4');
    assert.equal(r.response.headers.get('x-ratelimit-reset-requests'), '0s');
    // A key without limits gets no rate-limit headers.
    const plain = await openai(KEYS.alice).chat.completions.create(ask).withResponse();
    assert.equal(plain.response.headers.get('x-ratelimit-limit-requests'), null);
    // One request of more choices than the key can ever have queued is a 400, not a retryable 429.
    await assert.rejects(openai(KEYS.dave).chat.completions.create({ ...ask, n: 6 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal((e.error as { param?: string }).param, 'n');
      return true;
    });
    assert.equal((await openai(KEYS.dave).chat.completions.create({ ...ask, n: 5 })).choices.length, 5);
  });

  test("a stored response is its key's alone: another key cannot retrieve, continue or delete it", async () => {
    const r = await openai(KEYS.alice).responses.create({ model: 'tiny', input: 'hi', max_output_tokens: 2 });
    const bob = openai(KEYS.bob);
    await assert.rejects(bob.responses.retrieve(r.id), (e: unknown) => e instanceof OpenAI.NotFoundError);
    await assert.rejects(
      bob.responses.create({ model: 'tiny', input: 'and?', max_output_tokens: 2, previous_response_id: r.id }),
      (e: unknown) => e instanceof OpenAI.NotFoundError && e.param === 'previous_response_id',
    );
    await assert.rejects(bob.responses.delete(r.id), (e: unknown) => e instanceof OpenAI.NotFoundError);
    assert.equal((await openai(KEYS.alice).responses.retrieve(r.id)).id, r.id);
  });

  test('the keys file is read again while the server runs: add, rotate and revoke each take effect within a second; requests in flight go on', async () => {
    // A stream of alice's in flight while her key is revoked.
    const stream = await openai(KEYS.alice).chat.completions.create({ ...ask, max_tokens: 64, stream: true, ignore_eos: true } as never);
    const erin = 'sk-erin-0123456789';
    const bobNew = 'sk-bob-rotated-0123456789';
    writeKeys([
      // alice revoked, bob rotated, erin added.
      { name: 'bob', key: bobNew },
      { name: 'erin', key: erin },
      ...baseEntries().slice(2),
    ]);
    const tookAdd = await within(1000, () => works(erin));
    const tookRotate = await within(1000, async () => (await works(bobNew)) && !(await works(KEYS.bob)));
    const tookRevoke = await within(1000, async () => !(await works(KEYS.alice)));
    assert.ok(tookAdd < 1000 && tookRotate < 1000 && tookRevoke < 1000);
    let tokens = 0;
    let finish: string | null = null;
    for await (const chunk of stream as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
      if (chunk.choices[0]?.delta && (chunk.choices[0].delta.content || (chunk.choices[0].delta as { reasoning_content?: string }).reasoning_content))
        tokens++;
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, 'length', 'the revoked key’s stream ran to its end');
    assert.ok(tokens > 0);
    // A file that no longer parses leaves the keys in force.
    writeFileSync(file, '{"keys": [ not json');
    await within(1000, async () => logLines.some((l) => l.includes('API keys file not reloaded')));
    assert.equal(await works(erin), true);
    writeKeys(baseEntries());
    await within(1000, () => works(KEYS.alice));
  });

  test('a keys file that does not parse stops the start with a message naming the entry and field', async () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ keys: [{ name: 'x', key: 'sk-long-enough', sha256: sha('a') }] }));
    const config = parseServeConfig(['--model', await fixtureExport('fast'), '--port', '0', '--api-keys-file', bad], {})!;
    await assert.rejects(startServer(config, { logger: pino({ level: 'silent' }) }), /keys\[0\].*key or its sha256/);
  });
});
