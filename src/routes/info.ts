import type { FastifyInstance } from 'fastify';
import { InvalidRequestError, NotFoundError, ServiceUnavailableError } from '../errors.js';
import type { ServingContext } from '../server/context.js';
import { checkModel, checkTokenIds, parseBody } from '../server/generation.js';
import { detokenizeRequestSchema, tokenizeRequestSchema } from '../server/schemas.js';
import { prepareChat } from './chat_completions.js';

/** /v1/models, /health, /metrics, /tokenize and /detokenize. */
export function registerInfoRoutes(app: FastifyInstance, ctx: ServingContext): void {
  const card = () => ({
    id: ctx.options.modelName,
    object: 'model',
    created: ctx.createdAt,
    owned_by: 'qwen3-serve',
    root: ctx.options.modelName,
    parent: null,
    max_model_len: ctx.engine.info?.limits.maxModelLen ?? null,
  });

  app.get('/v1/models', async () => ({ object: 'list', data: [card()] }));

  app.get('/v1/models/:id', async (request) => {
    const { id } = request.params as { id: string };
    if (id !== ctx.options.modelName) throw new NotFoundError(`The model \`${id}\` does not exist.`, { param: 'model', code: 'model_not_found' });
    return card();
  });

  app.get('/health', async (_request, reply) => {
    const state = ctx.engine.state;
    if (state !== 'ready') {
      throw new ServiceUnavailableError(
        state === 'loading' ? 'The model is loading.' : `The engine is ${state}${ctx.engine.statusMessage ? `: ${ctx.engine.statusMessage}` : ''}.`,
      );
    }
    const stats = await ctx.engine.stats();
    // The grammar engine rebuilds itself after a fault; one that cannot start again is reported.
    if (stats.grammar?.state === 'failed') throw new ServiceUnavailableError('The grammar engine for structured outputs failed and could not be rebuilt.');
    return reply.send({
      status: 'ok',
      model: ctx.options.modelName,
      device: ctx.engine.info?.device,
      running: stats.running,
      waiting: stats.waiting,
      ...(stats.grammar ? { grammar: stats.grammar } : {}),
    });
  });

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.text();
  });

  app.post('/tokenize', async (request) => {
    const body = parseBody(tokenizeRequestSchema, request.body);
    checkModel(ctx, body.model);
    let tokens: number[];
    if ('prompt' in body) {
      tokens = await ctx.codec.encode(body.prompt);
    } else {
      tokens = (await prepareChat(ctx, {
        messages: body.messages,
        tools: body.tools ?? undefined,
        chat_template_kwargs: body.chat_template_kwargs ?? undefined,
      } as Parameters<typeof prepareChat>[1])).promptIds;
    }
    return {
      count: tokens.length,
      max_model_len: ctx.engine.info?.limits.maxModelLen ?? null,
      tokens,
      ...(body.return_token_strs ? { token_strs: tokens.map((t) => ctx.tokenizer.tokenPiece(t) ?? '') } : {}),
    };
  });

  app.post('/detokenize', async (request) => {
    const body = parseBody(detokenizeRequestSchema, request.body);
    checkModel(ctx, body.model);
    checkTokenIds(ctx, body.tokens, 'tokens');
    if (body.tokens.length > 1_000_000) throw new InvalidRequestError('Too many tokens.', { param: 'tokens' });
    return { prompt: await ctx.codec.decode(body.tokens, false) };
  });
}
