import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { fixtureExport } from './support/engine.js';
import { FIXTURE_DIR, FIXTURE_REFERENCE, type ReferenceCase } from './support/runner.js';
import { healthOf, startTestServer, type TestServer, until } from './support/server.js';

const cases = (JSON.parse(readFileSync(FIXTURE_REFERENCE, 'utf8')) as { cases: ReferenceCase[] }).cases;
const tokenizer = QwenTokenizer.fromDir(FIXTURE_DIR);
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
  const r = await s.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6, temperature: 0 });
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

test('stop strings cut the output and are not returned', async () => {
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
});

test('/v1/completions with the fixture token ids matches the reference log-probabilities', async () => {
  const r = await s.client.completions.create({
    model: 'tiny',
    prompt: cases.map((c) => c.prompt_ids),
    max_tokens: 8,
    temperature: 0,
    logprobs: 20,
    return_tokens_as_token_ids: true,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  assert.equal(r.choices.length, 3);
  r.choices.forEach((choice, i) => {
    const lp = choice.logprobs!;
    assert.deepEqual(
      lp.tokens!.map((t) => Number(t.slice('token_id:'.length))),
      cases[i].greedy_ids,
    );
    lp.top_logprobs!.forEach((top, k) => {
      const ref = cases[i].steps[k];
      ref.top_ids.forEach((id, j) => {
        const got = top[`token_id:${id}`];
        assert.ok(got !== undefined, `case ${i} step ${k}: token ${id} missing from top_logprobs`);
        assert.ok(Math.abs(got - ref.top_logprobs[j]) < 1e-3, `case ${i} step ${k} token ${id}: ${got} vs ${ref.top_logprobs[j]}`);
      });
    });
  });
  const streamed = await s.client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 4, temperature: 0, stream: true, echo: true });
  let text = '';
  for await (const c of streamed) text += c.choices[0]?.text ?? '';
  const plain = await s.client.completions.create({ model: 'tiny', prompt: 'Hello', max_tokens: 4, temperature: 0 });
  assert.equal(text, `Hello${plain.choices[0].text}`);
});

