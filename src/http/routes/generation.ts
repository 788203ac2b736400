import type { FastifyPluginAsync } from 'fastify';
import { serveChat } from '../../openai/serving_chat.js';
import { serveCompletions } from '../../openai/serving_completions.js';
import { deleteResponse, retrieveResponse, serveResponses } from '../../openai/serving_responses.js';
import { clientAbortSignal } from '../disconnect.js';
import type { ContextFor } from '../model_routing.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** The OpenAI generation endpoints (and the Responses API's store): each hands its body to its serving module and sends what comes back. */
export const generationRoutes: FastifyPluginAsync<{ ctxFor: ContextFor; http: HttpOptions }> = async (app, { ctxFor, http }) => {
  app.post('/v1/chat/completions', (request, reply) =>
    respond(request, reply, http, serveChat(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/completions', (request, reply) =>
    respond(request, reply, http, serveCompletions(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/responses', (request, reply) =>
    respond(request, reply, http, serveResponses(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.get('/v1/responses/:id', async (request) => retrieveResponse(ctxFor(request), (request.params as { id: string }).id, request.caller));
  app.delete('/v1/responses/:id', async (request) => deleteResponse(ctxFor(request), (request.params as { id: string }).id, request.caller));
};
