import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { type RandomCheckpointOptions, writeRandomCheckpoint } from '../../src/model/random_checkpoint.js';
import { tempDir } from './runner.js';

/**
 * The tiny random Qwen3-Embedding and Qwen3-Reranker checkpoints of the retrieval tests:
 * the real tokenizer (so text works), fp32 weights (the reference compares fp32), a
 * 32-wide model. They are written at test time, deterministically; the reference file
 * (test/fixtures/qwen3-retrieval.reference.json) records their weights' sha256.
 */
const SHAPE: RandomCheckpointOptions = {
  dtype: 'f32',
  hiddenSize: 32,
  intermediateSize: 64,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  maxPositionEmbeddings: 512,
  // Larger than trained models' 0.02, so the tiny model's outputs vary with the text.
  std: 0.08,
};

export const RETRIEVAL_CHECKPOINTS = {
  embedding: { ...SHAPE, kind: 'embedding', seed: 2901 },
  reranker: { ...SHAPE, kind: 'reranker', seed: 2902 },
} as const satisfies Record<string, RandomCheckpointOptions>;

export type RetrievalKind = keyof typeof RETRIEVAL_CHECKPOINTS;

const written = new Map<string, string>();

/** The checkpoint of `kind`, written once per process into `dir` (default: a temporary one). */
export function retrievalCheckpoint(kind: RetrievalKind, dir?: string): string {
  const cached = written.get(kind);
  if (cached && !dir) return cached;
  const out = dir ?? join(tempDir(`qwen3-${kind}-`), kind);
  if (!existsSync(join(out, 'model.safetensors'))) writeRandomCheckpoint(out, RETRIEVAL_CHECKPOINTS[kind]);
  if (!dir) written.set(kind, out);
  return out;
}

/** The texts the reference scores: embedding inputs, and a query with documents to rerank. */
export const RETRIEVAL_CASES = {
  embeddings: [
    'hello world',
    'Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:What is the capital of China?',
    'The capital of China is Beijing.',
    'Gravity is a force that attracts two bodies towards each other.',
  ],
  rerank: {
    query: 'What is the capital of China?',
    documents: ['The capital of China is Beijing.', 'Gravity is a force that attracts two bodies towards each other.', 'Beijing', 'hi'],
  },
};
