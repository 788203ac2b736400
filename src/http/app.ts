import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import cors from '@fastify/cors';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { AppError, NotFoundError } from '../errors.js';
import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ServingContext } from '../serving/context.js';
import { ModelRegistry } from '../serving/model_registry.js';
import type { ApiKey, Keyring } from './api_keys.js';
import { requireApiKey } from './auth.js';
import type { Drain } from './drain.js';
import { clientErrorResponse, frameworkError, toAnthropicError, toOpenAIError } from './error_envelope.js';
import { parseJsonBodies } from './json_body.js';
import { anthropicRateHeaders, type KeyLimiter, openAIRateHeaders } from './key_limits.js';
import type { MetricsText, ServerMetrics } from './metrics.js';
import { routeByModel, singleModel } from './model_routing.js';
import type { HttpOptions } from './options.js';
import { anthropicRoutes } from './routes/anthropic.js';
import { generationRoutes } from './routes/generation.js';
import { infoRoutes, operationsRoutes } from './routes/info.js';
import { modelsRoutes } from './routes/models.js';
import { retrievalRoutes } from './routes/retrieval.js';
import { uiRoutes } from './routes/ui.js';

const REQUEST_ID = /^[\w\-.:]{1,128}$/;

declare module 'fastify' {
  interface FastifyRequest {
    /** Who sent it (its API key's name, limits and cache scope); set by the auth hook. */
    caller: Caller;
    /** The API key it came with, when it needs one. */
    apiKey: ApiKey | null;
  }
}

/** The API keys and their per-key accounting. */
export interface Tenancy {
  keys: Keyring;
  limiter: KeyLimiter;
}

/** Routes that generate, which per-key limits and rate-limit headers apply to. */
const GENERATION_PATHS = new Set(['/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/messages']);
/** Routes whose input tokens count toward a key's tokens_per_minute too (OpenAI counts embedding tokens), with its token headers. */
const RETRIEVAL_PATHS = new Set(['/v1/embeddings', '/v1/rerank', '/rerank', '/v2/rerank']);

function callerOf(key: ApiKey | null, scope: HttpOptions['prefixCacheScope']): Caller {
  if (!key) return ANONYMOUS;
  const { maxConcurrent, maxQueued } = key.limits;
  return {
    key: key.name,
    // Always named, limits or not: the scheduler shares the batch between keys by their names.
    limits: { name: key.name, maxConcurrent, maxQueued },
    cacheScope: scope === 'key' ? key.name : null,
  };
}

/**
 * Reads and drops what is left of a request body, up to `bound` bytes; beyond it the
 * connection is closed (a client may not make the server read without end).
 */
function discardBody(raw: IncomingMessage, bound: number): Promise<void> {
  if (raw.complete || raw.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    let seen = 0;
    const done = () => {
      raw.off('data', onData);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > bound) {
        done();
        raw.socket.destroy();
      }
    };
    raw.on('data', onData);
    raw.once('end', done);
    raw.once('close', done);
    raw.once('error', done);
    raw.resume();
  });
}

/**
 * Whether a request's errors take Anthropic's envelope: its route says so, or, for a path
 * no route serves, it lies under `/v1/messages`, where only Anthropic's SDKs call.
 */
function anthropicEnvelope(request: FastifyRequest): boolean {
  const config = request.routeOptions.config as { envelope?: string } | undefined;
  if (config?.envelope !== undefined) return config.envelope === 'anthropic';
  const path = request.url.split('?')[0];
  return path === '/v1/messages' || path.startsWith('/v1/messages/');
}

