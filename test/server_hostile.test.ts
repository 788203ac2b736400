import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { fixtureExport } from './support/engine.js';
import { startTestServer, type TestServer, until } from './support/server.js';

describe('test/server_hostile.test', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--max-model-len', '256', '--body-limit', '1MiB']);
  });
  after(async () => {
    await s.close();
  });

  const msg = [{ role: 'user', content: 'hi' }];

  /** Raw bodies and field variations a careless or hostile client might send. */
  function hostileBodies(): Array<{ path: string; body: string; contentType?: string }> {
    const out: Array<{ path: string; body: string; contentType?: string }> = [];
    const chat = (o: Record<string, unknown>) => ({
      path: '/v1/chat/completions',
      body: JSON.stringify({ model: 'tiny', messages: msg, max_tokens: 2, ...o }),
    });
    const cmpl = (o: Record<string, unknown>) => ({
      path: '/v1/completions',
      body: JSON.stringify({ model: 'tiny', prompt: 'hi', max_tokens: 2, ...o }),
    });
    for (const raw of ['', '{', '{"messages": [}', 'null', '[]', '"text"', '42', 'true', '{"a":1,}', '\u0000', '{"messages": "x"}', '{}']) {
      out.push({ path: '/v1/chat/completions', body: raw }, { path: '/v1/completions', body: raw });
    }
    // For each field, values that are invalid for it (null is allowed everywhere, as in OpenAI's API).
    const junk: unknown[] = ['x', [], {}, 1e308, -1e308];
    const chatBad: Record<string, unknown[]> = {
      max_tokens: [...junk, -1, 0, 1.5, 2 ** 60, true],
      max_completion_tokens: [...junk, -5, 0, 2.5, true],
      temperature: [...junk, -0.1, 2.5, true],
      top_p: [...junk, 0, -1, 1.01, true],
      top_k: [...junk, -2, 0.5, true],
      min_p: [...junk, -0.5, 1.5, true],
      presence_penalty: [...junk, -3, 2.5, true],
      frequency_penalty: [...junk, 3, true],
      repetition_penalty: [...junk, 0, -1, 11, true],
      n: [...junk, 0, -1, 1.5, 1000, true],
      seed: ['x', [], {}, 1e308, 1.5, Number.MAX_SAFE_INTEGER * 4, true],
      logprobs: ['x', [], {}, 5],
      top_logprobs: [...junk, -1, 21, 1.5, true],
      prompt_logprobs: ['x', -1, 21, 1.5, true],
      stop: [5, [5], {}, true, new Array(100).fill('x')],
      logit_bias: ['x', [], 5, { abc: 5 }, { 1: 'x' }, { 1: 1000 }, { 999999999: 5 }],
      stream: ['x', 5, [], {}],
      tools: ['x', 5, {}, [{}], [{ type: 'function' }], [{ type: 'function', function: {} }], [{ type: 'retrieval', function: { name: 'x' } }]],
      tool_choice: ['maybe', 5, [], { type: 'function' }, { type: 'function', function: { name: 'missing' } }],
      response_format: [
        'json',
        5,
        {},
        { type: 'xml' },
        { type: 'json_schema' },
        { type: 'json_schema', json_schema: { schema: 5 } },
        { type: 'json_schema', json_schema: { schema: { type: 'nope' } } },
      ],
      guided_json: [5, 'x', '[1]', { type: 'objectx' }],
      guided_choice: ['x', [], [''], [5]],
      guided_regex: [5, '(', '[a-'],
      guided_grammar: [5, '', 'root ::= (', 'nothing ::= "x"'],
      structured_outputs: ['x', 5, { json: 5 }, { choice: [] }, { regex: '(' }, { json: {}, choice: ['a'] }],
      stream_options: ['x', 5, [], { include_usage: 'yes' }],
      chat_template_kwargs: ['x', 5, [], { enable_thinking: 'yes' }],
      reasoning_effort: ['extreme', 5, true],
      stop_token_ids: ['x', [-1], [1.5], 5],
      ignore_eos: ['x', 5],
    };
    for (const [f, values] of Object.entries(chatBad)) for (const v of values) out.push(chat({ [f]: v }));
    const cmplBad: Record<string, unknown[]> = {
      max_tokens: [...junk, -1, 0, 1.5],
      temperature: [...junk, -1, 3],
      n: [...junk, 0, 100],
      logprobs: [...junk, -1, 21, 1.5, true],
      echo: ['x', 5],
      prompt: [5, {}, [], [[]], [999999999], [-1], [1.5], [[1], 'x'], null, true],
      suffix: [5, 'tail'],
      best_of: [0, 5, 'x'],
    };
    for (const [f, values] of Object.entries(cmplBad)) for (const v of values) out.push(cmpl({ [f]: v }));
    // max_tokens 0 (above) is refused without echo; with echo it is the prompt alone, and valid.
    out.push(cmpl({ echo: true, max_tokens: -1 }), cmpl({ echo: true, logprobs: 21 }), chat({ model: 'other' }), cmpl({ model: 5 }));
    for (const m of [
      [],
      [{ role: 'wizard', content: 'x' }],
      [{ content: 'x' }],
      [{ role: 'user' }],
      [{ role: 'user', content: 5 }],
      [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }],
      [{ role: 'user', content: [{ type: 'text' }] }],
      [{ role: 'assistant', tool_calls: [{ type: 'function' }] }],
      'hello',
      null,
    ]) {
      out.push({ path: '/v1/chat/completions', body: JSON.stringify({ model: 'tiny', messages: m }) });
    }
    // A max_tokens past the context is capped, not refused (test/agent_protocol.test.ts); a prompt past it alone is refused.
    out.push(chat({ messages: [{ role: 'user', content: 'word '.repeat(2000) }] }));
    // Deep nesting and big bodies.
    out.push({ path: '/v1/chat/completions', body: '['.repeat(100_000) + ']'.repeat(100_000) });
    out.push({
      path: '/v1/chat/completions',
      body: `{"model":"tiny","messages":[{"role":"user","content":${'['.repeat(5000)}${']'.repeat(5000)}}]}`,
    });
    out.push({
      path: '/v1/chat/completions',
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'x'.repeat(2 * 2 ** 20) }] }),
    });
    out.push({ path: '/v1/chat/completions', body: JSON.stringify({ model: 'tiny', messages: msg }), contentType: 'text/plain' });
    out.push(
      { path: '/tokenize', body: JSON.stringify({ prompt: 5 }) },
      { path: '/detokenize', body: JSON.stringify({ tokens: [-5] }) },
      { path: '/detokenize', body: JSON.stringify({ tokens: [1e12] }) },
    );
    // Hardening: empty detokenize, schemas too deep for anything recursive, refused grammars in bulk.
    out.push({ path: '/detokenize', body: JSON.stringify({ tokens: [] }) });
    const deepSchema = `${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`;
    out.push({
      path: '/v1/chat/completions',
      body: `{"model":"tiny","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"d","schema":${deepSchema}}}}`,
    });
    out.push({ path: '/v1/completions', body: `{"model":"tiny","prompt":"x","guided_json":${deepSchema}}` });
    let arrays: unknown = { type: 'string' };
    for (let i = 0; i < 70; i++) arrays = { type: 'array', items: arrays };
    out.push(
      cmpl({ guided_json: arrays }),
      chat({ tools: [{ type: 'function', function: { name: 'f', parameters: arrays } }], tool_choice: 'required' }),
    );
    out.push(cmpl({ guided_grammar: `root ::= "${'x'.repeat(300_000)}"` }));
    for (let i = 0; i < 60; i++) out.push(cmpl({ guided_grammar: `root ::= undefined_rule_${i}` }));
    // The Responses API.
    const resp = (o: Record<string, unknown>) => ({
      path: '/v1/responses',
      body: JSON.stringify({ model: 'tiny', input: 'hi', max_output_tokens: 2, ...o }),
    });
    const respBad: Record<string, unknown[]> = {
      input: [
        5,
        null,
        {},
        [5],
        [{ role: 'wizard', content: 'x' }],
        [{ type: 'function_call' }],
        [{ type: 'function_call_output', call_id: 'x' }],
        [{ role: 'user', content: [{ type: 'input_image' }] }],
      ],
      max_output_tokens: [...junk, 0, -1, 1.5],
      temperature: [...junk, -1, 3],
      // A hosted tool (web_search) is left out, not refused (test/agent_protocol.test.ts); an unknown type or naming one is.
      tools: ['x', [{}], [{ type: 'function' }], [{ type: 'teleport' }], [{ type: 'namespace', name: 'n', tools: [] }]],
      tool_choice: ['maybe', { type: 'function' }, { type: 'function', name: 'missing' }, { type: 'web_search_preview' }],
      text: [
        'x',
        { format: { type: 'xml' } },
        { format: { type: 'json_schema' } },
        { format: { type: 'json_schema', name: 'a', schema: { type: 'nope' } } },
      ],
      reasoning: ['x', { effort: 'extreme' }, { summary: 5 }],
      previous_response_id: [5, 'resp_missing'],
      thinking_token_budget: [-1, 'x', 1.5],
      metadata: ['x', { a: 5 }],
    };
    for (const [f, values] of Object.entries(respBad)) for (const v of values) out.push(resp({ [f]: v }));
    out.push(resp({ model: 'other' }), { path: '/v1/responses', body: '{"input": ' }, { path: '/v1/responses', body: '[]' });
    // Anthropic's Messages API (its own envelope is checked in the test below).
    const msgs = (o: Record<string, unknown>) => ({
      path: '/v1/messages',
      body: JSON.stringify({ model: 'x', max_tokens: 2, messages: [{ role: 'user', content: 'hi' }], ...o }),
    });
    const msgsBad: Record<string, unknown[]> = {
      max_tokens: [undefined, 0, -1, 'x', 1.5],
      messages: [
        [],
        'x',
        [{ role: 'wizard', content: 'x' }],
        [{ role: 'user', content: [] }],
        [{ role: 'user', content: [{ type: 'image' }] }],
        [{ role: 'user', content: [{ type: 'tool_use', id: 'a', name: 'f', input: {} }] }],
        [{ role: 'assistant', content: [{ type: 'tool_result', tool_use_id: 'a' }] }],
      ],
      system: [5, [{ type: 'image' }]],
      tools: ['x', [{}], [{ name: 'f' }]],
      tool_choice: ['auto', { type: 'tool' }, { type: 'tool', name: 'missing' }, { type: 'maybe' }],
      thinking: ['x', { type: 'enabled' }, { type: 'enabled', budget_tokens: -1 }],
      temperature: [-1, 2, 'x'],
      stop_sequences: ['x', [5]],
    };
    for (const [f, values] of Object.entries(msgsBad)) for (const v of values) out.push(msgs({ [f]: v }));
    out.push(
      { path: '/v1/messages', body: 'null' },
      { path: '/v1/messages/count_tokens', body: '{"model": "x"}' },
      { path: '/v1/messages/count_tokens', body: '{"model": "x", "messages": "x"}' },
    );
    return out;
  }

  test('hundreds of malformed or hostile bodies get 4xx in the OpenAI envelope, and the server keeps serving', async () => {
    const bodies = hostileBodies();
    assert.ok(bodies.length >= 200, `${bodies.length} bodies`);
    for (const b of bodies) {
      const res = await fetch(`${s.url}${b.path}`, {
        method: 'POST',
        headers: { 'content-type': b.contentType ?? 'application/json' },
        body: b.body,
      });
      const text = await res.text();
      assert.ok(res.status >= 400 && res.status < 500, `${res.status} for ${b.path} ${b.body.slice(0, 120)}: ${text.slice(0, 200)}`);
      const parsed = JSON.parse(text) as { type?: string; error?: { message?: string; type?: string } };
      assert.equal(typeof parsed.error?.message, 'string', text.slice(0, 200));
      assert.equal(typeof parsed.error?.type, 'string');
      // Each API answers in its own envelope: Anthropic's has type "error" at the top.
      if (b.path.startsWith('/v1/messages')) assert.equal(parsed.type, 'error', text.slice(0, 200));
      else assert.equal(parsed.type, undefined, text.slice(0, 200));
    }
    const ok = await s.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'still there?' }], max_tokens: 2 });
    assert.equal(ok.choices.length, 1);
  });

  test('more sequences in one request than could ever be queued is a 400 naming n, and the server stays idle', async () => {
    const post = (body: unknown) =>
      fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    // The defaults: a batch of --max-num-seqs plus --max-queue waiting, far below 64 prompts × n 16.
    const tooMany = await post({ model: 'tiny', prompt: Array.from({ length: 64 }, (_, i) => `p${i}`), n: 16, max_tokens: 1 });
    assert.equal(tooMany.status, 400);
    const error = ((await tooMany.json()) as { error: { message: string; type: string; param: string } }).error;
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(error.param, 'n');
    assert.match(error.message, /1024 sequences/);
    const health = (await (await fetch(`${s.url}/health`)).json()) as { running: number; waiting: number };
    assert.deepEqual([health.running, health.waiting], [0, 0]);
    // A Hub-style id with its slash in the path reaches the model lookup (a 404 naming the model), not "no route".
    const hub = await fetch(`${s.url}/v1/models/Qwen/nope`);
    assert.equal(hub.status, 404);
    assert.equal(((await hub.json()) as { error: { code: string } }).error.code, 'model_not_found');
    // An unknown model's name is echoed shortened, not whole.
    const long = await post({ model: 'm'.repeat(100_000), prompt: 'x', max_tokens: 1 });
    assert.equal(long.status, 404);
    assert.ok(((await long.json()) as { error: { message: string } }).error.message.length < 1000);
    // Within the bound it is served.
    const ok = await post({ model: 'tiny', prompt: ['a', 'b'], n: 2, max_tokens: 1 });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { choices: unknown[] }).choices.length, 4);
    // Too many prompts names the bound rather than a bare "Invalid input".
    const prompts = await post({ model: 'tiny', prompt: Array.from({ length: 65 }, () => 'x'), max_tokens: 1 });
    assert.equal(prompts.status, 400);
    assert.match(((await prompts.json()) as { error: { message: string } }).error.message, /1 to 64 strings/);
  });

  test('a body over --body-limit gets its 413 while the rest is read and dropped, so a client still uploading sees the 413, not a reset', async () => {
    const url = new URL(s.url);
    const total = 5 * 2 ** 20;
    const socket = connect(Number(url.port), url.hostname);
    let answer = '';
    let error: string | null = null;
    socket.on('data', (d) => (answer += d.toString()));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    await new Promise((resolve) => socket.on('connect', resolve));
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${total}\r\n\r\n`);
    // Paced, as a client on a real network uploads: the server answers long before the end.
    const chunk = Buffer.alloc(64 * 1024, 'a');
    let sent = 0;
    while (sent < total && error === null && !socket.destroyed) {
      socket.write(chunk);
      sent += chunk.length;
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await until(() => /payload_too_large/.test(answer) || error !== null, 'the 413 to arrive');
    socket.destroy();
    assert.equal(error, null);
    assert.equal(sent, total, 'the whole body went out');
    assert.match(answer, /^HTTP\/1.1 413 /);
    assert.match(answer, /"code":"payload_too_large"/);
    // The SDK reads it as a 413 on every try.
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'x', maxRetries: 2 });
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x'.repeat(total) }], max_tokens: 1 }),
        (err: unknown) => err instanceof OpenAI.APIError && err.status === 413,
      );
    }
  });

  test('a Content-Length over --body-limit is answered 413 at once, before any body byte is sent', async () => {
    const url = new URL(s.url);
    const socket = connect(Number(url.port), url.hostname);
    await new Promise((resolve) => socket.on('connect', resolve));
    let answer = '';
    const got413 = new Promise<void>((resolve) =>
      socket.on('data', (d) => {
        answer += d.toString();
        if (answer.includes('"payload_too_large"')) resolve();
      }),
    );
    // A client that announces its body and waits for an interim answer before sending it.
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${8 * 2 ** 20}\r\n\r\n`);
    const timedOut = Symbol('timed out');
    // The request timeout (60 s) would answer 408 eventually: 413 must come long before it.
    const first = await Promise.race([got413, new Promise((resolve) => setTimeout(() => resolve(timedOut), 10_000))]);
    socket.destroy();
    assert.notEqual(first, timedOut, `no 413 within 10 s: ${answer}`);
    assert.match(answer, /^HTTP\/1.1 413 /);
    // The same through the SDK, with the length announced by fetch before its body.
    const big = 'x'.repeat(2 * 2 ** 20);
    await assert.rejects(
      s.client.completions.create({ model: 'tiny', prompt: big, max_tokens: 1 }),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 413 && (err.error as { code?: string }).code === 'payload_too_large',
    );
    // The connection pool still works afterwards.
    const ok = await s.client.completions.create({ model: 'tiny', prompt: 'hi', max_tokens: 1 });
    assert.equal(ok.choices.length, 1);
  });
});