test("echo with logprobs scores the prompt (lm-eval log-likelihood requests): the reference, then the model's own decode", async () => {
  type LegacyLogprobs = {
    tokens: string[];
    token_logprobs: Array<number | null>;
    top_logprobs: Array<Record<string, number> | null>;
    text_offset: number[];
  };
  // Each case's prompt followed by its greedy continuation, prompt only (max_tokens 0):
  // the continuation's scores are the independent reference's.
  const r = await s.client.completions.create({
    model: 'tiny',
    prompt: cases.map((c) => [...c.prompt_ids, ...c.greedy_ids]),
    max_tokens: 0,
    echo: true,
    logprobs: 5,
    temperature: 0,
    return_tokens_as_token_ids: true,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  assert.equal(r.usage?.completion_tokens, 0);
  r.choices.forEach((choice, i) => {
    const c = cases[i];
    const lp = choice.logprobs as unknown as LegacyLogprobs;
    assert.equal(choice.finish_reason, 'length');
    assert.deepEqual(
      lp.tokens.map((t) => Number(t.slice('token_id:'.length))),
      [...c.prompt_ids, ...c.greedy_ids],
    );
    assert.equal(lp.token_logprobs[0], null, 'nothing scores the first token');
    // Offsets index the echoed text, even with tokens named by id.
    assert.equal(lp.text_offset[0], 0);
    assert.ok(
      lp.text_offset.every((o, k) => k === 0 || o > lp.text_offset[k - 1]),
      `offsets advance: ${lp.text_offset}`,
    );
    assert.equal(lp.top_logprobs[0], null);
    c.greedy_ids.forEach((id, k) => {
      const at = c.prompt_ids.length + k;
      const ref = c.steps[k];
      assert.ok(
        Math.abs(lp.token_logprobs[at]! - ref.top_logprobs[0]) < 1e-3,
        `case ${i} token ${k}: ${lp.token_logprobs[at]} vs ${ref.top_logprobs[0]}`,
      );
      for (const [j, top] of ref.top_ids.slice(0, 5).entries()) {
        assert.ok(Math.abs(lp.top_logprobs[at]![`token_id:${top}`] - ref.top_logprobs[j]) < 1e-3, `case ${i} token ${k} alternative ${top}`);
      }
      assert.equal(id, ref.top_ids[0]);
    });
  });

  // A prompt longer than a prefill chunk (64) and a scoring slice (64): its continuation's
  // scores equal those the model gave while generating it, and one token follows.
  const gen = await s.client.completions.create({
    model: 'tiny',
    prompt: cases[0].prompt_ids,
    max_tokens: 90,
    temperature: 0,
    logprobs: 0,
    ignore_eos: true,
    return_tokens_as_token_ids: true,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  const genLp = gen.choices[0].logprobs as unknown as LegacyLogprobs;
  const ids = [...cases[0].prompt_ids, ...genLp.tokens.map((t) => Number(t.slice('token_id:'.length)))];
  const echoed = await s.client.completions.create({
    model: 'tiny',
    prompt: ids,
    max_tokens: 1,
    echo: true,
    logprobs: 0,
    temperature: 0,
    return_tokens_as_token_ids: true,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  const lp = echoed.choices[0].logprobs as unknown as LegacyLogprobs;
  assert.equal(lp.tokens.length, ids.length + 1, 'the prompt, then the generated token');
  genLp.token_logprobs.forEach((g, k) => {
    const got = lp.token_logprobs[cases[0].prompt_ids.length + k]!;
    assert.ok(Math.abs(got - g!) < 1e-3, `position ${k}: ${got} vs ${g}`);
  });
  assert.equal(echoed.usage?.completion_tokens, 1);

  // Streamed: the first chunk is the echoed prompt with its scores; text offsets count from 0.
  const stream = await s.client.completions.create({
    model: 'tiny',
    prompt: 'Hello there, world',
    max_tokens: 2,
    echo: true,
    logprobs: 1,
    temperature: 0,
    stream: true,
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  const first = chunks[0].choices[0];
  const firstLp = first.logprobs as unknown as LegacyLogprobs;
  assert.equal(first.text, 'Hello there, world');
  assert.equal(firstLp.tokens.join(''), 'Hello there, world');
  assert.equal(firstLp.text_offset[0], 0);
  assert.equal(firstLp.token_logprobs[0], null);
  assert.ok(firstLp.token_logprobs.slice(1).every((x) => typeof x === 'number' && x <= 0));
  const next = chunks[1].choices[0].logprobs as unknown as LegacyLogprobs;
  assert.equal(next.text_offset[0], 'Hello there, world'.length, 'generated tokens follow the echo');

  // max_tokens 0 means something only with echo.
  await assert.rejects(
    s.client.completions.create({ model: 'tiny', prompt: 'Hi', max_tokens: 0 }),
    (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.param === 'max_tokens',
  );
  const echoOnly = await s.client.completions.create({ model: 'tiny', prompt: 'Hi', max_tokens: 0, echo: true });
  assert.equal(echoOnly.choices[0].text, 'Hi');
  assert.equal(echoOnly.choices[0].logprobs, null);
});

test("vLLM's prompt_logprobs: the reference's scores with ranks, on both endpoints; not in a stream", async () => {
  type Entry = { logprob: number; rank: number | null; decoded_token: string };
  const c = cases[0];
  const ids = [...c.prompt_ids, ...c.greedy_ids];
  const r = await s.client.completions.create({
    model: 'tiny',
    prompt: ids,
    max_tokens: 1,
    temperature: 0,
    prompt_logprobs: 3,
  } as OpenAI.CompletionCreateParamsNonStreaming);
  const scores = (r.choices[0] as unknown as { prompt_logprobs: Array<Record<string, Entry> | null> }).prompt_logprobs;
  assert.equal(scores.length, ids.length);
  assert.equal(scores[0], null);
  c.greedy_ids.forEach((id, k) => {
    const at = scores[c.prompt_ids.length + k]!;
    assert.equal(at[id].rank, 1, 'the greedy token ranks first');
    assert.ok(Math.abs(at[id].logprob - c.steps[k].top_logprobs[0]) < 1e-3);
    assert.equal(at[id].decoded_token, new TextDecoder().decode(tokenizer.tokenBytes(id)!));
    c.steps[k].top_ids.slice(0, 3).forEach((top, j) => {
      assert.equal(at[top].rank, j + 1);
      assert.ok(Math.abs(at[top].logprob - c.steps[k].top_logprobs[j]) < 1e-3);
    });
  });
  // A prompt token that is not the model's first choice: its rank counts the better ones.
  const ranked = scores.slice(1).find((e) => Object.keys(e!).length === 4)!;
  const own = Object.values(ranked).find((e) => e.rank! > 3)!;
  assert.ok(own.rank! > 3 && Object.values(ranked).every((e) => e === own || e.logprob >= own.logprob));
  const chat = await s.client.chat.completions.create({
    model: 'tiny',
    messages: [{ role: 'user', content: 'Hi' }],
    max_tokens: 1,
    prompt_logprobs: 1,
    n: 2,
  } as OpenAI.ChatCompletionCreateParamsNonStreaming);
  const chatScores = (chat as unknown as { prompt_logprobs: Array<Record<string, Entry> | null> }).prompt_logprobs;
  assert.equal(chatScores.length, chat.usage!.prompt_tokens);
  assert.equal(chatScores[0], null);
  assert.ok(chatScores.slice(1).every((e) => e !== null && Object.keys(e).length <= 2));
  await assert.rejects(
    s.client.completions.create({
      model: 'tiny',
      prompt: 'x',
      max_tokens: 1,
      stream: true,
      prompt_logprobs: 2,
    } as OpenAI.CompletionCreateParamsStreaming),
    (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.param === 'prompt_logprobs',
  );
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
