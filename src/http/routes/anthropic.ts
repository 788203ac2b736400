import type { FastifyPluginAsync } from 'fastify';
import { serveCountTokens, serveMessages } from '../../anthropic/serving_messages.js';
import { clientAbortSignal } from '../disconnect.js';
import type { ContextFor } from '../model_routing.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** Anthropic's Messages API; its errors come in Anthropic's envelope (see app.ts). */
export const anthropicRoutes: FastifyPluginAsync<{ ctxFor: ContextFor; http: HttpOptions }> = async (app, { ctxFor, http }) => {
  const config = { envelope: 'anthropic' };
  app.post('/v1/messages', { config }, (request, reply) =>
    respond(request, reply, http, serveMessages(ctxFor(request), request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/messages/count_tokens', { config }, async (request) => serveCountTokens(ctxFor(request), request.body));
};
