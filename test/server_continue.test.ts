import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { fixtureExport } from './support/engine.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/server_continue.test', () => {
  // An answer that goes on from a message the client began: vLLM's continue_final_message
  // and add_generation_prompt, and Anthropic's prefilled final assistant turn.
  let s: TestServer;
  let claude: Anthropic;
  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny']);
    claude = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
  });
  after(async () => {
    await s.close();
  });

  const prefill = 'Sure: {"answer": ';
  // Greedy, so each answer is a function of its prompt (the SDK's types no longer list temperature).
  const greedy: object = { temperature: 0 };
  const conversation = [
    { role: 'user', content: 'Answer in JSON.' },
    { role: 'assistant', content: prefill },
  ];

  async function post(path: string, body: Record<string, unknown>): Promise<{ status: number; json: Record<string, unknown> }> {
    const r = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, json: (await r.json()) as Record<string, unknown> };
  }
  const promptText = async (body: Record<string, unknown>) => {
    const { json } = await post('/tokenize', { model: 'tiny', ...body });
    return (await post('/detokenize', { model: 'tiny', tokens: json.tokens })).json.prompt as string;
  };

  test('the prompt ends inside the continued message, or after the last message without a generation prompt', async () => {
    const continued = await promptText({ messages: conversation, continue_final_message: true, add_generation_prompt: false });
    assert.ok(continued.endsWith(prefill), JSON.stringify(continued.slice(-60)));
    assert.equal(continued.split('<|im_start|>assistant').length, 2, 'one assistant turn, the continued one');
    // Texts that also occur in the template's own markup or in an earlier turn are cut in the right place.
    for (const text of ['>', 'e', '|>', '\n\n\nAnswer', 'Answer in JSON.']) {
      const prompt = await promptText({ messages: [conversation[0], { role: 'assistant', content: text }], continue_final_message: true });
      assert.ok(prompt.endsWith(text), JSON.stringify([text, prompt.slice(-40)]));
      const turn = prompt.slice(prompt.lastIndexOf('<|im_start|>assistant'));
      assert.ok(!turn.includes('<|im_end|>'), JSON.stringify([text, turn]));
      assert.equal(prompt.split('<|im_start|>assistant').length, 2);
    }
    const closed = await promptText({ messages: conversation.slice(0, 1), add_generation_prompt: false });
    assert.ok(closed.endsWith('Answer in JSON.<|im_end|>\n'), JSON.stringify(closed.slice(-60)));
    const opened = await promptText({ messages: conversation.slice(0, 1) });
    assert.ok(opened.startsWith(closed) && opened.slice(closed.length).startsWith('<|im_start|>assistant\n'));
  });

  test('the continuation is what a completion of that prompt gives, through chat completions and Anthropic messages alike', async () => {
    const tokens = (await post('/tokenize', { model: 'tiny', messages: conversation, continue_final_message: true, add_generation_prompt: false }))
      .json.tokens as number[];
    const raw = await s.client.completions.create({ model: 'tiny', prompt: tokens, max_tokens: 8, temperature: 0 });
    const expected = raw.choices[0].text;
    assert.ok(expected.length > 0);
    const chat = await post('/v1/chat/completions', {
      model: 'tiny',
      messages: conversation,
      continue_final_message: true,
      add_generation_prompt: false,
      max_tokens: 8,
      temperature: 0,
    });
    assert.equal(chat.status, 200);
    const choice = (chat.json.choices as Array<{ message: { content: string; reasoning_content?: string } }>)[0];
    assert.equal(choice.message.content, expected);
    assert.equal((chat.json.usage as { prompt_tokens: number }).prompt_tokens, tokens.length);
    const message = await claude.messages.create({
      model: 'tiny',
      max_tokens: 8,
      ...greedy,
      messages: conversation as Anthropic.MessageParam[],
    });
    assert.deepEqual(
      message.content.map((b) => (b.type === 'text' ? b.text : b.type)),
      [expected],
    );
    // An empty final assistant turn is no prefill: the answer is a new turn, as without it.
    const fresh = await claude.messages.create({
      model: 'tiny',
      max_tokens: 8,
      ...greedy,
      messages: conversation.slice(0, 1) as Anthropic.MessageParam[],
    });
    const empty = await claude.messages.create({
      model: 'tiny',
      max_tokens: 8,
      ...greedy,
      messages: [...conversation.slice(0, 1), { role: 'assistant', content: '' }] as Anthropic.MessageParam[],
    });
    assert.deepEqual(empty.content, fresh.content);
    assert.equal(empty.usage.input_tokens, fresh.usage.input_tokens);
  });

  test('what cannot continue a message is a 400 naming the field', async () => {
    const base = { model: 'tiny', max_tokens: 2, messages: conversation, continue_final_message: true };
    for (const [body, param] of [
      [{ ...base, messages: conversation.slice(0, 1) }, 'continue_final_message'],
      [{ ...base, add_generation_prompt: true }, 'continue_final_message'],
      [{ ...base, response_format: { type: 'json_object' } }, 'response_format'],
      [
        {
          ...base,
          tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
          tool_choice: 'required',
        },
        'tool_choice',
      ],
    ] as const) {
      const r = await post('/v1/chat/completions', body);
      assert.equal(r.status, 400, JSON.stringify(r.json));
      assert.equal((r.json.error as { param: string }).param, param);
    }
  });
});
