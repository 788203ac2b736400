import type { FastifyPluginAsync } from 'fastify';
import { serveEmbeddings } from '../../openai/serving_embeddings.js';
import { serveRerank } from '../../openai/serving_rerank.js';
import type { ServingContext } from '../../serving/context.js';
import { clientAbortSignal } from '../disconnect.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** OpenAI's embeddings, and reranking where vLLM, llama.cpp and Jina / Cohere clients look for it. */
export const retrievalRoutes: FastifyPluginAsync<{ ctx: ServingContext; http: HttpOptions }> = async (app, { ctx, http }) => {
  app.post('/v1/embeddings', (request, reply) =>
    respond(request, reply, http, serveEmbeddings(ctx, request.body, clientAbortSignal(request, reply))),
  );
  for (const path of ['/v1/rerank', '/rerank', '/v2/rerank'])
    app.post(path, (request, reply) => respond(request, reply, http, serveRerank(ctx, request.body, clientAbortSignal(request, reply))));
};
