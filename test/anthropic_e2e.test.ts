import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { THINKING_TRANSITION } from '../src/serving/chat_prompt.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { tempDir } from './support/runner.js';
import { chain, writeScriptedCheckpoint } from './support/scripted_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/anthropic_e2e.test', () => {
  // The real @anthropic-ai/sdk against real servers: a scripted model that thinks, then
  // calls a tool (or, thinking off, calls it at once), and one that thinks forever.
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const NEWLINE = tokenizer.encode('\n')[0];
  const SCRIPT = '<think>Plan it.</think>\n\n<tool_call>{"name":"get_weather","arguments":{"days":3}}</tool_call><|im_end|>';
  const [THINK] = tokenizer.encode('<think>');
  const [BLANK] = tokenizer.encode('\n\n');
  const ANSWER = tokenizer.encode('The answer.<|im_end|>');
  let tools: TestServer;
  let thinker: TestServer;
  let client: Anthropic;
  let thinkerClient: Anthropic;

  before(async () => {
    const a = join(tempDir(), 'tools');
    writeScriptedCheckpoint(a, chain(NEWLINE, tokenizer.encode(SCRIPT)));
    tools = await startTestServer(a, ['--served-model-name', 'scripted']);
    client = new Anthropic({ baseURL: tools.url, apiKey: 'unused', maxRetries: 0 });
    const b = join(tempDir(), 'thinker');
    writeScriptedCheckpoint(b, [[NEWLINE, THINK], [THINK, NEWLINE], ...chain(BLANK, ANSWER)]);
    thinker = await startTestServer(b, ['--served-model-name', 'thinker', '--api-key', 'sekret'], 'sekret');
    thinkerClient = new Anthropic({ baseURL: thinker.url, apiKey: 'sekret', maxRetries: 0 });
  });
  after(async () => {
    await tools.close();
    await thinker.close();
  });

  const weather: Anthropic.Tool[] = [
    { name: 'get_weather', description: 'Weather forecast', input_schema: { type: 'object', properties: { days: { type: 'integer' } } } },
  ];
  // Greedy (temperature 0) in every request; the scripted models are deterministic anyway.
  const ask = {
    model: 'claude-any-name',
    max_tokens: 60,
    messages: [{ role: 'user', content: 'Weather?' }],
    temperature: 0,
  } as Anthropic.MessageCreateParamsNonStreaming;

  test('messages.create: text, usage and end_turn; any model name is served', async () => {
    const r = await client.messages.create(ask);
    assert.equal(r.type, 'message');
    assert.equal(r.role, 'assistant');
    assert.match(r.id, /^msg_/);
    assert.equal(r.content[0].type, 'text');
    assert.match((r.content[0] as Anthropic.TextBlock).text, /get_weather/);
    assert.equal(r.stop_reason, 'end_turn');
    assert.ok(r.usage.input_tokens > 5 && r.usage.output_tokens > 5);
  });

  test('tools: a tool_use block and stop_reason tool_use, then a tool_result round trip', async () => {
    const r = await client.messages.create({ ...ask, tools: weather });
    assert.equal(r.stop_reason, 'tool_use');
    const use = r.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use')!;
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, { days: 3 });
    assert.match(use.id, /^toolu_/);
    const history: Anthropic.MessageParam[] = [
      { role: 'user', content: 'Weather?' },
      { role: 'assistant', content: r.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'Sunny for 3 days.' }] },
    ];
    const next = await client.messages.create({ ...ask, tools: weather, messages: history });
    assert.ok(['tool_use', 'end_turn'].includes(next.stop_reason!));
    // The tool result reached the prompt.
    const before = await client.messages.countTokens({ model: 'x', tools: weather, messages: history.slice(0, 2) });
    const withResult = await client.messages.countTokens({ model: 'x', tools: weather, messages: history });
    assert.ok(withResult.input_tokens > before.input_tokens + 5, `${before.input_tokens} → ${withResult.input_tokens}`);
  });

  test('thinking enabled: a thinking block before the tool call; streamed with Anthropic events', async () => {
    const r = await client.messages.create({ ...ask, tools: weather, thinking: { type: 'enabled', budget_tokens: 1024 } });
    assert.deepEqual(
      r.content.map((b) => b.type),
      ['thinking', 'tool_use'],
    );
    assert.equal((r.content[0] as Anthropic.ThinkingBlock).thinking, 'Plan it.');
    const stream = client.messages.stream({ ...ask, tools: weather, thinking: { type: 'enabled', budget_tokens: 1024 } });
    const kinds: string[] = [];
    stream.on('streamEvent', (e) => kinds.push(e.type));
    const final = await stream.finalMessage();
    assert.deepEqual(
      final.content.map((b) => b.type),
      ['thinking', 'tool_use'],
    );
    assert.equal((final.content[0] as Anthropic.ThinkingBlock).thinking, 'Plan it.');
    assert.deepEqual((final.content[1] as Anthropic.ToolUseBlock).input, { days: 3 });
    assert.equal(final.stop_reason, 'tool_use');
    assert.equal(kinds[0], 'message_start');
    assert.equal(kinds.at(-1), 'message_stop');
    for (const k of ['content_block_start', 'content_block_delta', 'content_block_stop', 'message_delta']) assert.ok(kinds.includes(k), k);
  });

  test('streamed text arrives as text_delta events and stop_sequences end it', async () => {
    const stream = client.messages.stream({ ...ask, stop_sequences: ['weather'] });
    let text = '';
    stream.on('text', (t) => (text += t));
    const final = await stream.finalMessage();
    assert.equal(final.stop_reason, 'stop_sequence');
    assert.equal(final.stop_sequence, 'weather');
    assert.equal((final.content[0] as Anthropic.TextBlock).text, text);
    assert.match(text, /get_$/);
  });

  test('thinking.budget_tokens bounds the thinking: exactly N thinking tokens, the transition, then the answer', async () => {
    const transition = tokenizer.encode(THINKING_TRANSITION);
    const r = await thinkerClient.messages.create({ ...ask, model: 'thinker', max_tokens: 100, thinking: { type: 'enabled', budget_tokens: 6 } });
    assert.deepEqual(
      r.content.map((b) => b.type),
      ['thinking', 'text'],
    );
    assert.match((r.content[0] as Anthropic.ThinkingBlock).thinking, /Considering the limited time/);
    assert.equal((r.content[1] as Anthropic.TextBlock).text, 'The answer.');
    assert.equal(r.usage.output_tokens, 6 + transition.length + ANSWER.length);
    // Without thinking (Anthropic's default), the answer alone.
    const plain = await thinkerClient.messages.create({ ...ask, model: 'thinker' });
    assert.equal(plain.usage.output_tokens, ANSWER.length);
  });

  test("errors come as the SDK's typed errors in Anthropic's envelope; x-api-key authenticates", async () => {
    await assert.rejects(
      new Anthropic({ baseURL: thinker.url, apiKey: 'wrong', maxRetries: 0 }).messages.create(ask),
      (err: unknown) => err instanceof Anthropic.AuthenticationError && err.status === 401,
    );
    await assert.rejects(
      thinkerClient.messages.create({ ...ask, max_tokens: undefined } as unknown as Anthropic.MessageCreateParamsNonStreaming),
      (err: unknown) => {
        assert.ok(err instanceof Anthropic.BadRequestError);
        const body = err.error as { type: string; error: { type: string; message: string } };
        assert.equal(body.type, 'error');
        assert.equal(body.error.type, 'invalid_request_error');
        assert.match(body.error.message, /max_tokens/);
        return true;
      },
    );
    const raw = await fetch(`${thinker.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': 'sekret', 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: '{"model": "x", "messages": []}',
    });
    assert.equal(raw.status, 400);
    const body = (await raw.json()) as { type: string; error: { type: string } };
    assert.equal(body.type, 'error');
    assert.equal(body.error.type, 'invalid_request_error');
    // A bad max_tokens says what is wrong with it, not that it is missing.
    for (const [value, reason] of [
      [0, />=1/],
      ['4', /expected number/],
      [1.5, /expected int/],
    ] as const) {
      await assert.rejects(
        thinkerClient.messages.create({ ...ask, max_tokens: value } as unknown as Anthropic.MessageCreateParamsNonStreaming),
        (err: unknown) => err instanceof Anthropic.BadRequestError && reason.test(err.message) && !/required/.test(err.message),
      );
    }
    // Fields are named as the Messages API names them.
    await assert.rejects(
      thinkerClient.messages.create({
        ...ask,
        output_config: { format: { type: 'json_schema', schema: { type: 'integer', minimum: 5, maximum: 1 } } },
      } as unknown as Anthropic.MessageCreateParamsNonStreaming),
      (err: unknown) => err instanceof Anthropic.BadRequestError && /output_config\.format/.test(err.message) && !/response_format/.test(err.message),
    );
    // Paths under /v1/messages that no route serves answer in Anthropic's envelope too, 401s included.
    for (const key of ['sekret', 'wrong']) {
      const missing = await fetch(`${thinker.url}/v1/messages/batches`, { method: 'POST', headers: { 'x-api-key': key } });
      assert.equal(missing.status, key === 'sekret' ? 404 : 401);
      const error = (await missing.json()) as { type: string; error: { type: string; message: string } };
      assert.equal(error.type, 'error');
      assert.equal(error.error.type, key === 'sekret' ? 'not_found_error' : 'authentication_error');
    }
  });
});
