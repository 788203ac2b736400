import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { pino } from 'pino';
import { parseServeConfig, startServer } from '../src/cli/serve_command.js';
import { WARM_AFTER_IDLE_MS } from '../src/engine/engine_core.js';
import { readManifest } from '../src/export/manifest.js';
import { fixtureExport } from './support/engine.js';
import { startTestServer, type TestServer } from './support/server.js';

// Prefix caching through the API, with real clients against real servers: the default
// server caches, a second one runs with --no-prefix-caching, and both must answer alike.
describe('test/prefix_cache_server.test', () => {
  const CHUNK = 64; // the CPU prefill chunk, and so the block size
  let on: TestServer;
  let off: TestServer;

  before(async () => {
    const dir = await fixtureExport('fast');
    on = await startTestServer(dir, ['--served-model-name', 'tiny', '--metrics-compat', 'vllm']);
    off = await startTestServer(dir, ['--served-model-name', 'tiny', '--no-prefix-caching']);
  });

  after(async () => {
    await on?.close();
    await off?.close();
  });

  const system = `You are a careful assistant. ${'Answer briefly and cite the rules you follow. '.repeat(24)}`;

  async function chat(
    s: TestServer,
    messages: Array<{ role: 'system' | 'user' | 'assistant'; content: string }>,
    extra: Record<string, unknown> = {},
  ) {
    return s.client.chat.completions.create({
      model: 'tiny',
      messages,
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
      ...extra,
    } as never) as unknown as Promise<{
      choices: Array<{ message: { content: string | null; tool_calls?: unknown[] }; logprobs: unknown }>;
      usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    }>;
  }

  const metric = async (name: string) =>
    Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm').exec(await (await fetch(`${on.url}/metrics`)).text())?.[1]);

  test('a shared system prompt is served from the cache: cached_tokens counts it, the answer is identical, /metrics counts queries and hits', async () => {
    const queriesBefore = await metric('qwen3_serve_prefix_cache_queries_total');
    const hitsBefore = await metric('vllm:prefix_cache_hits_total');
    const first = await chat(
      on,
      [
        { role: 'system', content: system },
        { role: 'user', content: 'What is 2 + 2?' },
      ],
      { chat_template_kwargs: { enable_thinking: false } },
    );
    const messages = [
      { role: 'system' as const, content: system },
      { role: 'user' as const, content: 'Name a colour.' },
    ];
    const second = await chat(on, messages, { chat_template_kwargs: { enable_thinking: false } });
    const cold = await chat(off, messages, { chat_template_kwargs: { enable_thinking: false } });
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    const cached = second.usage.prompt_tokens_details.cached_tokens;
    // The whole system message, however long: its last chunk ends where the user's message starts.
    const expected = hitAfter(
      await tokenize(
        on,
        [
          { role: 'system', content: system },
          { role: 'user', content: 'What is 2 + 2?' },
        ],
        false,
      ),
      await tokenize(on, messages, false),
    );
    assert.equal(cached, expected);
    assert.ok(cached >= 2 * CHUNK && cached < second.usage.prompt_tokens, `cached ${cached} of ${second.usage.prompt_tokens}`);
    assert.equal(cold.usage.prompt_tokens_details.cached_tokens, 0);
    assert.deepEqual(second.choices[0].message.content, cold.choices[0].message.content);
    assert.deepEqual(second.choices[0].logprobs, cold.choices[0].logprobs);
    assert.equal((await metric('qwen3_serve_prefix_cache_queries_total')) - queriesBefore, first.usage.prompt_tokens + second.usage.prompt_tokens);
    assert.equal((await metric('vllm:prefix_cache_hits_total')) - hitsBefore, cached);
    assert.ok((await metric('qwen3_serve_prefix_cache_bytes')) > 0);
    assert.ok((await metric('qwen3_serve_prefix_cache_capacity_bytes')) > 0);
    assert.equal(await metric('qwen3_serve_prefix_cache_block_tokens'), CHUNK);
    const types = await (await fetch(`${on.url}/metrics`)).text();
    assert.match(types, /^# TYPE vllm:prefix_cache_queries_total counter$/m);
    assert.match(types, /^# TYPE qwen3_serve_prefix_cache_hits_total counter$/m);
  });

  for (const thinking of [true, false]) {
    test(`a conversation's next turn reuses everything before the last user message (thinking ${thinking ? 'on' : 'off'})`, async () => {
      const kwargs = { chat_template_kwargs: { enable_thinking: thinking } };
      const turn1 = [
        { role: 'system' as const, content: system },
        { role: 'user' as const, content: `Hello there, ${thinking}.` },
      ];
      const r1 = await chat(on, turn1, kwargs);
      const turn2 = [...turn1, { role: 'assistant' as const, content: 'Hi! How can I help?' }, { role: 'user' as const, content: 'Tell me a joke.' }];
      const r2 = await chat(on, turn2, kwargs);
      const cold = await chat(off, turn2, kwargs);
      const cached = r2.usage.prompt_tokens_details.cached_tokens;
      // The client's answer differs from the model's, so the warmed answer does not serve:
      // the first prompt's whole chunks do. Its last one, the user's message with the
      // assistant's opening, is cut short by the prompt's end.
      const p1 = await tokenize(on, turn1, thinking);
      assert.equal(p1.length, r1.usage.prompt_tokens);
      assert.equal(cached, hitAfter(p1, await tokenize(on, turn2, thinking)));
      assert.equal(cached, p1.lastIndexOf(p1[0], p1.lastIndexOf(p1[0]) - 1), 'everything before the last user message');
      assert.deepEqual(r2.choices[0].logprobs, cold.choices[0].logprobs);
    });
  }

  /**
   * The tokens the whole prefill chunks of `ids` cover, up to `limit`, computed here apart
   * from the server: a chunk ends after CHUNK tokens, or where a message starts
   * (`<|im_start|>`, the first token of any chat prompt) unless `assistant` follows it,
   * and one cut short by the end of `ids` is not whole.
   */
  function chunked(ids: number[], limit: number, assistant: number): number {
    const messageStart = ids[0];
    const boundary = (p: number) => ids[p] === messageStart && p + 1 < ids.length && ids[p + 1] !== assistant;
    let covered = 0;
    for (let start = 0; start < ids.length; ) {
      let end = start + 1;
      while (end < ids.length && end - start < CHUNK && !boundary(end)) end++;
      if ((end === ids.length && end - start < CHUNK) || end > limit) break;
      covered = end;
      start = end;
    }
    return covered;
  }

  /**
   * What a prompt `next` takes from the cache after prompt `first` ran: the chunks of both
   * they share, short of `next`'s last. `next` ends with the assistant's opening, which
   * names the assistant's token.
   */
  function hitAfter(first: number[], next: number[]): number {
    let common = 0;
    while (common < first.length && first[common] === next[common]) common++;
    const assistant = next[next.lastIndexOf(next[0]) + 1];
    return Math.min(chunked(first, common, assistant), chunked(next, next.length - 1, assistant));
  }

  /** Token ids of a chat prompt, as /tokenize renders it. */
  async function tokenize(s: TestServer, messages: Array<{ role: string; content: string }>, thinking: boolean): Promise<number[]> {
    const res = await fetch(`${s.url}/tokenize`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages, chat_template_kwargs: { enable_thinking: thinking } }),
    });
    return ((await res.json()) as { tokens: number[] }).tokens;
  }

  /**
   * A next turn's prompt ids, and the tokens it can take from the cache once its warm-up ran:
   * the whole chunks of the conversation up to its new message's own text, which the
   * warm-up computed, and which end where that message starts.
   */
  async function warmedHit(
    s: TestServer,
    history: Array<{ role: string; content: string }>,
    next: { role: string; content: string },
    thinking: boolean,
  ): Promise<{ ids: number[]; expected: number }> {
    const ids = await tokenize(s, [...history, next], thinking);
    const probe = await tokenize(s, [...history, { role: next.role, content: '§' }], thinking);
    let common = 0;
    while (ids[common] === probe[common]) common++;
    const expected = hitAfter(ids.slice(0, common), ids);
    assert.equal(expected, ids.lastIndexOf(ids[0], common), 'everything before the new message');
    return { ids, expected };
  }

  /**
   * Waits for the server's speculative prefills to settle: its warmed-token counter rose at
   * least `tokens` past `before` and then stayed put for longer than the engine waits before
   * it starts a warm-up. A pause between two chunks of one warm-up (a busy machine), or
   * before one still due from an earlier test, is not the end: the caller says how much its
   * warm-up must compute.
   */
  async function warmedPast(s: TestServer, before: number, tokens = 1): Promise<number> {
    const read = async () =>
      Number(/^qwen3_serve_prefix_cache_warmed_tokens_total(?:\{[^}]*\})? (\S+)$/m.exec(await (await fetch(`${s.url}/metrics`)).text())?.[1]);
    let last = await read();
    let since = Date.now();
    for (let i = 0; i < 200; i++) {
      await new Promise((r) => setTimeout(r, 50));
      const now = await read();
      if (now !== last) {
        last = now;
        since = Date.now();
      } else if (now - before >= tokens && Date.now() - since > 2 * WARM_AFTER_IDLE_MS) {
        return now;
      }
    }
    return last;
  }

  for (const thinking of [false, true]) {
    test(`once an answer ends, the idle server prefills the next turn as the client will send it, answer included; the next turn's results are unchanged (thinking ${thinking ? 'on' : 'off'})`, async () => {
      const kwargs = { chat_template_kwargs: { enable_thinking: thinking }, ignore_eos: true };
      const turn1 = [
        { role: 'system' as const, content: system },
        { role: 'user' as const, content: `Tell me a long story, ${thinking}.` },
      ];
      const before = await warmedPast(on, -1);
      const r1 = await chat(on, turn1, { ...kwargs, max_tokens: 150 });
      const answer = r1.choices[0].message.content ?? '';
      const turn2 = [...turn1, { role: 'assistant' as const, content: answer }, { role: 'user' as const, content: 'And then what happened?' }];
      const { ids, expected } = await warmedHit(on, turn2.slice(0, -1), turn2[turn2.length - 1], thinking);
      // Without the warm-up the next turn would find the first prompt's chunks up to where
      // the assistant turn begins.
      const withoutWarmUp = hitAfter(await tokenize(on, turn1, thinking), ids);
      // The warm-up computes what the first prompt's chunks left: at least that much.
      if (expected > withoutWarmUp)
        assert.ok((await warmedPast(on, before, expected - withoutWarmUp)) - before >= expected - withoutWarmUp, 'the answer was warmed');
      const r2 = await chat(on, turn2, kwargs);
      const cold = await chat(off, turn2, kwargs);
      assert.deepEqual(r2.choices[0].message.content, cold.choices[0].message.content);
      assert.deepEqual(r2.choices[0].logprobs, cold.choices[0].logprobs);
      const cached = r2.usage.prompt_tokens_details.cached_tokens;
      assert.equal(cached, expected, `cached ${cached} of ${ids.length}`);
      if (!thinking) assert.ok(expected > withoutWarmUp, `the answer is long enough to fill blocks: ${expected} vs ${withoutWarmUp}`);
    });
  }

  test("Anthropic's Messages API: the next turn finds the answer warmed, and says so in cache_read_input_tokens", async () => {
    const client = new Anthropic({ baseURL: on.url, apiKey: 'unused', maxRetries: 0 });
    const question = { role: 'user' as const, content: 'Tell me a long story, Anthropic.' };
    const before = await warmedPast(on, -1);
    const r1 = await client.messages.create({ model: 'tiny', max_tokens: 150, system, thinking: { type: 'disabled' }, messages: [question] });
    const text = r1.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
    const followUp = { role: 'user' as const, content: 'And then what happened?' };
    const asChat = [{ role: 'system', content: system }, question, { role: 'assistant', content: text }];
    const { ids, expected } = await warmedHit(on, asChat, followUp, false);
    const withoutWarmUp = hitAfter(await tokenize(on, asChat.slice(0, 2), false), ids);
    if (expected > withoutWarmUp)
      assert.ok((await warmedPast(on, before, expected - withoutWarmUp)) - before >= expected - withoutWarmUp, 'the answer was warmed');
    const r2 = await client.messages.create({
      model: 'tiny',
      max_tokens: 5,
      system,
      thinking: { type: 'disabled' },
      messages: [question, { role: 'assistant', content: r1.content }, followUp],
    });
    assert.equal(r2.usage.cache_read_input_tokens, expected);
    assert.equal(r2.usage.input_tokens + r2.usage.cache_read_input_tokens!, ids.length);
  });

  test('--no-warm-next-turn leaves the next turn to compute the answer again', async () => {
    const quiet = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--no-warm-next-turn']);
    try {
      const kwargs = { chat_template_kwargs: { enable_thinking: false }, ignore_eos: true };
      const turn1 = [
        { role: 'system' as const, content: system },
        { role: 'user' as const, content: 'Tell me a long story.' },
      ];
      const r1 = await chat(quiet, turn1, { ...kwargs, max_tokens: 150 });
      // Idle for twice the engine's wait before a warm-up: one would have started by now.
      await new Promise((r) => setTimeout(r, 2 * WARM_AFTER_IDLE_MS));
      const turn2 = [
        ...turn1,
        { role: 'assistant' as const, content: r1.choices[0].message.content ?? '' },
        { role: 'user' as const, content: 'And then what happened?' },
      ];
      const r2 = await chat(quiet, turn2, kwargs);
      assert.equal(r2.usage.prompt_tokens_details.cached_tokens, hitAfter(await tokenize(quiet, turn1, false), await tokenize(quiet, turn2, false)));
      assert.equal(
        Number(/^qwen3_serve_prefix_cache_warmed_tokens_total(?:\{[^}]*\})? (\S+)$/m.exec(await (await fetch(`${quiet.url}/metrics`)).text())?.[1]),
        0,
      );
    } finally {
      await quiet.close();
    }
  });

  test('tools, structured outputs, n > 1 and completions all take cached prefixes and answer as without the cache', async () => {
    const tools = [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'The weather in a city, now. '.repeat(16),
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    ];
    for (const city of ['Paris', 'Oslo']) {
      const messages = [{ role: 'user' as const, content: `Weather in ${city}?` }];
      const args = { tools, tool_choice: 'required', max_tokens: 40, chat_template_kwargs: { enable_thinking: false } };
      const [a, b] = [await chat(on, messages, args), await chat(off, messages, args)];
      const calls = (m: { tool_calls?: unknown[] }) => (m.tool_calls as Array<{ function: unknown }> | undefined)?.map((c) => c.function);
      assert.deepEqual(calls(a.choices[0].message), calls(b.choices[0].message));
      assert.deepEqual(a.choices[0].logprobs, b.choices[0].logprobs);
      if (city === 'Oslo') assert.ok(a.usage.prompt_tokens_details.cached_tokens >= 2 * CHUNK, 'the tool definitions are cached');
    }
    const schema = {
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'answer', schema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] } },
      },
      max_tokens: 30,
    };
    const structured = await chat(
      on,
      [
        { role: 'system', content: system },
        { role: 'user', content: 'Is it ok?' },
      ],
      { ...schema, chat_template_kwargs: { enable_thinking: false } },
    );
    const structuredCold = await chat(
      off,
      [
        { role: 'system', content: system },
        { role: 'user', content: 'Is it ok?' },
      ],
      { ...schema, chat_template_kwargs: { enable_thinking: false } },
    );
    assert.ok(structured.usage.prompt_tokens_details.cached_tokens > 0);
    assert.equal(typeof JSON.parse(structured.choices[0].message.content!).ok, 'boolean');
    assert.deepEqual(structured.choices[0].logprobs, structuredCold.choices[0].logprobs);

    const n2 = (await on.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: `${system} Once more, with two choices.` }],
      n: 2,
      max_tokens: 6,
      seed: 3,
      temperature: 1,
    })) as unknown as { choices: Array<{ message: { content: string } }> };
    assert.equal(n2.choices.length, 2);

    const prompt = `${system} Continue this sentence:`;
    for (const suffix of [' the sky', ' the sea']) {
      const [a, b] = await Promise.all(
        [on, off].map((s) => s.client.completions.create({ model: 'tiny', prompt: prompt + suffix, max_tokens: 6, temperature: 0, logprobs: 2 })),
      );
      assert.deepEqual(a.choices[0].logprobs, b.choices[0].logprobs);
      const cached = (a.usage as unknown as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens;
      if (suffix === ' the sea') assert.ok(cached >= 2 * CHUNK, `completions cached ${cached}`);
    }
    // Echo with logprobs scores every prompt position: nothing of it comes from the cache, and the scores match.
    const [echoOn, echoOff] = await Promise.all(
      [on, off].map((s) => s.client.completions.create({ model: 'tiny', prompt: `${prompt} the sky`, max_tokens: 0, echo: true, logprobs: 1 })),
    );
    assert.deepEqual(echoOn.choices[0].logprobs, echoOff.choices[0].logprobs);
  });

  test("Anthropic's Messages API reports cache reads as Anthropic does: apart from input_tokens", async () => {
    const client = new Anthropic({ baseURL: on.url, apiKey: 'unused', maxRetries: 0 });
    const ask = (text: string) => ({ model: 'tiny', max_tokens: 5, system, messages: [{ role: 'user' as const, content: text }] });
    await client.messages.create(ask('First question.'));
    const second = await client.messages.create(ask('Second question.'));
    const counted = await client.messages.countTokens(ask('Second question.'));
    assert.ok((second.usage.cache_read_input_tokens ?? 0) >= 2 * CHUNK);
    assert.equal(second.usage.input_tokens + second.usage.cache_read_input_tokens!, counted.input_tokens);
    const streamed = await client.messages.stream(ask('Third question.')).finalMessage();
    assert.ok((streamed.usage.cache_read_input_tokens ?? 0) >= 2 * CHUNK);
    assert.equal(
      streamed.usage.input_tokens + streamed.usage.cache_read_input_tokens!,
      (await client.messages.countTokens(ask('Third question.'))).input_tokens,
    );
  });

  test('the start log states the setting', async () => {
    const dir = await fixtureExport('fast');
    for (const [flags, want] of [
      [['--prefix-cache-memory', '8MiB'], { block_tokens: CHUNK, memory_mib: 8 }],
      [['--no-prefix-caching'], 'off'],
    ] as const) {
      const lines: string[] = [];
      const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(line) });
      const config = parseServeConfig(['--model', dir, '--port', '0', '--threads', '1', '--kv-cache-memory', '64MiB', ...flags], {})!;
      const server = await startServer(config, { logger });
      await server.close();
      const start = lines
        .map((l) => JSON.parse(l) as { msg: string; prefix_cache?: unknown; weights_mib?: number; kv_cache_mib?: number })
        .find((l) => l.msg.startsWith('serving '));
      assert.deepEqual(start?.prefix_cache, want);
      // What the model takes: the export's files, and the KV budget asked for.
      const files = readManifest(dir);
      const weights = statSync(join(dir, files.model)).size + statSync(join(dir, files.externalData)).size;
      assert.equal(start?.weights_mib, Math.round(weights / 2 ** 20));
      assert.equal(start?.kv_cache_mib, 64);
    }
  });
});
