import { z } from 'zod';

/** Request bodies of the retrieval endpoints: OpenAI's embeddings, and the Jina / Cohere rerank shape vLLM and llama.cpp serve. */

/** OpenAI's bound on inputs in one embeddings request. */
export const MAX_EMBEDDING_INPUTS = 2048;

const tokenIds = z.array(z.number().int().min(0)).min(1);

export const embeddingRequestSchema = z.object({
  model: z.string().optional(),
  input: z.union([z.string(), z.array(z.string()).min(1).max(MAX_EMBEDDING_INPUTS), tokenIds, z.array(tokenIds).min(1).max(MAX_EMBEDDING_INPUTS)]),
  encoding_format: z.enum(['float', 'base64']).nullable().optional(),
  /** Matryoshka shortening: the first `dimensions` values, normalized again. */
  dimensions: z.number().int().min(1).nullable().optional(),
  user: z.string().nullable().optional(),
  /** vLLM's: keep an input's last k tokens (-1: as many as the context holds) instead of refusing a long one. */
  truncate_prompt_tokens: z.number().int().min(-1).nullable().optional(),
});

export type EmbeddingRequest = z.infer<typeof embeddingRequestSchema>;

const documentSchema = z.union([z.string(), z.object({ text: z.string() })]);

export const rerankRequestSchema = z.object({
  model: z.string().optional(),
  query: z.string(),
  documents: z.array(documentSchema).min(1).max(MAX_EMBEDDING_INPUTS),
  top_n: z.number().int().min(0).nullable().optional(),
  return_documents: z.boolean().nullable().optional(),
  /** The task the reranker judges relevance for (Qwen3-Reranker's `<Instruct>`); its model card's default when absent. */
  instruction: z.string().nullable().optional(),
});

export type RerankRequest = z.infer<typeof rerankRequestSchema>;
