import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Served } from '../serving/served.js';
import { toAnthropicError, toOpenAIError } from './error_envelope.js';
import type { HttpOptions } from './options.js';

/**
 * A server-sent-events body: `data: {json}\n\n` per event, comments as keep-alives,
 * `data: [DONE]` at the end. Fastify sends it as the reply payload.
 */
export class SseStream {
  readonly stream = new PassThrough();
  private keepAlive: NodeJS.Timeout | null = null;
  private lastWrite = performance.now();
  closed = false;

  /**
   * `buffered()` tells how many bytes wait for the client; past `limit` the client is
   * not reading, and `overflow` ends the response (the request is aborted with it).
   */
  constructor(
    private readonly limit = Infinity,
    private readonly buffered: () => number = () => 0,
    private readonly overflow: () => void = () => {},
  ) {}

  send(data: unknown, event?: string): void {
    this.write(`${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`);
  }

  private write(text: string): void {
    if (this.closed) return;
    this.lastWrite = performance.now();
    this.stream.write(text);
    if (this.stream.writableLength + this.stream.readableLength + this.buffered() > this.limit) {
      this.abandon();
      this.overflow();
    }
  }

  /** A comment line whenever nothing was written for `ms`: proxies and clients keep the stream open. */
  startKeepAlive(ms: number): void {
    this.stopKeepAlive();
    this.keepAlive = setInterval(() => {
      if (performance.now() - this.lastWrite >= ms - 5) this.write(': keep-alive\n\n');
    }, ms);
    this.keepAlive.unref();
  }

  stopKeepAlive(): void {
    if (this.keepAlive) clearInterval(this.keepAlive);
    this.keepAlive = null;
  }

  /** Ends the stream, with OpenAI's `data: [DONE]` line unless `done` is false. */
  end(done = true): void {
    if (this.closed) return;
    this.stopKeepAlive();
    if (done) this.stream.write('data: [DONE]\n\n');
    this.closed = true;
    this.stream.end();
  }

  /** The client went away: stop writing. */
  abandon(): void {
    this.stopKeepAlive();
    this.closed = true;
    this.stream.end();
  }
}

/** A streamed answer: its chunks, and the API's framing (see Served). */
type StreamOut = Extract<Served, { produce: unknown }>;

/**
 * Answers with an SSE stream that `produce` writes. Headers go out at once; an error once
 * the stream has started is sent in-band in the API's own envelope; OpenAI's streams end
 * with `[DONE]`.
 */
export function streamResponse(request: FastifyRequest, reply: FastifyReply, options: HttpOptions, out: StreamOut): FastifyReply {
  const limit = options.streamBufferLimit;
  const sse = new SseStream(
    limit,
    () => reply.raw.socket?.writableLength ?? 0,
    () => {
      request.log.warn({ limit }, 'client is not reading its stream; closing it and aborting the request');
      // Closing the connection fires the request's abort signal (disconnect.ts): its sequence is freed.
      reply.raw.destroy();
    },
  );
  reply.raw.on('close', () => sse.abandon());
  sse.startKeepAlive(options.keepAliveMs);
  void (async () => {
    try {
      await out.produce((chunk, event) => sse.send(chunk, event));
    } catch (err) {
      const framing = out.framing ?? 'chunks';
      if (framing === 'anthropic') {
        const mapped = toAnthropicError(err);
        if (mapped.internal) request.log.error({ err }, 'error while streaming');
        sse.send(mapped.body, 'error');
      } else {
        const mapped = toOpenAIError(err);
        if (mapped.internal) request.log.error({ err }, 'error while streaming');
        if (framing === 'responses')
          sse.send({ type: 'error', code: mapped.body.error.code, message: mapped.body.error.message, param: mapped.body.error.param }, 'error');
        else sse.send(mapped.body);
      }
    }
    sse.end((out.framing ?? 'chunks') === 'chunks');
  })();
  reply.header('content-type', 'text/event-stream; charset=utf-8').header('cache-control', 'no-cache').header('x-accel-buffering', 'no');
  return reply.send(sse.stream);
}

/** Names the tools a request offered that this server cannot run, left out of its prompt. */
export const IGNORED_TOOLS_HEADER = 'x-qwen3-serve-ignored-tools';

/** Sends what a serving module answered: its JSON body, or its chunks as a stream. */
export async function respond(request: FastifyRequest, reply: FastifyReply, options: HttpOptions, served: Promise<Served>): Promise<unknown> {
  const out = await served;
  const ignored = [...new Set(out.notes?.ignoredTools ?? [])];
  if (ignored.length > 0) {
    reply.header(IGNORED_TOOLS_HEADER, ignored.join(', '));
    request.log.info({ ignored_tools: ignored }, 'tools this server cannot run were left out of the prompt');
  }
  if ('produce' in out) return streamResponse(request, reply, options, out);
  // null: the client went away before the answer was ready; there is no one to send it to.
  return out.body ?? reply;
}
