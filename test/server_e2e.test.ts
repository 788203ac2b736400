import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport } from './support/engine.js';
import { FIXTURE_DIR, FIXTURE_REFERENCE, type ReferenceCase } from './support/runner.js';
import { healthOf, startTestServer, type TestServer, until } from './support/server.js';

describe('test/server_e2e.test', () => {
  const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;
  const _tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
  let s: TestServer;

  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny']);
  });
  after(async () => {
    await s.close();
  });

  test('GET /v1/models lists the served model', async () => {
    const models = await s.client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ['tiny'],
    );
    const one = await s.client.models.retrieve('tiny');
    assert.equal(one.id, 'tiny');
    await assert.rejects(s.client.models.retrieve('nope'), OpenAI.NotFoundError);
  });

  test('non-streaming chat: message, reasoning, usage', async () => {
    const r = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 6,
      temperature: 0,
    });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices.length, 1);
    const msg = r.choices[0].message as (typeof r.choices)[0]['message'] & { reasoning_content?: string };
    assert.equal(msg.role, 'assistant');
    assert.equal(typeof msg.reasoning_content, 'string', 'thinking is on by default');
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage?.completion_tokens, 6);
    assert.equal(r.usage?.prompt_tokens, 9);
    assert.equal(r.usage?.total_tokens, 15);
    assert.equal(r.usage?.completion_tokens_details?.reasoning_tokens, 6);
    // The same prompt as the fixture's first case: greedy output is the reference's.
    const lp = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
      top_logprobs: 5,
      chat_template_kwargs: { enable_thinking: true },
      return_tokens_as_token_ids: true,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const ids = lp.choices[0].logprobs!.content!.map((t) => Number(t.token.replace('token_id:', '')));
    assert.deepEqual(ids, cases[0].greedy_ids);
    for (const t of lp.choices[0].logprobs!.content!) assert.equal(t.top_logprobs.length, 5);
  });

  test('streaming chat with include_usage: role first, then deltas, finish, usage, [DONE]', async () => {
    const stream = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 5,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      reasoning_effort: 'none' as 'low',
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    assert.equal(finish?.choices[0].finish_reason, 'length');
    const last = chunks[chunks.length - 1];
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage?.completion_tokens, 5);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    const reasoning = chunks.map((c) => (c.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? '').join('');
    assert.equal(reasoning, '', 'reasoning_effort none turns thinking off');
    const whole = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 5,
      temperature: 0,
      reasoning_effort: 'none' as 'low',
    });
    assert.equal(text, whole.choices[0].message.content);
  });

  test('n > 1 gives n indexed choices; seeded sampling repeats', async () => {
    const r = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 4,
      n: 3,
      seed: 5,
      temperature: 1,
    });
    assert.deepEqual(
      r.choices.map((c) => c.index),
      [0, 1, 2],
    );
    assert.equal(r.usage?.completion_tokens, 12);
    const again = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 4,
      n: 3,
      seed: 5,
      temperature: 1,
    });
    assert.deepEqual(
      again.choices.map((c) => c.message),
      r.choices.map((c) => c.message),
    );
  });

  test('stop strings cut the output and are not returned unless include_stop_str_in_output', async () => {
    const base = {
      model: 'tiny',
      messages: [{ role: 'user' as const, content: 'Hi' }],
      max_tokens: 10,
      temperature: 0,
      chat_template_kwargs: { enable_thinking: false },
    };
    const full = await s.client.chat.completions.create(base as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const text = full.choices[0].message.content!;
    assert.ok(text.length > 4);
    const stop = text.slice(3, 5);
    const cut = await s.client.chat.completions.create({ ...base, stop: [stop] } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(cut.choices[0].message.content, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
    // vLLM's include_stop_str_in_output keeps the stop string at the end, streamed or not.
    const kept = { ...base, stop: [stop], include_stop_str_in_output: true };
    const whole = await s.client.chat.completions.create(kept as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(whole.choices[0].message.content, text.slice(0, text.indexOf(stop)) + stop);
    const stream = await s.client.chat.completions.create({ ...kept, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta.content ?? '';
    assert.equal(streamed, text.slice(0, text.indexOf(stop)) + stop);
    // A stop token id's own text is kept the same way.
    const ids = await s.client.chat.completions.create({
      ...base,
      logprobs: true,
      return_tokens_as_token_ids: true,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const third = Number(ids.choices[0].logprobs!.content![2].token.replace('token_id:', ''));
    const thirdText = (
      (await (
        await fetch(`${s.url}/detokenize`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'tiny', tokens: [third] }),
        })
      ).json()) as { prompt: string }
    ).prompt;
    const upTo = await s.client.chat.completions.create({ ...base, stop_token_ids: [third] } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const withIt = await s.client.chat.completions.create({
      ...base,
      stop_token_ids: [third],
      include_stop_str_in_output: true,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(withIt.choices[0].message.content, upTo.choices[0].message.content + thirdText);
    assert.ok(thirdText.length > 0);
  });

  test('errors come as the SDK error classes with OpenAI envelopes', async () => {
    await assert.rejects(
      s.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], temperature: 5 }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.param === 'temperature',
    );
    await assert.rejects(
      s.client.chat.completions.create({ model: 'other', messages: [{ role: 'user', content: 'x' }] }),
      (err: InstanceType<typeof OpenAI.NotFoundError>) => err instanceof OpenAI.NotFoundError && err.code === 'model_not_found',
    );
    await assert.rejects(
      // A max_tokens beyond the context is capped (test/agent_protocol.test.ts); a prompt that alone fills it is refused.
      s.client.chat.completions.create({
        model: 'tiny',
        messages: [{ role: 'user', content: 'x '.repeat(s.engine.info!.limits.maxModelLen) }],
        max_tokens: 1,
      }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) =>
        err instanceof OpenAI.BadRequestError && err.code === 'context_length_exceeded' && /maximum context length is \d+ tokens/.test(err.message),
    );
    await assert.rejects(
      s.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'wizard' as 'user', content: 'x' }] }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && /messages\[0\]/.test(String(err.param)),
    );
    await assert.rejects(
      s.client.chat.completions.create({
        model: 'tiny',
        messages: [{ role: 'user', content: 'x' }],
        response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'objectx' } } },
      }),
      // The grammar compiler's own reason, named in the 400.
      (err: InstanceType<typeof OpenAI.BadRequestError>) =>
        err instanceof OpenAI.BadRequestError && err.param === 'response_format' && /objectx/.test(err.message),
    );
    await assert.rejects(
      s.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], top_logprobs: 3 }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) =>
        err instanceof OpenAI.BadRequestError && err.param === 'top_logprobs' && /logprobs must be true/.test(err.message),
    );
    const res = await fetch(`${s.url}/v1/nothing`, { headers: { 'x-request-id': 'abc-123' } });
    assert.equal(res.status, 404);
    assert.equal(res.headers.get('x-request-id'), 'abc-123');
    assert.deepEqual(Object.keys(((await res.json()) as { error: object }).error).sort(), ['code', 'message', 'param', 'type']);
  });

  test('a client that disconnects mid-stream frees its sequence', async () => {
    const stream = await s.client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Go' }],
      max_tokens: 5000,
      stream: true,
      ignore_eos: true,
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let n = 0;
    for await (const _ of stream) {
      if (++n === 5) break; // leaving the loop closes the connection
    }
    let running = -1;
    for (let i = 0; i < 100; i++) {
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      running = Number(/qwen3_serve_num_requests_running\{[^}]*\} (\d+)/.exec(metrics)?.[1]);
      if (running === 0 && /request_success_total\{[^}]*finished_reason="abort"[^}]*\} [1-9]/.test(metrics)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(running, 0);
  });

  test('CORS: preflight and responses carry the allowed origin', async () => {
    const pre = await fetch(`${s.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://example.test',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,authorization',
      },
    });
    assert.ok(pre.status === 204 || pre.status === 200);
    assert.equal(pre.headers.get('access-control-allow-origin'), 'http://example.test');
    const res = await fetch(`${s.url}/v1/models`, { headers: { origin: 'http://example.test' } });
    assert.equal(res.headers.get('access-control-allow-origin'), 'http://example.test');
  });

  test('tokenize and detokenize round-trip; health says ok', async () => {
    const t = (await (
      await fetch(`${s.url}/tokenize`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'Hello world' }),
      })
    ).json()) as { tokens: number[]; count: number };
    assert.equal(t.count, t.tokens.length);
    const d = (await (
      await fetch(`${s.url}/detokenize`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tokens: t.tokens }),
      })
    ).json()) as { prompt: string };
    assert.equal(d.prompt, 'Hello world');
    const h = await fetch(`${s.url}/health`);
    assert.equal(h.status, 200);
  });

  test('an API key is required when set; a full queue answers 429 with Retry-After', async () => {
    const guarded = await startTestServer(await fixtureExport('fast'), ['--api-key', 'sekret', '--max-num-seqs', '1', '--max-queue', '0'], 'wrong');
    try {
      await assert.rejects(
        guarded.client.chat.completions.create({ model: guarded.model, messages: [{ role: 'user', content: 'x' }] }),
        OpenAI.AuthenticationError,
      );
      const ok = new OpenAI({ baseURL: `${guarded.url}/v1`, apiKey: 'sekret', maxRetries: 0 });
      assert.equal((await fetch(`${guarded.url}/health`)).status, 200, 'health stays open');
      const holder = new AbortController();
      const long = ok.chat.completions.create(
        {
          model: guarded.model,
          messages: [{ role: 'user', content: 'x' }],
          max_tokens: 3000,
          ignore_eos: true,
        } as OpenAI.ChatCompletionCreateParamsNonStreaming,
        { signal: holder.signal },
      );
      await until(async () => (await healthOf(guarded.url)).running === 1, 'the long request to run');
      const res = await fetch(`${guarded.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer sekret' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'y' }], max_tokens: 2 }),
      });
      assert.equal(res.status, 429);
      assert.ok(Number(res.headers.get('retry-after')) >= 1);
      await assert.rejects(
        ok.chat.completions.create({ model: guarded.model, messages: [{ role: 'user', content: 'y' }], max_tokens: 2 }),
        OpenAI.RateLimitError,
      );
      // The request that held the only slot has done its job; hanging up frees it.
      holder.abort();
      await assert.rejects(long, OpenAI.APIUserAbortError);
      await until(async () => (await healthOf(guarded.url)).running === 0, 'the held slot to be freed');
    } finally {
      await guarded.close();
    }
  });
});
