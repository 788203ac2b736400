import { PassThrough } from 'node:stream';

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