/** Builds the HTTP app: routes, OpenAI error envelope, auth, request ids, CORS. */
export async function buildApp(
  /** The model served, or the registry of a server of several (model_routing.ts). */
  ctx: ServingContext | ModelRegistry,
  http: HttpOptions,
  metrics: ServerMetrics | MetricsText,
  drain: Drain,
  tenancy: Tenancy,
  logger?: FastifyBaseLogger,
): Promise<FastifyInstance> {
  const app = Fastify({
    ...(logger ? { loggerInstance: logger } : { logger: false }),
    bodyLimit: http.bodyLimit,
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
    requestTimeout: http.requestTimeoutMs,
    keepAliveTimeout: http.idleTimeoutMs,
    http: { headersTimeout: http.headersTimeoutMs, connectionsCheckingInterval: 1000 },
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

  // A client that sends its request and then shuts its side of the connection (an HTTP/1.0
  // tool, a `nc -q0` health check) gets its answer: by default Node aborts every request
  // still being handled at the half-close and ends the connection unanswered. Generation
  // still takes a half-close as the client gone (disconnect.ts). The property is Node's own
  // (lib/_http_server.js), not in its type definitions.
  (app.server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;

  // JSON bodies: any parse failure (syntax, absurd nesting) is the client's 400.
  parseJsonBodies(app);

  if (http.corsOrigins.length > 0) {
    await app.register(cors, {
      origin: http.corsOrigins.includes('*') ? true : http.corsOrigins,
      exposedHeaders: ['x-request-id'],
    });
  }

  const checkKey = requireApiKey(tenancy.keys);
  /** Each keyed generation request's admission by its key's limits (KeyLimiter.begin). */
  const admissions = new WeakMap<object, Promise<void>>();
  app.decorateRequest('caller', null as unknown as Caller);
  app.decorateRequest('apiKey', null);
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    const path = request.url.split('?')[0];
    drain.admit(path, (done) => reply.raw.once('close', done));
    request.caller = ANONYMOUS;
    const key = checkKey(request);
    if (!key) return;
    request.apiKey = key;
    request.caller = callerOf(key, http.prefixCacheScope);
    // The key's name (never the key) in every log line of the request, its last included.
    request.log = request.log.child({ api_key: key.name });
    reply.log = request.log;
    if (request.method !== 'POST') return;
    if (GENERATION_PATHS.has(path)) {
      const admitted = tenancy.limiter.begin(key, (done) => reply.raw.once('close', done));
      // Awaited before routing (a client gone while it waits has no one to tell).
      admitted.catch(() => {});
      admissions.set(request, admitted);
    } else if (RETRIEVAL_PATHS.has(path)) tenancy.limiter.checkTokens(key);
  });
  // The key's rate-limit state with every generation answer, refusals included (OpenAI's or Anthropic's headers).
  app.addHook('onSend', async (request, reply) => {
    const key = request.apiKey;
    if (!key || request.method !== 'POST') return;
    const path = request.url.split('?')[0];
    const retrieval = RETRIEVAL_PATHS.has(path);
    if (!GENERATION_PATHS.has(path) && !retrieval) return;
    const state = tenancy.limiter.state(key);
    // Concurrency limits are for generation: a retrieval answer says only the tokens.
    if (retrieval) state.requests = null;
    reply.headers(path === '/v1/messages' ? anthropicRateHeaders(state) : openAIRateHeaders(state));
  });

  app.setErrorHandler(async (err, request, reply) => {
    // Each API answers in its own envelope: routes name theirs in their config.
    const mapped = anthropicEnvelope(request) ? toAnthropicError(err) : toOpenAIError(err);
    // A body over the limit is refused at once, before it is read (a client that announces
    // its length and waits gets its answer); the connection stays open while the rest is
    // read and dropped, up to a bound, since closing it would reset a client still
    // uploading, which then never sees the 413 (RFC 9112 §9.6).
    if (mapped.status === 413) {
      // Fastify asks to close after a body error; the body is read here instead, so the connection can stay.
      reply.removeHeader('connection');
      void discardBody(request.raw, Math.max(4 * http.bodyLimit, 64 * 2 ** 20));
    }
    if (err instanceof AppError && err.code === 'rate_limit_exceeded' && request.caller.key)
      metrics.rateLimited?.(request.caller.key, err.param ?? 'unknown');
    if (mapped.internal) request.log.error({ err, request_id: request.id }, 'internal error');
    else request.log.info({ status: mapped.status, message: mapped.body.error.message }, 'request rejected');
    return reply.code(mapped.status).headers(mapped.headers).send(mapped.body);
  });

  app.setNotFoundHandler((request, reply) => {
    const err = new NotFoundError(`No route for ${request.method} ${request.url.split('?')[0]}.`, { code: 'not_found' });
    const mapped = anthropicEnvelope(request) ? toAnthropicError(err) : toOpenAIError(err);
    void reply.code(404).header('x-request-id', request.id).send(mapped.body);
  });

  // Before routing: a request waiting for one of its key's max_concurrent holds no model.
  app.addHook('preHandler', async (request) => {
    await admissions.get(request);
  });
  const ctxFor = ctx instanceof ModelRegistry ? routeByModel(app, ctx) : singleModel(ctx);
  await app.register(generationRoutes, { ctxFor, http });
  await app.register(anthropicRoutes, { ctxFor, http });
  await app.register(retrievalRoutes, { ctxFor, http });
  if (ctx instanceof ModelRegistry) await app.register(modelsRoutes, { registry: ctx, ctxFor, metrics });
  else {
    await app.register(infoRoutes, { ctx });
    await app.register(operationsRoutes, { ctx, metrics: metrics as ServerMetrics });
  }
  if (http.ui) await app.register(uiRoutes);
  return app;
}
