import assert from 'node:assert/strict';
import { copyFileSync, cpSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { fixtureExport } from './support/engine.js';
import { tempDir } from './support/runner.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/server_xml_tools.test', () => {
  // The fixture with a chat template in Qwen3-Coder's style (calls as XML): whatever the
  // random weights pick, a forced call comes back parsed and typed by the tool's schema.
  const TEMPLATE = new URL('../../test/fixtures/templates/xml_tool_calls.jinja', import.meta.url).pathname;
  let s: TestServer;

  before(async () => {
    const dir = join(tempDir(), 'xml-template');
    cpSync(await fixtureExport('fast'), dir, { recursive: true });
    // The separate template file wins over tokenizer_config.json's, as in transformers.
    copyFileSync(TEMPLATE, join(dir, 'chat_template.jinja'));
    s = await startTestServer(dir, ['--served-model-name', 'coder']);
  });
  after(async () => {
    await s.close();
  });

  const weather: OpenAI.ChatCompletionFunctionTool = {
    type: 'function',
    function: {
      name: 'get_weather',
      parameters: {
        type: 'object',
        properties: { days: { enum: [1, 2, 3] }, metric: { type: 'boolean' }, city: { enum: ['Oslo', 'Lima'] } },
        required: ['days', 'metric', 'city'],
      },
    },
  };
  const clock: OpenAI.ChatCompletionFunctionTool = {
    type: 'function',
    function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'] } },
  };

  function checkWeather(args: Record<string, unknown>): void {
    assert.ok([1, 2, 3].includes(args.days as number), `days ${JSON.stringify(args.days)}`);
    assert.equal(typeof args.metric, 'boolean');
    assert.ok(['Oslo', 'Lima'].includes(args.city as string));
  }

  test('a named forced call is written in XML and comes back as an OpenAI tool call, its values typed by the schema', async () => {
    const r = await s.client.chat.completions.create({
      model: 'coder',
      messages: [{ role: 'user', content: 'Weather in Oslo?' }],
      tools: [weather, clock],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      max_tokens: 120,
    });
    const call = r.choices[0].message.tool_calls?.[0] as OpenAI.ChatCompletionMessageFunctionToolCall;
    assert.equal(call?.function.name, 'get_weather', JSON.stringify(r.choices[0]));
    checkWeather(JSON.parse(call.function.arguments));
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
  });

  test('tool_choice required: the model picks a tool; streamed, the call arrives a parameter at a time', async () => {
    const stream = await s.client.chat.completions.create({
      model: 'coder',
      messages: [{ role: 'user', content: 'Anything.' }],
      tools: [weather, clock],
      tool_choice: 'required',
      max_tokens: 120,
      stream: true,
    });
    const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    let finish: string | null = null;
    for await (const c of stream) {
      calls.push(...(c.choices[0]?.delta?.tool_calls ?? []));
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    // The first delta names the call; the arguments follow in pieces that join to its JSON.
    assert.ok(calls.length >= 2, JSON.stringify(calls));
    assert.ok(calls.every((c) => c.index === 0));
    assert.match(calls[0].id ?? '', /^call_/);
    assert.equal(calls[0].function?.arguments, '');
    assert.ok(calls.slice(1).every((c) => c.id === undefined && c.function?.name === undefined));
    const args = JSON.parse(calls.map((c) => c.function?.arguments ?? '').join('')) as Record<string, unknown>;
    if (calls[0].function?.name === 'get_weather') checkWeather(args);
    else assert.ok(['UTC', 'CET'].includes(args.zone as string), JSON.stringify(args));
    assert.equal(finish, 'tool_calls');
  });

  test("earlier calls are rendered in the template's XML, from the client's JSON arguments; arguments that are not an object are a 400", async () => {
    const messages = [
      { role: 'user', content: 'Weather?' },
      {
        role: 'assistant',
        content: '',
        tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"days": 2, "metric": true, "city": "Lima"}' } }],
      },
      { role: 'tool', tool_call_id: 'call_1', content: 'Sunny.' },
    ];
    const res = await fetch(`${s.url}/tokenize`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, tools: [weather] }),
    });
    assert.equal(res.status, 200);
    const { tokens } = (await res.json()) as { tokens: number[] };
    const text = (
      (await (
        await fetch(`${s.url}/detokenize`, { method: 'POST', body: JSON.stringify({ tokens }), headers: { 'content-type': 'application/json' } })
      ).json()) as {
        prompt: string;
      }
    ).prompt;
    assert.match(
      text,
      /<tool_call>\n<function=get_weather>\n<parameter=days>\n2\n<\/parameter>\n<parameter=metric>\ntrue\n<\/parameter>\n<parameter=city>\nLima\n<\/parameter>\n<\/function>\n<\/tool_call>/,
    );
    assert.match(text, /<tool_response>\nSunny.\n<\/tool_response>/);
    await assert.rejects(
      s.client.chat.completions.create({
        model: 'coder',
        messages: [
          { role: 'user', content: 'Weather?' },
          { role: 'assistant', content: '', tool_calls: [{ id: 'c', type: 'function', function: { name: 'get_weather', arguments: '[1, 2]' } }] },
          { role: 'tool', tool_call_id: 'c', content: 'x' },
        ],
        max_tokens: 2,
      }),
      (err: unknown) =>
        err instanceof OpenAI.BadRequestError && /messages\[1\]\.tool_calls\[0\]\.function\.arguments must be a JSON object/.test(err.message),
    );
  });

  test("Anthropic's Messages API, streamed: a forced tool_use whose input arrives as JSON pieces", async () => {
    const client = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
    const stream = client.messages.stream({
      model: 'coder',
      max_tokens: 120,
      messages: [{ role: 'user', content: 'Weather?' }],
      tools: [{ name: 'get_weather', input_schema: weather.function.parameters as Anthropic.Tool.InputSchema }],
      tool_choice: { type: 'tool', name: 'get_weather' },
    });
    let pieces = 0;
    stream.on('inputJson', () => pieces++);
    const message = await stream.finalMessage();
    const use = message.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use');
    assert.ok(use, JSON.stringify(message.content));
    checkWeather(use.input as Record<string, unknown>);
    assert.ok(pieces >= 3, `${pieces} input_json_delta events`);
  });

  test('the Responses API streams the arguments of an XML call as function_call_arguments deltas', async () => {
    const stream = await s.client.responses.create({
      model: 'coder',
      input: 'Weather?',
      tools: [{ type: 'function', name: 'get_weather', parameters: weather.function.parameters ?? null, strict: false }],
      tool_choice: { type: 'function', name: 'get_weather' },
      max_output_tokens: 120,
      stream: true,
    });
    const deltas: string[] = [];
    let done: OpenAI.Responses.ResponseFunctionToolCall | null = null;
    for await (const e of stream) {
      if (e.type === 'response.function_call_arguments.delta') deltas.push(e.delta);
      if (e.type === 'response.output_item.done' && e.item.type === 'function_call') done = e.item;
    }
    assert.ok(done);
    assert.ok(deltas.length >= 3, JSON.stringify(deltas));
    assert.equal(deltas.join(''), done.arguments);
    checkWeather(JSON.parse(done.arguments));
  });

  test("Anthropic's Messages API: a forced tool_use with typed input, and the conversation continues with its result", async () => {
    const client = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
    const tools: Anthropic.Tool[] = [{ name: 'get_weather', input_schema: weather.function.parameters as Anthropic.Tool.InputSchema }];
    const first = await client.messages.create({
      model: 'coder',
      max_tokens: 120,
      messages: [{ role: 'user', content: 'Weather?' }],
      tools,
      tool_choice: { type: 'tool', name: 'get_weather' },
    });
    const use = first.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use');
    assert.ok(use, JSON.stringify(first.content));
    checkWeather(use.input as Record<string, unknown>);
    assert.equal(first.stop_reason, 'tool_use');
    const second = await client.messages.create({
      model: 'coder',
      max_tokens: 4,
      messages: [
        { role: 'user', content: 'Weather?' },
        { role: 'assistant', content: first.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'Sunny.' }] },
      ],
      tools,
    });
    assert.equal(second.type, 'message');
  });
});
