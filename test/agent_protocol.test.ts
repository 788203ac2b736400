import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { IGNORED_TOOLS_HEADER } from '../src/http/sse.js';
import { TOKENIZER_ASSETS } from '../src/model/random_checkpoint.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { assertOpenAI } from './support/openapi.js';
import { startScriptedServer } from './support/scripted_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/agent_protocol.test', () => {
  // What coding agents send beyond plain function calling, through the real openai and
  // @anthropic-ai/sdk clients: namespace and custom tools, hosted tools left out, sealed
  // reasoning sent back, Anthropic's system turns, adaptive thinking and omitted display.
  const tokenizer = QwenTokenizer.fromDir(TOKENIZER_ASSETS);
  const SCRIPT = '<think>Plan it.</think>\n\n<tool_call>{"name":"crm.lookup","arguments":{"input": "Begin"}}</tool_call><|im_end|>';
  let s: TestServer;
  let claude: Anthropic;

  before(async () => {
    s = await startScriptedServer(SCRIPT);
    claude = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
  });
  after(async () => {
    await s.close();
  });

  const lookup = {
    type: 'function',
    name: 'lookup',
    description: 'Look a customer up',
    parameters: { type: 'object', properties: { input: { type: 'string' } } },
    strict: false,
  } as const;
  const namespaced = { type: 'namespace', name: 'crm', description: 'The CRM', tools: [lookup] } as unknown as OpenAI.Responses.Tool;
  const hosted = [
    { type: 'web_search', external_web_access: false },
    { type: 'file_search', vector_store_ids: ['vs_1'] },
  ] as unknown as OpenAI.Responses.Tool[];

  test('Responses: a namespace function is called as namespace.name and comes back with its namespace; hosted tools are left out and named', async () => {
    const { data: r, response } = await s.client.responses
      .create({ model: 'scripted', input: 'Look up Ann', tools: [namespaced, ...hosted], temperature: 0 })
      .withResponse();
    assert.equal(response.headers.get(IGNORED_TOOLS_HEADER), 'web_search, file_search');
    assertOpenAI('Response', r);
    const call = r.output.find((o) => o.type === 'function_call') as OpenAI.Responses.ResponseFunctionToolCall & { namespace?: string };
    assert.equal(call.name, 'lookup');
    assert.equal(call.namespace, 'crm');
    assert.deepEqual(JSON.parse(call.arguments), { input: 'Begin' });
    // The hosted tools cost no prompt: the same request without them has as many input tokens.
    const bare = await s.client.responses.create({ model: 'scripted', input: 'Look up Ann', tools: [namespaced], temperature: 0 });
    assert.equal(bare.usage?.input_tokens, r.usage?.input_tokens);
    // Streamed, the call item carries its namespace too.
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const e of await s.client.responses.create({
      model: 'scripted',
      input: 'Look up Ann',
      tools: [namespaced, ...hosted],
      temperature: 0,
      stream: true,
    }))
      events.push(e);
    for (const e of events) assertOpenAI('ResponseStreamEvent', e);
    const done = events.find(
      (e) => e.type === 'response.output_item.done' && e.item.type === 'function_call',
    ) as OpenAI.Responses.ResponseOutputItemDoneEvent;
    assert.equal((done.item as { namespace?: string }).namespace, 'crm');
  });

  test('Responses: a custom tool is called with its free text and comes back as custom_tool_call', async () => {
    const custom = {
      type: 'namespace',
      name: 'crm',
      description: 'The CRM',
      tools: [{ type: 'custom', name: 'lookup', description: 'Free text' }],
    } as unknown as OpenAI.Responses.Tool;
    const r = await s.client.responses.create({ model: 'scripted', input: 'Look up Ann', tools: [custom], temperature: 0 });
    assertOpenAI('Response', r);
    const call = r.output.find((o) => o.type === 'custom_tool_call') as OpenAI.Responses.ResponseCustomToolCall & { namespace?: string };
    assert.equal(call.name, 'lookup');
    assert.equal(call.namespace, 'crm');
    assert.equal(call.input, 'Begin');
  });

  test('Responses: tool_choice naming a hosted tool, or an unknown tool type, is a 400 naming the parameter', async () => {
    await assert.rejects(
      s.client.responses.create({
        model: 'scripted',
        input: 'x',
        tools: hosted,
        tool_choice: { type: 'web_search_preview' } as OpenAI.Responses.ToolChoiceTypes,
      }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) =>
        err instanceof OpenAI.BadRequestError && err.param === 'tool_choice' && /cannot run/.test(err.message),
    );
    await assert.rejects(
      s.client.responses.create({ model: 'scripted', input: 'x', tools: [{ type: 'teleport' } as unknown as OpenAI.Responses.Tool] }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && /tools\[0\]/.test(String(err.param)),
    );
  });

  test('Responses, stateless: sealed reasoning comes back into the prompt; a tampered or foreign blob is ignored', async () => {
    const first = await s.client.responses.create({
      model: 'scripted',
      input: [{ role: 'user', content: 'Look up Ann' }],
      tools: [namespaced],
      store: false,
      include: ['reasoning.encrypted_content'],
      temperature: 0,
    });
    const reasoning = first.output.find((o) => o.type === 'reasoning') as OpenAI.Responses.ResponseReasoningItem;
    assert.ok(reasoning.encrypted_content && reasoning.encrypted_content.length > 20);
    assert.ok(!reasoning.encrypted_content.includes('Plan'), 'the blob does not show the text');
    const call = first.output.find((o) => o.type === 'function_call') as OpenAI.Responses.ResponseFunctionToolCall;
    const next = (item: OpenAI.Responses.ResponseInputItem | null) =>
      s.client.responses.create({
        model: 'scripted',
        input: [
          { role: 'user', content: 'Look up Ann' },
          ...(item ? [item] : []),
          {
            type: 'function_call',
            call_id: call.call_id,
            name: call.name,
            namespace: 'crm',
            arguments: call.arguments,
          } as OpenAI.Responses.ResponseInputItem,
          { type: 'function_call_output', call_id: call.call_id, output: 'Ann is a customer.' },
        ],
        tools: [namespaced],
        store: false,
        max_output_tokens: 1,
        temperature: 0,
      });
    const without = (await next(null)).usage!.input_tokens;
    const sealed = {
      type: 'reasoning',
      id: reasoning.id,
      summary: [],
      encrypted_content: reasoning.encrypted_content,
    } as OpenAI.Responses.ResponseInputItem;
    // Qwen3's template shows the reasoning within a tool loop: "<think>\nPlan it.\n</think>\n\n" more.
    const withReasoning = (await next(sealed)).usage!.input_tokens;
    assert.equal(withReasoning - without, tokenizer.encode('<think>\nPlan it.\n</think>\n\n').length);
    const blob = Buffer.from(reasoning.encrypted_content, 'base64');
    blob[blob.length - 1] ^= 1;
    assert.equal(
      (await next({ ...sealed, encrypted_content: blob.toString('base64') } as OpenAI.Responses.ResponseInputItem)).usage!.input_tokens,
      without,
    );
    assert.equal(
      (await next({ ...sealed, encrypted_content: 'gAAAAABforeign-blob==' } as OpenAI.Responses.ResponseInputItem)).usage!.input_tokens,
      without,
    );
  });

  const customTool: Anthropic.Tool = {
    name: 'crm.lookup',
    description: 'Look a customer up',
    input_schema: { type: 'object', properties: { input: { type: 'string' } } },
  };
  const serverTools = [
    { type: 'web_search_20250305', name: 'web_search', max_uses: 3 },
    { type: 'bash_20250124', name: 'bash' },
  ] as unknown as Anthropic.Tool[];

  test('Messages: system turns inside messages render where they stand; server tools are left out and named', async () => {
    const base = { model: 'claude-any', messages: [{ role: 'user' as const, content: 'Hi' }] };
    const plain = await claude.messages.countTokens(base);
    const withSystem = await claude.messages.countTokens({
      ...base,
      messages: [{ role: 'user', content: 'Hi' }, { role: 'system', content: 'Be brief.' } as unknown as Anthropic.MessageParam],
    });
    assert.equal(withSystem.input_tokens - plain.input_tokens, tokenizer.encode('<|im_start|>system\nBe brief.<|im_end|>\n').length);
    const { data: r, response } = await claude.messages
      .create({
        ...base,
        max_tokens: 64,
        tools: [customTool, ...serverTools],
        temperature: 0,
        cache_control: { type: 'ephemeral' },
        context_management: { edits: [] },
      } as Anthropic.MessageCreateParamsNonStreaming)
      .withResponse();
    assert.equal(response.headers.get(IGNORED_TOOLS_HEADER), 'web_search_20250305, bash_20250124');
    assert.equal(r.stop_reason, 'tool_use');
    await assert.rejects(
      claude.messages.create({ ...base, max_tokens: 8, tools: [customTool, ...serverTools], tool_choice: { type: 'tool', name: 'web_search' } }),
      (err: InstanceType<typeof Anthropic.BadRequestError>) => err instanceof Anthropic.BadRequestError && /server tool/.test(err.message),
    );
  });

  test('Messages: adaptive thinking with effort thinks; display omitted returns signed empty blocks whose signature restores the text', async () => {
    const ask = {
      model: 'claude-any',
      max_tokens: 64,
      messages: [{ role: 'user' as const, content: 'Look up Ann' }],
      tools: [customTool],
      temperature: 0,
      thinking: { type: 'adaptive', display: 'omitted' },
      output_config: { effort: 'low' },
    } as unknown as Anthropic.MessageCreateParamsNonStreaming;
    const r = await claude.messages.create(ask);
    const thinking = r.content.find((b): b is Anthropic.ThinkingBlock => b.type === 'thinking')!;
    assert.equal(thinking.thinking, '');
    assert.ok(thinking.signature.length > 20);
    const use = r.content.find((b): b is Anthropic.ToolUseBlock => b.type === 'tool_use')!;
    assert.deepEqual(use.input, { input: 'Begin' });
    // Streamed: no thinking_delta, a signature_delta, and message_start already counts the cached prompt.
    const events: Anthropic.RawMessageStreamEvent[] = [];
    for await (const e of claude.messages.stream(ask)) events.push(e as Anthropic.RawMessageStreamEvent);
    assert.ok(!events.some((e) => e.type === 'content_block_delta' && e.delta.type === 'thinking_delta'));
    assert.ok(events.some((e) => e.type === 'content_block_delta' && e.delta.type === 'signature_delta' && e.delta.signature.length > 20));
    const startEvent = events[0] as Anthropic.RawMessageStartEvent;
    assert.ok((startEvent.message.usage.cache_read_input_tokens ?? 0) > 0, 'the repeated prompt came from the cache, and message_start says so');
    // The next turn of the tool loop: the signed block brings "Plan it." back into the prompt.
    const turn = (block: Anthropic.ContentBlockParam | null) =>
      claude.messages.countTokens({
        model: 'claude-any',
        tools: [customTool],
        messages: [
          { role: 'user', content: 'Look up Ann' },
          { role: 'assistant', content: [...(block ? [block] : []), { type: 'tool_use', id: use.id, name: use.name, input: use.input }] },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'Ann is a customer.' }] },
        ],
      });
    const without = (await turn(null)).input_tokens;
    const signed = (await turn({ type: 'thinking', thinking: '', signature: thinking.signature })).input_tokens;
    assert.equal(signed - without, tokenizer.encode('<think>\nPlan it.\n</think>\n\n').length);
    assert.equal((await turn({ type: 'thinking', thinking: '', signature: 'forged' })).input_tokens, without);
  });

  test('max_tokens beyond the context is capped on all three APIs, and refused with --strict-max-tokens; a prompt alone over the context is a 400', async () => {
    const limit = s.engine.info!.limits.maxModelLen;
    const chat = await s.client.chat.completions.create({
      model: 'scripted',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: limit * 2,
      temperature: 0,
    });
    assert.equal(chat.choices[0].finish_reason, 'stop');
    const responses = await s.client.responses.create({ model: 'scripted', input: 'Hi', max_output_tokens: limit * 2, temperature: 0 });
    assert.equal(responses.status, 'completed');
    // Streamed: the SDK itself refuses a large max_tokens without streaming.
    const messages = await claude.messages
      .stream({ model: 'claude-any', max_tokens: limit * 2, messages: [{ role: 'user', content: 'Hi' }], temperature: 0 })
      .finalMessage();
    assert.equal(messages.stop_reason, 'end_turn');
    const long = 'word '.repeat(limit + 10);
    await assert.rejects(
      s.client.chat.completions.create({ model: 'scripted', messages: [{ role: 'user', content: long }], max_tokens: 10 }),
      (err: InstanceType<typeof OpenAI.BadRequestError>) => err instanceof OpenAI.BadRequestError && err.code === 'context_length_exceeded',
    );
    await assert.rejects(
      claude.messages.create({ model: 'claude-any', max_tokens: 10, messages: [{ role: 'user', content: long }] }),
      (err: InstanceType<typeof Anthropic.BadRequestError>) => err instanceof Anthropic.BadRequestError && /maximum context length/.test(err.message),
    );
    const strict = await startTestServer(s.engine.info!.modelDir, ['--served-model-name', 'strict', '--strict-max-tokens', '--max-model-len', '512']);
    try {
      await assert.rejects(
        strict.client.chat.completions.create({ model: 'strict', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 600 }),
        (err: InstanceType<typeof OpenAI.BadRequestError>) =>
          err instanceof OpenAI.BadRequestError && err.code === 'context_length_exceeded' && /maximum context length is 512 tokens/.test(err.message),
      );
    } finally {
      await strict.close();
    }
  });
});
