import type { FastifyPluginAsync } from 'fastify';
import { ServiceUnavailableError } from '../../errors.js';
import { modelCard, serveDetokenize, serveModel, serveTokenize } from '../../openai/serving_info.js';
import type { ServingContext } from '../../serving/context.js';
import type { ServerMetrics } from '../metrics.js';
import { hubId } from '../model_routing.js';

/** /v1/models, /tokenize and /detokenize. */
export const infoRoutes: FastifyPluginAsync<{ ctx: ServingContext }> = async (app, { ctx }) => {
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard(ctx)] }));
  app.get('/v1/models/:id', async (request) => serveModel(ctx, (request.params as { id: string }).id));
  // A Hub id names its model `org/name`, as OpenAI's clients put it in the path unescaped.
  app.get('/v1/models/:org/:name', async (request) => serveModel(ctx, hubId(request.params as { org: string; name: string })));
  app.post('/tokenize', async (request) => serveTokenize(ctx, request.body));
  app.post('/detokenize', async (request) => serveDetokenize(ctx, request.body));
};

/** /health (readiness), /live (liveness) and /metrics for Prometheus, all open without an API key. */
export const operationsRoutes: FastifyPluginAsync<{ ctx: ServingContext; metrics: ServerMetrics }> = async (app, { ctx, metrics }) => {
  // Liveness: a replica that is loading, restarting its engine or draining is alive (its
  // readiness says whether to send it work); only an engine that gave up needs a new process.
  app.get('/live', async () => {
    if (ctx.engine.state === 'down')
      throw new ServiceUnavailableError(`The engine is down${ctx.engine.statusMessage ? `: ${ctx.engine.statusMessage}` : ''}.`);
    return { status: 'alive', engine: ctx.engine.state };
  });

  app.get('/health', async () => {
    const state = ctx.engine.state;
    if (state !== 'ready') {
      throw new ServiceUnavailableError(
        state === 'loading' ? 'The model is loading.' : `The engine is ${state}${ctx.engine.statusMessage ? `: ${ctx.engine.statusMessage}` : ''}.`,
      );
    }
    const stats = await ctx.engine.stats();
    // The grammar engine rebuilds itself after a fault; one that cannot start again is reported.
    if (stats.grammar?.state === 'failed')
      throw new ServiceUnavailableError('The grammar engine for structured outputs failed and could not be rebuilt.');
    return {
      status: 'ok',
      model: ctx.options.modelName,
      device: ctx.engine.info?.device,
      running: stats.running,
      waiting: stats.waiting,
      ...(stats.grammar ? { grammar: stats.grammar } : {}),
    };
  });

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.text();
  });
};
