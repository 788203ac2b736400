import type { FastifyPluginAsync } from 'fastify';
import { serveChat } from '../../openai/serving_chat.js';
import { serveCompletions } from '../../openai/serving_completions.js';
import { deleteResponse, retrieveResponse, serveResponses } from '../../openai/serving_responses.js';
import type { ServingContext } from '../../serving/context.js';
import { clientAbortSignal } from '../disconnect.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** The OpenAI generation endpoints (and the Responses API's store): each hands its body to its serving module and sends what comes back. */
export const generationRoutes: FastifyPluginAsync<{ ctx: ServingContext; http: HttpOptions }> = async (app, { ctx, http }) => {
  app.post('/v1/chat/completions', (request, reply) =>
    respond(request, reply, http, serveChat(ctx, request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/completions', (request, reply) =>
    respond(request, reply, http, serveCompletions(ctx, request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/responses', (request, reply) =>
    respond(request, reply, http, serveResponses(ctx, request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.get('/v1/responses/:id', async (request) => retrieveResponse(ctx, (request.params as { id: string }).id, request.caller));
  app.delete('/v1/responses/:id', async (request) => deleteResponse(ctx, (request.params as { id: string }).id, request.caller));
};
