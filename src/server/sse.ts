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

  send(data: unknown): void {
    if (this.closed) return;
    this.stream.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** Comment lines every `ms` until stopped: proxies and clients keep the stream open. */
  startKeepAlive(ms: number): void {
    this.stopKeepAlive();
    this.keepAlive = setInterval(() => {
      if (!this.closed) this.stream.write(': keep-alive\n\n');
    }, ms);
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
export function streamResponse(request: FastifyRequest, reply: FastifyReply, produce: (sse: SseStream) => Promise<void>): FastifyReply {
  const sse = new SseStream();
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
