import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { OpenAIEmbeddings } from '@langchain/openai';
import { embed, embedMany } from 'ai';
import { runRetrievalBench } from '../src/bench/retrieval_bench.js';
import { RETRIEVAL_CASES, retrievalCheckpoint } from './support/retrieval_models.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/embeddings_e2e.test', () => {
  // /v1/embeddings on a real server with a random Qwen3-Embedding-shaped checkpoint (bare
  // Qwen3Model weights, sentence-transformers files), through the clients people use.

  let server: TestServer;
  const MODEL = 'qwen3-embed-tiny';

  before(async () => {
    server = await startTestServer(retrievalCheckpoint('embedding'), ['--served-model-name', MODEL]);
  });

  after(async () => {
    await server?.close();
  });

  interface EmbeddingsBody {
    object: string;
    data: Array<{ object: string; index: number; embedding: number[] | string }>;
    model: string;
    usage: { prompt_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  }

  async function post(
    path: string,
    body: unknown,
  ): Promise<{ status: number; body: EmbeddingsBody & { error?: { code: string; param: string; message: string } } }> {
    const res = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as never };
  }

  const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

  test('the checkpoint is served as an embedding model: /v1/models lists it, chat is refused with a clear 400', async () => {
    const models = await server.client.models.list();
    assert.equal(models.data[0].id, MODEL);
    const chat = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal(chat.status, 400);
    const err = (await chat.json()) as { error: { code: string; message: string } };
    assert.equal(err.error.code, 'model_task_mismatch');
    assert.match(err.error.message, /embeddings/);
  });

  test('openai SDK: float and base64 give the same unit vectors; the end-of-text token is counted', async () => {
    const text = RETRIEVAL_CASES.embeddings[0];
    const asFloat = await server.client.embeddings.create({ model: MODEL, input: text, encoding_format: 'float' });
    // The SDK asks for base64 when no format is given and decodes it itself.
    const byDefault = await server.client.embeddings.create({ model: MODEL, input: text });
    const v = asFloat.data[0].embedding;
    assert.equal(v.length, 32);
    assert.ok(Math.abs(norm(v) - 1) < 1e-5);
    assert.deepEqual(byDefault.data[0].embedding, v);
    // "hello world" is two tokens; Qwen3-Embedding's tokenizer appends <|endoftext|>.
    assert.equal(asFloat.usage.prompt_tokens, 3);
    assert.equal(asFloat.usage.total_tokens, 3);
    assert.equal(asFloat.model, MODEL);
    assert.equal(asFloat.object, 'list');
  });

  test('input as token ids and arrays of them: the text with its end-of-text token gives the same vector', async () => {
    const tokens = (await (
      await fetch(`${server.url}/tokenize`, {
        method: 'POST',
        body: JSON.stringify({ prompt: 'hello world' }),
        headers: { 'content-type': 'application/json' },
      })
    ).json()) as {
      tokens: number[];
    };
    const ids = [...tokens.tokens, 151643];
    const fromText = await post('/v1/embeddings', { input: 'hello world' });
    const fromIds = await post('/v1/embeddings', { input: ids });
    const fromArrays = await post('/v1/embeddings', { input: [ids, ids.slice(0, 2)] });
    assert.equal(fromIds.status, 200);
    assert.deepEqual(fromIds.body.data[0].embedding, fromText.body.data[0].embedding);
    assert.deepEqual(fromArrays.body.data[0].embedding, fromText.body.data[0].embedding);
    assert.notDeepEqual(fromArrays.body.data[1].embedding, fromText.body.data[0].embedding);
    assert.deepEqual(
      fromArrays.body.data.map((d) => d.index),
      [0, 1],
    );
  });

  test('batch invariance: a text alone, in a batch, and beside chat-sized traffic gives the same vector bit for bit', async () => {
    const texts = RETRIEVAL_CASES.embeddings;
    const alone = await Promise.all(texts.map((t) => post('/v1/embeddings', { input: t, encoding_format: 'base64' })));
    const batched = await post('/v1/embeddings', { input: texts, encoding_format: 'base64' });
    const crowd = await Promise.all([
      post('/v1/embeddings', { input: [...texts].reverse(), encoding_format: 'base64' }),
      post('/v1/embeddings', { input: texts.map((t) => t.repeat(5)), encoding_format: 'base64' }),
      post('/v1/embeddings', { input: texts, encoding_format: 'base64' }),
    ]);
    texts.forEach((_, i) => {
      assert.equal(batched.body.data[i].embedding, alone[i].body.data[0].embedding, `input ${i} in a batch`);
      assert.equal(crowd[0].body.data[texts.length - 1 - i].embedding, alone[i].body.data[0].embedding, `input ${i} reversed`);
      assert.equal(crowd[2].body.data[i].embedding, alone[i].body.data[0].embedding, `input ${i} among other requests`);
    });
  });

  test('the prefix cache serves a repeated long input, and the vector stays the same', async () => {
    const long = `${'Retrieval needs stable vectors for every passage it indexes. '.repeat(20)}The end.`;
    const first = await post('/v1/embeddings', { input: long, encoding_format: 'base64' });
    const again = await post('/v1/embeddings', { input: long, encoding_format: 'base64' });
    assert.ok(first.body.usage.prompt_tokens > 128);
    assert.ok(again.body.usage.prompt_tokens_details.cached_tokens >= 64, JSON.stringify(again.body.usage));
    assert.equal(again.body.data[0].embedding, first.body.data[0].embedding);
  });

  test('dimensions: the first values, normalized again; more than the model has is a 400', async () => {
    const full = (await post('/v1/embeddings', { input: 'hello world' })).body.data[0].embedding as number[];
    const short = (await post('/v1/embeddings', { input: 'hello world', dimensions: 8 })).body.data[0].embedding as number[];
    assert.equal(short.length, 8);
    assert.ok(Math.abs(norm(short) - 1) < 1e-5);
    const head = full.slice(0, 8);
    head.forEach((x, i) => assert.ok(Math.abs(x / norm(head) - short[i]) < 1e-5));
    const tooMany = await post('/v1/embeddings', { input: 'hello world', dimensions: 33 });
    assert.equal(tooMany.status, 400);
    assert.equal(tooMany.body.error?.param, 'dimensions');
  });

  test('an input over the context is a 400 naming it; truncate_prompt_tokens keeps its last tokens instead', async () => {
    const long = 'word '.repeat(600);
    const refused = await post('/v1/embeddings', { input: ['hi', long] });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error?.code, 'context_length_exceeded');
    assert.equal(refused.body.error?.param, 'input[1]');
    assert.match(refused.body.error!.message, /maximum context length is 512 tokens.*truncate_prompt_tokens/);
    const cut = await post('/v1/embeddings', { input: long, truncate_prompt_tokens: 100 });
    assert.equal(cut.status, 200);
    assert.equal(cut.body.usage.prompt_tokens, 100);
    const tokens = (await (
      await fetch(`${server.url}/tokenize`, {
        method: 'POST',
        body: JSON.stringify({ prompt: long }),
        headers: { 'content-type': 'application/json' },
      })
    ).json()) as {
      tokens: number[];
    };
    const lastIds = [...tokens.tokens, 151643].slice(-100);
    assert.deepEqual((await post('/v1/embeddings', { input: lastIds })).body.data[0].embedding, cut.body.data[0].embedding);
    const whole = await post('/v1/embeddings', { input: long, truncate_prompt_tokens: -1 });
    assert.equal(whole.body.usage.prompt_tokens, 512);
  });

  test('bad bodies are 400s in the OpenAI envelope', async () => {
    for (const body of [
      {},
      { input: [] },
      { input: 'x', encoding_format: 'int8' },
      { input: [[]] },
      { input: [1, 'a'] },
      { input: 'x', dimensions: 0 },
      { input: [10 ** 7] },
    ]) {
      const r = await post('/v1/embeddings', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(typeof r.body.error?.message, 'string');
    }
    // More inputs than can be queued at once (the defaults: 16 + 128) is a 400 naming input.
    const many = await post('/v1/embeddings', { input: Array.from({ length: 145 }, (_, i) => `text ${i}`) });
    assert.equal(many.status, 400);
    assert.equal(many.body.error?.param, 'input');
    const wrongModel = await post('/v1/embeddings', { model: 'nope', input: 'x' });
    assert.equal(wrongModel.status, 404);
    assert.equal(wrongModel.body.error?.code, 'model_not_found');
  });

  test("LangChain's OpenAIEmbeddings: embedQuery and embedDocuments match the API's vectors (newlines kept with stripNewLines: false)", async () => {
    const configuration = { baseURL: `${server.url}/v1` };
    const lc = new OpenAIEmbeddings({ model: MODEL, apiKey: 'unused', configuration, maxRetries: 0, stripNewLines: false });
    const query = await lc.embedQuery(RETRIEVAL_CASES.embeddings[1]);
    const docs = await lc.embedDocuments(RETRIEVAL_CASES.embeddings.slice(2));
    const api = (await post('/v1/embeddings', { input: RETRIEVAL_CASES.embeddings })).body.data.map((d) => d.embedding as number[]);
    assert.deepEqual(query, api[1]);
    assert.deepEqual(docs, api.slice(2));
    // By default LangChain turns newlines into spaces, which changes an instructed query's text.
    const stripping = new OpenAIEmbeddings({ model: MODEL, apiKey: 'unused', configuration, maxRetries: 0 });
    const flat = (await post('/v1/embeddings', { input: RETRIEVAL_CASES.embeddings[1].replace(/\n/g, ' ') })).body.data[0].embedding;
    assert.deepEqual(await stripping.embedQuery(RETRIEVAL_CASES.embeddings[1]), flat);
  });

  test("the Vercel AI SDK's embed and embedMany match the API's vectors", async () => {
    const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
    const model = openai.embedding(MODEL);
    const one = await embed({ model, value: RETRIEVAL_CASES.embeddings[0], maxRetries: 0 });
    const many = await embedMany({ model, values: RETRIEVAL_CASES.embeddings, maxRetries: 0 });
    const api = (await post('/v1/embeddings', { input: RETRIEVAL_CASES.embeddings })).body.data.map((d) => d.embedding as number[]);
    assert.deepEqual(one.embedding, api[0]);
    assert.deepEqual(many.embeddings, api);
    assert.equal(one.usage.tokens, 3);
  });

  test('bench --endpoint embeddings: every input sent once per batch size, inputs per second reported', async () => {
    const { model, levels } = await runRetrievalBench({
      baseUrl: `${server.url}/v1`,
      model: null,
      apiKey: null,
      endpoint: 'embeddings',
      inputLen: 16,
      batchSizes: [1, 4],
      numInputs: 8,
      seed: 1,
      timeout: 60,
    });
    assert.equal(model, MODEL);
    assert.deepEqual(
      levels.map((l) => [l.batch, l.requests, l.inputs]),
      [
        [1, 8, 8],
        [4, 2, 8],
      ],
    );
    for (const l of levels) assert.ok(l.inputsPerSecond > 0 && l.inputsPerSecond === l.inputs / l.seconds);
  });
});
