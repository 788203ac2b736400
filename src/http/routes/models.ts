import type { FastifyPluginAsync } from 'fastify';
import { NotFoundError, ServiceUnavailableError } from '../../errors.js';
import { modelCard, serveDetokenize, serveTokenize } from '../../openai/serving_info.js';
import type { ModelRegistry, ModelSpec } from '../../serving/model_registry.js';
import type { MetricsText } from '../metrics.js';
import { type ContextFor, hubId } from '../model_routing.js';

/** A model as /v1/models lists it in a server of several: its state, and its card once loaded. */
function card(m: ReturnType<ModelRegistry['list']>[number]) {
  const base = m.ctx ? modelCard(m.ctx) : { id: m.spec.name, object: 'model', created: 0, owned_by: 'qwen3-serve', root: m.spec.name, parent: null };
  return { ...base, aliases: m.spec.aliases, state: m.state, ...(m.error ? { error: m.error } : {}) };
}

const named = (spec: ModelSpec, id: string) => spec.name === id || spec.aliases.includes(id);

/** /v1/models, /tokenize, /detokenize, /health, /live and /metrics of a server of several models. */
export const modelsRoutes: FastifyPluginAsync<{ registry: ModelRegistry; ctxFor: ContextFor; metrics: MetricsText }> = async (
  app,
  { registry, ctxFor, metrics },
) => {
  app.get('/v1/models', async () => ({ object: 'list', data: registry.list().map(card) }));
  const one = async (id: string) => {
    const m = registry.list().find((x) => named(x.spec, id));
    if (!m) throw new NotFoundError(`The model \`${id}\` does not exist.`, { param: 'model', code: 'model_not_found' });
    return card(m);
  };
  app.get('/v1/models/:id', async (request) => one((request.params as { id: string }).id));
  // A Hub id names its model `org/name`, as OpenAI's clients put it in the path unescaped.
  app.get('/v1/models/:org/:name', async (request) => one(hubId(request.params as { org: string; name: string })));
  app.post('/tokenize', async (request) => serveTokenize(ctxFor(request), request.body));
  app.post('/detokenize', async (request) => serveDetokenize(ctxFor(request), request.body));

  // Live while any model can serve or load; a model that is down or failed is reported, not fatal.
  app.get('/live', async () => ({
    status: 'alive',
    models: Object.fromEntries(registry.list().map((m) => [m.spec.name, m.ctx?.engine.state ?? m.state])),
  }));

  app.get('/health', async () => {
    const models = await Promise.all(
      registry.list().map(async (m) => {
        const stats = m.ctx && m.ctx.engine.state === 'ready' ? await m.ctx.engine.stats() : null;
        return [
          m.spec.name,
          {
            state: m.state,
            ...(m.ctx ? { engine: m.ctx.engine.state, device: m.ctx.engine.info?.device } : {}),
            ...(stats ? { running: stats.running, waiting: stats.waiting } : {}),
            ...(m.error ? { error: m.error } : {}),
          },
        ] as const;
      }),
    );
    // Ready while some model is loaded or can be loaded on demand.
    if (models.every(([, m]) => m.state === 'failed')) throw new ServiceUnavailableError('No model could be loaded.');
    return { status: 'ok', models: Object.fromEntries(models) };
  });

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', 'text/plain; version=0.0.4; charset=utf-8');
    return metrics.text();
  });
};
