import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { startScriptedServer } from './support/scripted_checkpoint.js';
import type { TestServer } from './support/server.js';

describe('test/server_tools.test', () => {
  // A real Qwen3 graph whose weights spell out: thinking, then a tool call, then <|im_end|>.
  const SCRIPT = '<think>Plan it.</think>\n\n<tool_call>{"name":"get_weather","arguments":{"days":3}}</tool_call><|im_end|>';
  let s: TestServer;

  const tools: OpenAI.ChatCompletionTool[] = [
    {
      type: 'function',
      function: { name: 'get_weather', description: 'Weather forecast', parameters: { type: 'object', properties: { days: { type: 'integer' } } } },
    },
  ];

  before(async () => {
    s = await startScriptedServer(SCRIPT);
  });
  after(async () => {
    await s.close();
  });

  test('thinking then a tool call: reasoning_content, tool_calls, finish_reason tool_calls', async () => {
    const r = await s.client.chat.completions.create({ model: 'scripted', messages: [{ role: 'user', content: 'Weather?' }], tools, temperature: 0 });
    const msg = r.choices[0].message as OpenAI.ChatCompletionMessage & { reasoning_content?: string };
    assert.equal(msg.reasoning_content, 'Plan it.');
    assert.equal(msg.content, null);
    assert.equal(msg.tool_calls?.length, 1);
    const call = msg.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { days: 3 });
    assert.match(call.id, /^call_/);
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(r.usage?.completion_tokens_details?.reasoning_tokens, 5, '<think> Plan it . </think>');
  });

  test('streamed: reasoning deltas, one tool-call delta with id and arguments, then finish', async () => {
    const stream = await s.client.chat.completions.create({
      model: 'scripted',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools,
      temperature: 0,
      stream: true,
    });
    let reasoning = '';
    let content = '';
    const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    let finish: string | null = null;
    for await (const c of stream) {
      const d = c.choices[0]?.delta as (OpenAI.ChatCompletionChunk.Choice.Delta & { reasoning_content?: string }) | undefined;
      reasoning += d?.reasoning_content ?? '';
      content += d?.content ?? '';
      calls.push(...(d?.tool_calls ?? []));
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(reasoning, 'Plan it.');
    assert.equal(content, '');
    assert.equal(calls.length, 1);
    assert.equal(calls[0].index, 0);
    assert.equal(calls[0].function?.name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].function!.arguments!), { days: 3 });
    assert.equal(finish, 'tool_calls');
  });

  test('without tools the same output is plain text; with thinking off it is all content', async () => {
    const noTools = await s.client.chat.completions.create({ model: 'scripted', messages: [{ role: 'user', content: 'Weather?' }], temperature: 0 });
    assert.equal(noTools.choices[0].message.content, '<tool_call>{"name":"get_weather","arguments":{"days":3}}</tool_call>');
    assert.equal(noTools.choices[0].finish_reason, 'stop');
    // Thinking off: the prompt ends with "</think>\n\n", so the script continues at the tool call.
    const off = await s.client.chat.completions.create({
      model: 'scripted',
      messages: [{ role: 'user', content: 'Weather?' }],
      tools,
      temperature: 0,
      chat_template_kwargs: { enable_thinking: false },
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const msg = off.choices[0].message as OpenAI.ChatCompletionMessage & { reasoning_content?: string };
    assert.equal(msg.reasoning_content, undefined);
    assert.equal((msg.tool_calls![0] as OpenAI.ChatCompletionMessageFunctionToolCall).function.name, 'get_weather');
  });

  test('tool results go back through the template as tool messages', async () => {
    const r = await s.client.chat.completions.create({
      model: 'scripted',
      temperature: 0,
      max_tokens: 3,
      tools,
      messages: [
        { role: 'user', content: 'Weather?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"days":3}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '{"forecast":"sun"}' },
      ],
    });
    assert.ok(r.usage!.prompt_tokens > 100, 'tools, call and result are in the prompt');
    await assert.rejects(
      s.client.chat.completions.create({
        model: 'scripted',
        messages: [{ role: 'user', content: 'x' }],
        tools,
        tool_choice: { type: 'function', function: { name: 'nope' } },
      }),
      OpenAI.BadRequestError,
    );
  });

  test('with thinking on, a grammar holds after </think>: the reasoning stays free text, the answer follows the schema', async () => {
    const schema = {
      type: 'object',
      properties: { days: { type: 'integer', minimum: 1, maximum: 7 } },
      required: ['days'],
      additionalProperties: false,
    };
    const r = await s.client.chat.completions.create({
      model: 'scripted',
      messages: [{ role: 'user', content: 'Weather?' }],
      temperature: 0,
      max_tokens: 60,
      response_format: { type: 'json_schema', json_schema: { name: 'forecast', schema } },
    });
    const msg = r.choices[0].message as OpenAI.ChatCompletionMessage & { reasoning_content?: string };
    // The script's thinking comes through untouched; what it would write next (a tool call) cannot.
    assert.equal(msg.reasoning_content, 'Plan it.');
    const answer = JSON.parse(msg.content ?? '') as { days: number };
    assert.deepEqual(Object.keys(answer), ['days']);
    assert.ok(Number.isInteger(answer.days) && answer.days >= 1 && answer.days <= 7, msg.content ?? '');
    assert.equal(r.choices[0].finish_reason, 'stop');
  });
});
