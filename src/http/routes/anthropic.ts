import type { FastifyPluginAsync } from 'fastify';
import { serveCountTokens, serveMessages } from '../../anthropic/serving_messages.js';
import type { ServingContext } from '../../serving/context.js';
import { clientAbortSignal } from '../disconnect.js';
import type { HttpOptions } from '../options.js';
import { respond } from '../sse.js';

/** Anthropic's Messages API; its errors come in Anthropic's envelope (see app.ts). */
export const anthropicRoutes: FastifyPluginAsync<{ ctx: ServingContext; http: HttpOptions }> = async (app, { ctx, http }) => {
  const config = { envelope: 'anthropic' };
  app.post('/v1/messages', { config }, (request, reply) =>
    respond(request, reply, http, serveMessages(ctx, request.body, clientAbortSignal(request, reply), request.caller)),
  );
  app.post('/v1/messages/count_tokens', { config }, async (request) => serveCountTokens(ctx, request.body));
};
