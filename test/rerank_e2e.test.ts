import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { runRetrievalBench } from '../src/bench/retrieval_bench.js';
import { RETRIEVAL_CASES, retrievalCheckpoint } from './support/retrieval_models.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/rerank_e2e.test', () => {
  // /v1/rerank on a real server with a random Qwen3-Reranker-shaped checkpoint (a causal LM
  // whose model card says text-ranking), in the shape Jina / Cohere clients and llama.cpp send.

  let server: TestServer;
  const MODEL = 'qwen3-rerank-tiny';

  before(async () => {
    server = await startTestServer(retrievalCheckpoint('reranker'), ['--served-model-name', MODEL]);
  });

  after(async () => {
    await server?.close();
  });

  interface RerankBody {
    id: string;
    model: string;
    results: Array<{ index: number; relevance_score: number; document?: { text: string } }>;
    usage: { prompt_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    error?: { code: string; param: string | null; message: string; type: string };
  }

  async function post(path: string, body: unknown): Promise<{ status: number; body: RerankBody }> {
    const res = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as RerankBody };
  }

  const { query, documents } = RETRIEVAL_CASES.rerank;

  test('results are every document, sorted by relevance_score, with index and text; the same on /rerank and /v2/rerank', async () => {
    const r = await post('/v1/rerank', { model: MODEL, query, documents });
    assert.equal(r.status, 200);
    assert.equal(r.body.model, MODEL);
    assert.deepEqual(r.body.results.map((x) => x.index).sort(), [0, 1, 2, 3]);
    for (let i = 1; i < r.body.results.length; i++) assert.ok(r.body.results[i - 1].relevance_score >= r.body.results[i].relevance_score);
    for (const x of r.body.results) {
      assert.ok(x.relevance_score > 0 && x.relevance_score < 1);
      assert.equal(x.document?.text, documents[x.index]);
    }
    assert.deepEqual((await post('/rerank', { model: MODEL, query, documents })).body.results, r.body.results);
    assert.deepEqual((await post('/v2/rerank', { query, documents })).body.results, r.body.results);
  });

  test('top_n, return_documents false, {text} documents; scores do not depend on the other documents', async () => {
    const all = await post('/v1/rerank', { query, documents });
    const top = await post('/v1/rerank', { query, documents: documents.map((text) => ({ text })), top_n: 2, return_documents: false });
    assert.deepEqual(
      top.body.results,
      all.body.results.slice(0, 2).map(({ index, relevance_score }) => ({ index, relevance_score })),
    );
    // top_n 0 is every document, as vLLM has it.
    assert.deepEqual((await post('/v1/rerank', { query, documents, top_n: 0 })).body.results, all.body.results);
    const alone = await post('/v1/rerank', { query, documents: [documents[2]] });
    assert.equal(alone.body.results[0].relevance_score, all.body.results.find((x) => x.index === 2)!.relevance_score);
    // An instruction changes the prompt, so the scores.
    const instructed = await post('/v1/rerank', { query, documents: [documents[2]], instruction: 'Judge whether the document names a city' });
    assert.notEqual(instructed.body.results[0].relevance_score, alone.body.results[0].relevance_score);
  });

  test("documents share the template's system turn through the prefix cache", async () => {
    const r = await post('/v1/rerank', { query: 'a query asked once', documents: ['one', 'two', 'three'] });
    assert.ok(r.body.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(r.body.usage));
    assert.ok(r.body.usage.prompt_tokens > r.body.usage.prompt_tokens_details.cached_tokens);
  });

  test('bad bodies are 400s; an unknown model is a 404; the reranker refuses embeddings', async () => {
    for (const body of [
      {},
      { query: 'q' },
      { query: 'q', documents: [] },
      { query: 'q', documents: [1] },
      { query: 'q', documents: ['a'], top_n: -1 },
    ]) {
      const r = await post('/v1/rerank', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.body.error?.type, 'invalid_request_error');
    }
    const unknown = await post('/v1/rerank', { model: 'nope', query, documents });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error?.code, 'model_not_found');
    const embed = await post('/v1/embeddings', { input: 'x' });
    assert.equal(embed.status, 400);
    assert.equal(embed.body.error?.code, 'model_task_mismatch');
  });

  test('bench --endpoint rerank: documents per query at each batch size', async () => {
    const { levels } = await runRetrievalBench({
      baseUrl: `${server.url}/v1`,
      model: MODEL,
      apiKey: null,
      endpoint: 'rerank',
      inputLen: 8,
      batchSizes: [2],
      numInputs: 6,
      seed: 1,
      timeout: 60,
    });
    assert.deepEqual(
      levels.map((l) => [l.batch, l.requests, l.inputs]),
      [[2, 3, 6]],
    );
  });
});
