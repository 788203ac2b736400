import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { retrievalCheckpoint } from './support/retrieval_models.js';
import { startTestServer, type TestServer } from './support/server.js';

describe('test/retrieval_reference.test', () => {
  // Embeddings and rerank scores of the fp32 exports against an independent float32 PyTorch
  // Qwen3 with the model cards' pooling and scoring (test/fixtures/retrieval_reference.py;
  // the reference file is made by scripts/make_retrieval_reference.ts).

  interface Reference {
    embedding: { sha256: string; cases: Array<{ text: string; ids: number[]; embedding: number[] }> };
    reranker: { sha256: string; query: string; cases: Array<{ document: string; prompt_ids: number[]; score: number }> };
  }

  const reference = JSON.parse(readFileSync(new URL('../../test/fixtures/qwen3-retrieval.reference.json', import.meta.url), 'utf8')) as Reference;
  const TOLERANCE = 1e-3;
  const sha256 = (dir: string) =>
    createHash('sha256')
      .update(readFileSync(join(dir, 'model.safetensors')))
      .digest('hex');

  let embed: TestServer;
  let rerank: TestServer;

  before(async () => {
    const [e, r] = [retrievalCheckpoint('embedding'), retrievalCheckpoint('reranker')];
    // The checkpoints are written at test time: they must be the ones the reference read.
    assert.equal(sha256(e), reference.embedding.sha256, 'the embedding checkpoint differs from the reference one');
    assert.equal(sha256(r), reference.reranker.sha256, 'the reranker checkpoint differs from the reference one');
    [embed, rerank] = await Promise.all([startTestServer(e), startTestServer(r)]);
  });

  after(async () => {
    await Promise.all([embed?.close(), rerank?.close()]);
  });

  test('every embedding value is within 1e-3 of the PyTorch reference, and the texts tokenize alike', async () => {
    const res = await embed.client.embeddings.create({
      model: embed.model,
      input: reference.embedding.cases.map((c) => c.text),
      encoding_format: 'float',
    });
    assert.equal(
      res.usage.prompt_tokens,
      reference.embedding.cases.reduce((n, c) => n + c.ids.length, 0),
    );
    res.data.forEach((d, i) => {
      const want = reference.embedding.cases[i].embedding;
      assert.equal(d.embedding.length, want.length);
      const worst = Math.max(...d.embedding.map((x, j) => Math.abs(x - want[j])));
      assert.ok(worst < TOLERANCE, `input ${i}: largest difference ${worst}`);
    });
  });

  test('every rerank score is within 1e-3 of the PyTorch reference', async () => {
    const res = await fetch(`${rerank.url}/v1/rerank`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: reference.reranker.query, documents: reference.reranker.cases.map((c) => c.document) }),
    });
    const body = (await res.json()) as { results: Array<{ index: number; relevance_score: number }>; usage: { prompt_tokens: number } };
    assert.equal(
      body.usage.prompt_tokens,
      reference.reranker.cases.reduce((n, c) => n + c.prompt_ids.length, 0),
    );
    for (const r of body.results) {
      const want = reference.reranker.cases[r.index].score;
      assert.ok(Math.abs(r.relevance_score - want) < TOLERANCE, `document ${r.index}: ${r.relevance_score} vs ${want}`);
    }
  });
});
