import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { fixtureExport } from './support/engine.js';
import { keysFile, startTestServer, type TestServer } from './support/server.js';

describe('test/prefix_cache_scope.test', () => {
  // Prefix cache isolation through the API, with real clients against real servers: with
  // --prefix-cache-scope key (the default with a keys file) one key's prompt is not cached
  // for another (no count, no time saved), with `shared` it is, and cache_salt narrows
  // either; the same request gives the same tokens and log-probabilities in every mode.

  const ALICE = 'sk-alice-0123456789';
  const BOB = 'sk-bob-0123456789';
  let scoped: TestServer;
  let shared: TestServer;
  let off: TestServer;

  before(async () => {
    const file = keysFile([
      { name: 'alice', key: ALICE },
      { name: 'bob', key: BOB },
    ]);
    const dir = await fixtureExport('fast');
    const flags = ['--served-model-name', 'tiny', '--api-keys-file', file];
    scoped = await startTestServer(dir, flags, ALICE);
    shared = await startTestServer(dir, [...flags, '--prefix-cache-scope', 'shared'], ALICE);
    off = await startTestServer(dir, [...flags, '--no-prefix-caching'], ALICE);
  });

  after(async () => {
    await scoped?.close();
    await shared?.close();
    await off?.close();
  });

  const as = (s: TestServer, key: string) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: key, maxRetries: 0, timeout: 120_000 });

  /** A long document (about 1,500 tokens), different for each `tag`, so each round starts cold. */
  const document = (tag: string) =>
    `Document ${tag}. ${'The quarterly report lists revenue, costs and the outlook for every region in detail. '.repeat(90)}`;

  interface Timed {
    ttftMs: number;
    cached: number;
    content: string;
    logprobs: unknown[];
  }

  /** A streamed chat answer with its time to first token and its usage. */
  async function timedChat(client: OpenAI, content: string, extra: Record<string, unknown> = {}): Promise<Timed> {
    const t0 = performance.now();
    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content }],
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
      stream: true,
      stream_options: { include_usage: true },
      chat_template_kwargs: { enable_thinking: false },
      ...extra,
    } as never);
    let ttftMs = -1;
    let text = '';
    let cached = -1;
    const logprobs: unknown[] = [];
    for await (const chunk of stream as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
      const c = chunk.choices[0];
      if (c?.logprobs?.content?.length && ttftMs < 0) ttftMs = performance.now() - t0;
      text += c?.delta?.content ?? '';
      if (c?.logprobs?.content) logprobs.push(...c.logprobs.content);
      if (chunk.usage) cached = chunk.usage.prompt_tokens_details?.cached_tokens ?? 0;
    }
    return { ttftMs, cached, content: text, logprobs };
  }

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

  /** The engine's own count of prompt tokens it took from the prefix cache rather than computing them. */
  async function cacheHits(s: TestServer): Promise<number> {
    const text = await (await fetch(`${s.url}/metrics`, { headers: { authorization: `Bearer ${ALICE}` } })).text();
    return Number(/^qwen3_serve_prefix_cache_hits_total(?:\{[^}]*\})? (\S+)$/m.exec(text)?.[1]);
  }

  test("scope key: bob gets nothing of alice's cached prompt, neither in cached_tokens nor in the engine's cache hits; scope shared: he does; all three modes answer alike", async (t) => {
    const rounds = 3;
    const cold: number[] = [];
    const bobScoped: number[] = [];
    const bobShared: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const doc = document(`r${i}`);
      // Alice first, on each server: her prompt is computed and cached (where caching is on).
      const a = await timedChat(as(scoped, ALICE), doc);
      assert.equal(a.cached, 0);
      cold.push(a.ttftMs);
      await timedChat(as(shared, ALICE), doc);
      // The engine's counters, not the clock, say whether his prompt was computed or taken from the cache.
      const scopedHits = await cacheHits(scoped);
      const b = await timedChat(as(scoped, BOB), doc);
      assert.equal(await cacheHits(scoped), scopedHits, "scope key: the engine computed all of bob's prompt");
      const sharedHits = await cacheHits(shared);
      const bs = await timedChat(as(shared, BOB), doc);
      assert.equal((await cacheHits(shared)) - sharedHits, bs.cached, 'scope shared: the engine took what usage reports from the cache');
      const bo = await timedChat(as(off, BOB), doc);
      assert.equal(b.cached, 0, "scope key: none of alice's blocks serve bob");
      assert.ok(bs.cached > 1000, `scope shared: bob's prompt comes from the cache (${bs.cached})`);
      assert.equal(bo.cached, 0);
      bobScoped.push(b.ttftMs);
      bobShared.push(bs.ttftMs);
      // Bit-identical whatever the mode: the same tokens and log-probabilities.
      assert.equal(b.content, bo.content);
      assert.equal(bs.content, bo.content);
      assert.deepEqual(b.logprobs, bo.logprobs);
      assert.deepEqual(bs.logprobs, bo.logprobs);
      // Alice's own blocks still serve her under scope key.
      assert.ok((await timedChat(as(scoped, ALICE), doc)).cached > 1000);
    }
    // The times are reported, not asserted: on a loaded machine they say less than the counters above.
    const [c, k, sh] = [median(cold), median(bobScoped), median(bobShared)];
    t.diagnostic(
      `median time to first token: cold ${c.toFixed(0)} ms, bob under scope key ${k.toFixed(0)} ms, under scope shared ${sh.toFixed(0)} ms`,
    );
  });

  test('cache_salt shares blocks only between requests with the same salt, on chat completions, completions and Responses', async () => {
    const doc = document('salted');
    const alice = as(shared, ALICE);
    const bob = as(shared, BOB);
    await timedChat(alice, doc, { cache_salt: 'team-1' });
    assert.ok((await timedChat(bob, doc, { cache_salt: 'team-1' })).cached > 1000, 'same salt: shared');
    assert.equal((await timedChat(bob, doc, { cache_salt: 'team-2' })).cached, 0, 'another salt: not');
    assert.equal((await timedChat(bob, doc)).cached, 0, 'no salt: not');
    // Under scope key, a salt narrows the key's own scope, never widens it.
    await timedChat(as(scoped, ALICE), doc, { cache_salt: 'team-1' });
    assert.equal((await timedChat(as(scoped, BOB), doc, { cache_salt: 'team-1' })).cached, 0);

    const prompt = document('completions');
    const completion = (client: OpenAI, salt?: string) =>
      client.completions.create({
        model: 'tiny',
        prompt,
        max_tokens: 2,
        temperature: 0,
        ...(salt ? { cache_salt: salt } : {}),
      } as never) as unknown as Promise<{
        usage: { prompt_tokens_details: { cached_tokens: number } };
      }>;
    await completion(alice, 'c1');
    assert.ok((await completion(bob, 'c1')).usage.prompt_tokens_details.cached_tokens > 1000);
    assert.equal((await completion(bob, 'c2')).usage.prompt_tokens_details.cached_tokens, 0);

    const input = document('responses');
    const respond = (client: OpenAI, salt?: string) =>
      client.responses.create({
        model: 'tiny',
        input,
        max_output_tokens: 2,
        temperature: 0,
        ...(salt ? { cache_salt: salt } : {}),
      } as never) as unknown as Promise<{
        usage: { input_tokens_details: { cached_tokens: number } };
      }>;
    await respond(alice, 'r1');
    assert.ok((await respond(bob, 'r1')).usage.input_tokens_details.cached_tokens > 1000);
    assert.equal((await respond(bob, 'r2')).usage.input_tokens_details.cached_tokens, 0);

    // vLLM's rule: a salt, when given, is a non-empty string.
    await assert.rejects(
      alice.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], cache_salt: '' } as never),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'cache_salt',
    );
  });
});
