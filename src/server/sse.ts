import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { toOpenAIError } from './error_envelope.js';

/**
 * A server-sent-events body: `data: {json}\n\n` per event, comments as keep-alives,
 * `data: [DONE]` at the end. Fastify sends it as the reply payload.
 */
export class SseStream {
  readonly stream = new PassThrough();
  private keepAlive: NodeJS.Timeout | null = null;
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

  send(data: unknown): void {
    this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  private write(text: string): void {
    if (this.closed) return;
    this.stream.write(text);
    if (this.stream.writableLength + this.stream.readableLength + this.buffered() > this.limit) {
      this.abandon();
      this.overflow();
    }
  }

  /** Comment lines every `ms` until stopped: proxies and clients keep the stream open. */
  startKeepAlive(ms: number): void {
    this.stopKeepAlive();
    this.keepAlive = setInterval(() => this.write(': keep-alive\n\n'), ms);
    this.keepAlive.unref();
  }

  stopKeepAlive(): void {
    if (this.keepAlive) clearInterval(this.keepAlive);
    this.keepAlive = null;
  }

  end(): void {
    if (this.closed) return;
    this.stopKeepAlive();
    this.stream.write('data: [DONE]\n\n');
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

/**
 * Answers with an SSE stream that `produce` writes. Headers go out at once; an error once
 * the stream has started is sent in-band as `data: {"error": …}`; `[DONE]` ends it.
 */
export function streamResponse(request: FastifyRequest, reply: FastifyReply, limit: number, produce: (sse: SseStream) => Promise<void>): FastifyReply {
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
  void (async () => {
    try {
      await produce(sse);
    } catch (err) {
      const mapped = toOpenAIError(err);
      if (mapped.internal) request.log.error({ err }, 'error while streaming');
      sse.send(mapped.body);
    }
    sse.end();
  })();
  reply.header('content-type', 'text/event-stream; charset=utf-8').header('cache-control', 'no-cache').header('x-accel-buffering', 'no');
  return reply.send(sse.stream);
}
