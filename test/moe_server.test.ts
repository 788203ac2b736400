import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { moeCheckpoint } from './support/moe_checkpoint.js';
import { startTestServer, type TestServer } from './support/server.js';

// A Qwen3-MoE checkpoint served as a user would: its Hugging Face directory as --model
// (exported into the cache at start), through the openai and @anthropic-ai/sdk clients.
let s: TestServer;
let claude: Anthropic;

before(async () => {
  s = await startTestServer(moeCheckpoint('renorm-dense-middle'), ['--served-model-name', 'moe', '--default-thinking', 'off']);
  claude = new Anthropic({ baseURL: s.url, apiKey: 'unused', maxRetries: 0 });
});
after(async () => {
  await s.close();
});

const user = [{ role: 'user' as const, content: 'Name three colours.' }];

test('chat completions: greedy answers with log-probabilities, streamed and not, agree', async () => {
  const r = await s.client.chat.completions.create({ model: 'moe', messages: user, max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 2 });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage?.completion_tokens, 12);
  assert.equal(r.choices[0].logprobs?.content?.length, 12);
  let streamed = '';
  for await (const chunk of await s.client.chat.completions.create({ model: 'moe', messages: user, max_tokens: 12, temperature: 0, stream: true })) {
    streamed += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(streamed, r.choices[0].message.content);
});

test('structured outputs hold on a MoE model: the answer follows the schema', async () => {
  const schema = {
    type: 'object',
    properties: { colour: { enum: ['red', 'green', 'blue'] }, bright: { type: 'boolean' } },
    required: ['colour', 'bright'],
    additionalProperties: false,
  };
  const r = await s.client.chat.completions.create({
    model: 'moe',
    messages: user,
    max_tokens: 60,
    temperature: 1,
    seed: 3,
    response_format: { type: 'json_schema', json_schema: { name: 'c', schema, strict: true } },
  });
  const v = JSON.parse(r.choices[0].message.content ?? '') as { colour: string; bright: unknown };
  assert.ok(['red', 'green', 'blue'].includes(v.colour));
  assert.equal(typeof v.bright, 'boolean');
});

test("Anthropic's Messages API answers, streamed and not", async () => {
  const m = await claude.messages.create({ model: 'moe', max_tokens: 12, messages: user });
  assert.equal(m.stop_reason, 'max_tokens');
  assert.equal(m.usage.output_tokens, 12);
  assert.ok(m.content[0].type === 'text' && m.content[0].text.length > 0);
  const final = await claude.messages.stream({ model: 'moe', max_tokens: 12, messages: user }).finalMessage();
  assert.equal(final.usage.output_tokens, 12);
});
