import { InvalidRequestError } from '../errors.js';
import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ServingContext } from '../serving/context.js';
import { checkModel, checkTask, newId, parseBody } from '../serving/request.js';
import type { Served } from '../serving/served.js';
import { rerankRequestSchema } from './retrieval_schemas.js';
import { promptOnlyRequest, runPromptOutputs } from './serving_embeddings.js';

/** Qwen3-Reranker's prompt, as its model card builds it: system and user turns, then an empty thinking block. */
export const RERANK_PREFIX =
  '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n';
export const RERANK_SUFFIX = '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n';
/** The model card's instruction when a request gives none. */
export const RERANK_DEFAULT_INSTRUCTION = 'Given a web search query, retrieve relevant passages that answer the query';

export function rerankBody(instruction: string, query: string, document: string): string {
  return `<Instruct>: ${instruction}\n<Query>: ${query}\n<Document>: ${document}`;
}

/** P("yes") from the "yes" and "no" logits: the softmax over the two, as the model card scores. */
export function yesProbability(yes: number, no: number): number {
  return 1 / (1 + Math.exp(no - yes));
}

/**
 * POST /v1/rerank and /rerank (the Jina / Cohere shape): each document in the model card's
 * template after the query (so documents share its prefix), a prompt-only engine request
 * whose last position's "yes" / "no" logits give the score; results sorted best first.
 */
export async function serveRerank(ctx: ServingContext, body: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(rerankRequestSchema, body);
  checkModel(ctx, req.model);
  checkTask(ctx, 'rerank');
  const yes = ctx.tokenizer.tokenId('yes');
  const no = ctx.tokenizer.tokenId('no');
  if (yes === undefined || no === undefined) throw new Error('the reranker tokenizer has no "yes" / "no" tokens');
  const texts = req.documents.map((d) => (typeof d === 'string' ? d : d.text));
  const instruction = req.instruction ?? RERANK_DEFAULT_INSTRUCTION;
  const [prefix, suffix] = await Promise.all([ctx.codec.encode(RERANK_PREFIX), ctx.codec.encode(RERANK_SUFFIX)]);
  const room = ctx.engine.info!.limits.maxModelLen - prefix.length - suffix.length;
  if (room < 1) throw new InvalidRequestError('The context is too short for the reranker template.', { code: 'context_length_exceeded' });
  // The model card cuts the query and document text to the room the template leaves.
  const prompts = await Promise.all(
    texts.map(async (doc) => [...prefix, ...(await ctx.codec.encode(rerankBody(instruction, req.query, doc))).slice(0, room), ...suffix]),
  );
  const run = await runPromptOutputs(
    ctx,
    prompts.map((ids) => promptOnlyRequest(ids, [yes, no], caller)),
    signal,
    caller,
    { param: 'documents', what: 'documents' },
  );
  if (!run) return { body: null };
  const scored = run.outputs.map((o, index) => ({ index, relevance_score: yesProbability(o[0], o[1]) }));
  scored.sort((a, b) => b.relevance_score - a.relevance_score || a.index - b.index);
  // As vLLM: no top_n, or 0, returns every document.
  const topN = !req.top_n ? scored.length : Math.min(req.top_n, scored.length);
  const withDocs = req.return_documents ?? true;
  const tokens = prompts.reduce((n, p) => n + p.length, 0);
  return {
    body: {
      id: newId('rerank-'),
      model: ctx.options.modelName,
      results: scored.slice(0, topN).map((r) => ({ ...r, ...(withDocs ? { document: { text: texts[r.index] } } : {}) })),
      usage: { prompt_tokens: tokens, total_tokens: tokens, prompt_tokens_details: { cached_tokens: run.cachedTokens } },
    },
  };
}
