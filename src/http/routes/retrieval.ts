import type { FastifyPluginAsync } from 'fastify';
import { serveEmbeddings } from '../../openai/serving_embeddings.js';
import { serveRerank } from '../../openai/serving_rerank.js';
import { clientAbortSignal } from '../disconnect.js';
import type { ContextFor } from '../model_routing.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** OpenAI's embeddings, and reranking where vLLM, llama.cpp and Jina / Cohere clients look for it. */
export const retrievalRoutes: FastifyPluginAsync<{ ctxFor: ContextFor; http: HttpOptions }> = async (app, { ctxFor, http }) => {
  app.post('/v1/embeddings', (request, reply) =>
    respond(request, reply, http, serveEmbeddings(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
  );
  for (const path of ['/v1/rerank', '/rerank', '/v2/rerank'])
    app.post(path, (request, reply) =>
      respond(request, reply, http, serveRerank(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
    );
};
