import { randomUUID, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify';
import cors from '@fastify/cors';
import { AuthenticationError, InvalidRequestError, NotFoundError } from '../errors.js';
import { registerChatCompletions } from '../routes/chat_completions.js';
import { registerCompletions } from '../routes/completions.js';
import { registerInfoRoutes } from '../routes/info.js';
import type { ServingContext } from './context.js';
import { nestingDepth } from '../util/nesting.js';
import { clientErrorResponse, frameworkError, toOpenAIError } from './error_envelope.js';

/** JSON bodies nested deeper than this are refused before any recursive code walks them. */
export const MAX_BODY_DEPTH = 128;

const REQUEST_ID = /^[\w\-.:]{1,128}$/;
/** Routes open without an API key: probes and scrapers have no token. */
const OPEN_PATHS = new Set(['/health', '/metrics']);

function sameKey(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Builds the HTTP app: routes, OpenAI error envelope, auth, request ids, CORS. */
export async function buildApp(ctx: ServingContext, logger?: FastifyBaseLogger): Promise<FastifyInstance> {
  const app = Fastify({
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    bodyLimit: ctx.options.bodyLimit,
    // Our id is the client's x-request-id when it is a sane token, else a new UUID.
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    return503OnClosing: true,
    // On close, idle keep-alive connections are dropped at once instead of waiting them out.
    forceCloseConnections: 'idle',
    // The timeouts a reverse proxy would set, so slow or stalled clients cannot hold
    // connections open: the whole request (headers and body), headers alone, and idle
    // keep-alive connections. Node checks them every second instead of every 30.
    requestTimeout: ctx.options.requestTimeoutMs,
    keepAliveTimeout: ctx.options.idleTimeoutMs,
    http: { headersTimeout: ctx.options.headersTimeoutMs, connectionsCheckingInterval: 1000 },
    // Model ids are path parameters: allow every --served-model-name can be.
    routerOptions: { maxParamLength: 512 },
    frameworkErrors: (err, request, reply) => {
      const mapped = frameworkError(err);
      void (reply as FastifyReply).code(mapped.status).headers(mapped.headers).header('x-request-id', request.id).send(mapped.body);
    },
    clientErrorHandler(err, socket) {
      // Errors Node's HTTP parser and timers raise before a request reaches Fastify.
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      if (socket.writable) socket.write(clientErrorResponse(err, randomUUID()));
      socket.destroy(err);
    },
  });

  // JSON bodies: any parse failure (syntax, absurd nesting) is the client's 400.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    if (body === '' || body === undefined) {
      done(new InvalidRequestError('The request body is empty; expected JSON.', { code: 'invalid_json' }), undefined);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body as string);
    } catch (err) {
      done(new InvalidRequestError(`The body is not valid JSON: ${(err as Error).message}`, { code: 'invalid_json' }), undefined);
      return;
    }
    if (nestingDepth(parsed, MAX_BODY_DEPTH) > MAX_BODY_DEPTH) {
      done(new InvalidRequestError(`The body is nested more than ${MAX_BODY_DEPTH} levels deep.`, { code: 'invalid_json' }), undefined);
      return;
    }
    done(null, parsed);
  });

  if (ctx.options.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: ctx.options.corsOrigins.includes('*') ? true : ctx.options.corsOrigins,
      exposedHeaders: ['x-request-id'],
    });
  }

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (!ctx.options.apiKey || OPEN_PATHS.has(request.url.split('?')[0]) || request.method === 'OPTIONS') return;
    const auth = request.headers.authorization ?? '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
    if (!token || !sameKey(token, ctx.options.apiKey)) throw new AuthenticationError();
  });

  app.setErrorHandler((err, request, reply) => {
    const mapped = toOpenAIError(err);
    if (mapped.internal) request.log.error({ err, request_id: request.id }, 'internal error');
    else request.log.info({ status: mapped.status, code: mapped.body.error.code, message: mapped.body.error.message }, 'request rejected');
    void reply.code(mapped.status).headers(mapped.headers).send(mapped.body);
  });

  app.setNotFoundHandler((request, reply) => {
    const mapped = toOpenAIError(new NotFoundError(`No route for ${request.method} ${request.url.split('?')[0]}.`, { code: 'not_found' }));
    void reply.code(404).header('x-request-id', request.id).send(mapped.body);
  });

  registerChatCompletions(app, ctx);
  registerCompletions(app, ctx);
  registerInfoRoutes(app, ctx);
  return app;
}
