#!/usr/bin/env node
/**
 * Computes test/fixtures/qwen3-retrieval.reference.json once: writes the tiny random
 * embedding and reranker checkpoints (test/support/retrieval_models.ts), tokenizes the
 * cases, and has the independent PyTorch Qwen3 (test/fixtures/retrieval_reference.py)
 * compute the vectors and scores. Needs python3 with torch and numpy:
 *   node dist/scripts/make_retrieval_reference.js [python]
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RERANK_DEFAULT_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX, rerankBody } from '../src/openai/serving_rerank.js';
import { QwenTokenizer } from '../src/text/tokenizer.js';
import { RETRIEVAL_CASES, retrievalCheckpoint } from '../test/support/retrieval_models.js';
import { tempDir } from '../test/support/runner.js';

const root = new URL('../../', import.meta.url).pathname;
const python = process.argv[2] ?? 'python3';
const sha256 = (dir: string) =>
  createHash('sha256')
    .update(readFileSync(join(dir, 'model.safetensors')))
    .digest('hex');

const embedding = retrievalCheckpoint('embedding');
const reranker = retrievalCheckpoint('reranker');
const tok = QwenTokenizer.fromDir(reranker);
const { query, documents } = RETRIEVAL_CASES.rerank;
const cases = {
  embedding: {
    dir: embedding,
    sha256: sha256(embedding),
    end_of_text: tok.tokenId('<|endoftext|>'),
    inputs: RETRIEVAL_CASES.embeddings.map((text) => ({ text, ids: tok.encode(text) })),
  },
  reranker: {
    dir: reranker,
    sha256: sha256(reranker),
    query,
    instruction: RERANK_DEFAULT_INSTRUCTION,
    yes_id: tok.tokenId('yes'),
    no_id: tok.tokenId('no'),
    prefix_ids: tok.encode(RERANK_PREFIX),
    suffix_ids: tok.encode(RERANK_SUFFIX),
    documents: documents.map((text) => ({ text, ids: tok.encode(rerankBody(RERANK_DEFAULT_INSTRUCTION, query, text)) })),
  },
};
const work = tempDir('qwen3-retrieval-reference-');
writeFileSync(join(work, 'cases.json'), JSON.stringify(cases));
const out = join(root, 'test/fixtures/qwen3-retrieval.reference.json');
execFileSync(python, [join(root, 'test/fixtures/retrieval_reference.py'), join(work, 'cases.json'), out], { stdio: 'inherit' });
process.stderr.write(`wrote ${out}\n`);
