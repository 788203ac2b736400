import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ServingContext } from '../serving/context.js';
import type { ModelRegistry } from '../serving/model_registry.js';

/** The serving context a request is for: the one model's, or the one its `model` names. */
export type ContextFor = (request: FastifyRequest) => ServingContext;

const routed = new WeakMap<FastifyRequest, ServingContext>();

export function singleModel(ctx: ServingContext): ContextFor {
  return () => ctx;
}

/**
 * Routes each API request to the model its body's `model` names (the first model when it
 * names none), loading it if needed; the request holds the model until its response ends,
 * so the model is not unloaded under it. Unknown names are 404s in the route's envelope.
 */
export function routeByModel(app: FastifyInstance, registry: ModelRegistry): ContextFor {
  app.addHook('preHandler', async (request, reply) => {
    const path = request.url.split('?')[0];
    if (!path.startsWith('/v1/') && !['/rerank', '/v2/rerank', '/tokenize', '/detokenize'].includes(path)) return;
    if (path === '/v1/models' || path.startsWith('/v1/models/')) return;
    const body = request.body as { model?: unknown } | undefined;
    const name = body && typeof body === 'object' && typeof body.model === 'string' ? body.model : undefined;
    const lease = await registry.acquire(name);
    reply.raw.once('close', lease.release);
    routed.set(request, lease.ctx);
  });
  return (request) => {
    const ctx = routed.get(request);
    if (!ctx) throw new Error(`no model was routed for ${request.url}`);
    return ctx;
  };
}

/** The model id of a `/v1/models/{org}/{name}` path: a Hub id, slash and all. */
export function hubId(params: { org: string; name: string }): string {
  return `${params.org}/${params.name}`;
}
