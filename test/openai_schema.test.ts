import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { fixtureExport } from './support/engine.js';
import { assertOpenAI } from './support/openapi.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/openai_schema.test', () => {
  // Every chat completion and stream chunk validates against OpenAI's published schema.
  let s: TestServer;
  before(async () => {
    s = await startTestServer(await fixtureExport('fast'), ['--served-model-name', 'tiny', '--max-model-len', '512']);
  });
  after(async () => {
    await s.close();
  });

  const post = async (path: string, body: unknown) =>
    fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const messages = [{ role: 'user', content: 'Hello' }];
  const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'integer' } } } } }];

  async function chunksOf(path: string, body: unknown): Promise<unknown[]> {
    const text = await (await post(path, { ...(body as object), stream: true })).text();
    return text
      .split('\n\n')
      .filter((e) => e.startsWith('data: ') && e !== 'data: [DONE]')
      .map((e) => JSON.parse(e.slice(6)));
  }

  test('chat completions, plain and streamed, with logprobs, n, tools and thinking, match CreateChatCompletion(Stream)Response', async () => {
    const variants = [
      { messages, max_tokens: 6 },
      { messages, max_tokens: 6, n: 2, logprobs: true, top_logprobs: 3, seed: 1 },
      { messages, max_tokens: 6, tools, chat_template_kwargs: { enable_thinking: false } },
      { messages, max_tokens: 6, response_format: { type: 'json_object' }, chat_template_kwargs: { enable_thinking: false } },
    ];
    for (const v of variants) {
      const r = await post('/v1/chat/completions', v);
      assert.equal(r.status, 200);
      const body = (await r.json()) as { choices: Array<{ message: { refusal: unknown }; logprobs: { refusal?: unknown } | null }> };
      assertOpenAI('CreateChatCompletionResponse', body);
      assert.equal(body.choices[0].message.refusal, null);
      if (body.choices[0].logprobs) assert.equal(body.choices[0].logprobs.refusal, null);
      const chunks = await chunksOf('/v1/chat/completions', { ...v, stream_options: { include_usage: true } });
      assert.ok(chunks.length > 2);
      for (const c of chunks) assertOpenAI('CreateChatCompletionStreamResponse', c);
    }
  });

  test('completions, models and errors match their schemas', async () => {
    // (With echo the first prompt token's logprob is null, as in OpenAI's own legacy API, which its schema does not allow.)
    const r = await post('/v1/completions', { prompt: 'Hello', max_tokens: 4, logprobs: 2 });
    assertOpenAI('CreateCompletionResponse', await r.json());
    assertOpenAI('ListModelsResponse', await (await fetch(`${s.url}/v1/models`)).json());
    assertOpenAI('Model', await (await fetch(`${s.url}/v1/models/tiny`)).json());
    const bad = await post('/v1/chat/completions', { messages: 'x' });
    assert.equal(bad.status, 400);
    assertOpenAI('ErrorResponse', await bad.json());
  });
});
