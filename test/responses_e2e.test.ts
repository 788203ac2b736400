import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { fixtureExport } from './support/engine.js';
import { assertOpenAI } from './support/openapi.js';
import { startScriptedServer } from './support/scripted_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/responses_e2e.test', () => {
  // The Responses API through the real openai SDK and the Vercel AI SDK's default provider.
  const SCRIPT = '<think>Plan it.</think>\n\n<tool_call>{"name":"get_weather","arguments":{"days":3}}</tool_call><|im_end|>';
  let tiny: TestServer;
  let scripted: TestServer;

  before(async () => {
    tiny = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--max-model-len', '1024', '--responses-store', '3']);
    scripted = await startScriptedServer(SCRIPT);
  });
  after(async () => {
    await tiny.close();
    await scripted.close();
  });

  const weatherTool: OpenAI.Responses.FunctionTool = {
    type: 'function',
    name: 'get_weather',
    description: 'Weather forecast',
    parameters: { type: 'object', properties: { days: { type: 'integer' } } },
    strict: false,
  };

  test('responses.create: output items, usage and status match the Response schema; output_text works', async () => {
    const r = await tiny.client.responses.create({ model: 'tiny', input: 'Hello', max_output_tokens: 6, reasoning: { effort: 'none' } });
    assertOpenAI('Response', r);
    assert.equal(r.object, 'response');
    assert.equal(r.status, 'incomplete');
    assert.equal(r.incomplete_details?.reason, 'max_output_tokens');
    assert.equal(r.output[0].type, 'message');
    // The message the limit cut is incomplete too, as OpenAI's is.
    assert.equal((r.output[0] as OpenAI.Responses.ResponseOutputMessage).status, 'incomplete');
    assert.ok(r.output_text.length > 0);
    assert.equal(r.usage?.output_tokens, 6);
    assert.equal(r.usage?.output_tokens_details.reasoning_tokens, 0);
    // Thinking on: a reasoning item first, counted as reasoning tokens, with its summary when asked.
    const t = await tiny.client.responses.create({
      model: 'tiny',
      input: 'Hello',
      max_output_tokens: 6,
      reasoning: { effort: 'low', summary: 'auto' },
    });
    assertOpenAI('Response', t);
    assert.equal(t.output[0].type, 'reasoning');
    assert.equal((t.output[0] as OpenAI.Responses.ResponseReasoningItem).summary.length, 1);
    assert.ok(t.usage!.output_tokens_details.reasoning_tokens > 0);
  });

  test('streamed: the semantic events in order, each with its sequence_number, valid against ResponseStreamEvent', async () => {
    const stream = await tiny.client.responses.create({
      model: 'tiny',
      input: 'Hello',
      max_output_tokens: 6,
      reasoning: { effort: 'none' },
      stream: true,
    });
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of stream) events.push(e);
    for (const e of events) assertOpenAI('ResponseStreamEvent', e);
    const types = events.map((e) => e.type);
    assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    assert.ok(types.includes('response.output_text.delta'));
    assert.deepEqual(types.slice(-4), [
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.incomplete',
    ]);
    assert.deepEqual(
      events.map((e) => e.sequence_number),
      events.map((_, i) => i),
    );
    const done = events.find((e): e is OpenAI.Responses.ResponseOutputItemDoneEvent => e.type === 'response.output_item.done')!;
    assert.equal((done.item as OpenAI.Responses.ResponseOutputMessage).status, 'incomplete');
    const text = events
      .filter((e) => e.type === 'response.output_text.delta')
      .map((e) => (e as { delta: string }).delta)
      .join('');
    assert.equal((events.at(-1) as OpenAI.Responses.ResponseIncompleteEvent).response.output_text ?? text, text);

    // Thinking with a summary asked for: the summary streams as its own part, as OpenAI's does.
    const thought = await tiny.client.responses.create({
      model: 'tiny',
      input: 'Hello',
      max_output_tokens: 6,
      reasoning: { effort: 'low', summary: 'auto' },
      stream: true,
    });
    const seen: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of thought) seen.push(e);
    for (const e of seen) assertOpenAI('ResponseStreamEvent', e);
    const kinds = seen.map((e) => e.type).filter((t) => t.startsWith('response.reasoning_summary'));
    assert.equal(kinds[0], 'response.reasoning_summary_part.added');
    assert.deepEqual(kinds.slice(-2), ['response.reasoning_summary_text.done', 'response.reasoning_summary_part.done']);
    const deltas = seen
      .filter((e): e is OpenAI.Responses.ResponseReasoningSummaryTextDeltaEvent => e.type === 'response.reasoning_summary_text.delta')
      .map((e) => e.delta)
      .join('');
    const item = seen.find((e): e is OpenAI.Responses.ResponseOutputItemDoneEvent => e.type === 'response.output_item.done')!.item;
    assert.equal(deltas, (item as OpenAI.Responses.ResponseReasoningItem).summary[0].text);
    assert.ok(deltas.length > 0);
  });

  test('a function tool round trip with function_call_output', async () => {
    const first = await scripted.client.responses.create({ model: 'scripted', input: 'Weather?', tools: [weatherTool], temperature: 0 });
    assertOpenAI('Response', first);
    const call = first.output.find((o): o is OpenAI.Responses.ResponseFunctionToolCall => o.type === 'function_call')!;
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { days: 3 });
    assert.equal(first.output[0].type, 'reasoning');
    const next = await scripted.client.responses.create({
      model: 'scripted',
      input: [{ role: 'user', content: 'Weather?' }, call, { type: 'function_call_output', call_id: call.call_id, output: 'Sunny.' }],
      tools: [weatherTool],
      temperature: 0,
    });
    assert.equal(next.status, 'completed');
    assert.ok(next.usage!.input_tokens > first.usage!.input_tokens, 'the call and its output are in the prompt');
  });

  test('text.format json_schema through responses.parse and zodTextFormat', async () => {
    const Colour = z.object({ colour: z.enum(['red', 'green', 'blue']), bright: z.boolean() });
    const r = await tiny.client.responses.parse({
      model: 'tiny',
      input: 'A colour',
      max_output_tokens: 60,
      reasoning: { effort: 'none' },
      text: { format: zodTextFormat(Colour, 'colour') },
    });
    assert.ok(r.output_parsed);
    assert.ok(Colour.safeParse(r.output_parsed).success);
  });

  test("errors name the Responses API's own fields: input, max_output_tokens, text.format", async () => {
    const post = async (body: Record<string, unknown>) => {
      const r = await fetch(`${tiny.url}/v1/responses`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny', ...body }),
      });
      assert.equal(r.status, 400);
      return ((await r.json()) as { error: { message: string; param: string | null } }).error;
    };
    const empty = await post({ input: [] });
    assert.equal(empty.param, 'input');
    assert.match(empty.message, /'input'/);
    assert.equal((await post({ input: 'hi '.repeat(1100), max_output_tokens: 16 })).param, 'max_output_tokens');
    const format = await post({
      input: 'hi',
      text: { format: { type: 'json_schema', name: 'x', schema: { type: 'integer', minimum: 5, maximum: 1 } } },
    });
    assert.equal(format.param, 'text.format');
    assert.equal((await post({ input: 'hi', top_logprobs: 30 })).param, 'top_logprobs');
    assert.equal((await post({ input: 'hi', truncation: 'sideways' })).param, 'truncation');
    // A malformed tool of a served type says what is wrong with it, not that its type is unsupported.
    assert.equal((await post({ input: 'hi', tools: [{ type: 'function' }] })).param, 'tools[0].name');
    assert.match((await post({ input: 'hi', tools: [{ type: 'bogus' }] })).message, /not supported/);
    for (const type of ['__proto__', 'constructor', 'toString'])
      assert.match((await post({ input: 'hi', tools: [{ type }] })).message, /not supported/);
    assert.match(format.message, /^text\.format /);
  });

  test('previous_response_id chains the conversation; retrieve and delete; the store keeps the newest N', async () => {
    const a = await tiny.client.responses.create({ model: 'tiny', input: 'Hello', max_output_tokens: 4, reasoning: { effort: 'none' } });
    const b = await tiny.client.responses.create({
      model: 'tiny',
      input: 'And then?',
      max_output_tokens: 4,
      reasoning: { effort: 'none' },
      previous_response_id: a.id,
    });
    const alone = await tiny.client.responses.create({
      model: 'tiny',
      input: 'And then?',
      max_output_tokens: 4,
      reasoning: { effort: 'none' },
      store: false,
    });
    assert.ok(b.usage!.input_tokens > alone.usage!.input_tokens + 4, 'the earlier turn is in the prompt');
    assert.equal(b.previous_response_id, a.id);
    assert.equal((await tiny.client.responses.retrieve(a.id)).id, a.id);
    await assert.rejects(tiny.client.responses.retrieve(alone.id), (err: unknown) => err instanceof OpenAI.NotFoundError);
    const deleted = (await tiny.client.responses.delete(b.id)) as unknown as { deleted: boolean };
    assert.equal(deleted.deleted, true);
    await assert.rejects(tiny.client.responses.retrieve(b.id), (err: unknown) => err instanceof OpenAI.NotFoundError);
    await assert.rejects(
      tiny.client.responses.create({ model: 'tiny', input: 'x', previous_response_id: b.id }),
      (err: unknown) => err instanceof OpenAI.NotFoundError && /previous_response_id|not found/.test(err.message),
    );
    // --responses-store 3: older ones are evicted.
    for (let i = 0; i < 3; i++)
      await tiny.client.responses.create({ model: 'tiny', input: `n${i}`, max_output_tokens: 2, reasoning: { effort: 'none' } });
    await assert.rejects(tiny.client.responses.retrieve(a.id), (err: unknown) => err instanceof OpenAI.NotFoundError);
  });

  // The provider sends reasoning options only for models it knows reason, unless told (forceReasoning).
  test("the Vercel AI SDK's default openai(model) provider: generateText, streamText and tools", async () => {
    const provider = createOpenAI({ baseURL: `${scripted.url}/v1`, apiKey: 'unused' });
    const tools = { get_weather: tool({ description: 'Weather forecast', inputSchema: z.object({ days: z.number() }) }) };
    const called = await generateText({
      model: provider('scripted'),
      prompt: 'Weather?',
      tools,
      temperature: 0,
      providerOptions: { openai: { forceReasoning: true, reasoningSummary: 'auto' } },
    });
    assert.equal(called.toolCalls.length, 1);
    assert.equal(called.toolCalls[0].toolName, 'get_weather');
    assert.deepEqual(called.toolCalls[0].input, { days: 3 });
    assert.equal(called.reasoningText, 'Plan it.');
    const plain = createOpenAI({ baseURL: `${tiny.url}/v1`, apiKey: 'unused' });
    const text = await generateText({
      model: plain('tiny'),
      prompt: 'Hello',
      maxOutputTokens: 5,
      providerOptions: { openai: { forceReasoning: true, reasoningEffort: 'none' } },
    });
    assert.ok(text.text.length > 0);
    assert.equal(text.usage.outputTokens, 5);
    const streamed = streamText({
      model: plain('tiny'),
      prompt: 'Hello',
      maxOutputTokens: 5,
      providerOptions: { openai: { forceReasoning: true, reasoningEffort: 'none' } },
    });
    let chunks = '';
    for await (const part of streamed.textStream) chunks += part;
    assert.ok(chunks.length > 0);
    assert.equal((await streamed.usage).outputTokens, 5);
  });
});
