import type { FastifyInstance } from 'fastify';
import type { pino } from 'pino';
import type { Drain } from '../http/drain.js';
import type { ServeConfig } from './serve_flags.js';

/** A server's close, done once however often it is called: drain, the deadline, then the models. */
export function shutdownOnce(o: {
  app: FastifyInstance;
  drain: Drain;
  config: ServeConfig;
  log: pino.Logger;
  /** Ends every request running at the deadline (each engine's abortAll). */
  abortAll: () => void;
  closeModels: () => Promise<void>;
}): () => Promise<void> {
  const { app, drain, config, log } = o;
  let closing: Promise<void> | null = null;
  return () => {
    closing ??= (async () => {
      // Stop accepting, give in-flight requests the deadline, then end what is left.
      // At the deadline, requests still running end at the next step boundary with what
      // they generated (finish reason 'abort'): their clients get a normal end, and the
      // HTTP server can then close. The engine is stopped once, after its current step.
      const deadline = setTimeout(() => {
        log.warn('shutdown deadline reached; ending requests still running');
        o.abortAll();
      }, config['shutdown-timeout'] * 1000);
      deadline.unref();
      // Drain: /health and new requests get 503 + Retry-After at once (load balancers stop
      // sending, clients retry elsewhere) while requests in flight run to their end.
      drain.start();
      // A request that is not generating (a body still trickling in) does not end at the
      // deadline: a few seconds after it, the server closes regardless.
      const grace = new Promise<void>((resolve) => setTimeout(resolve, config['shutdown-timeout'] * 1000 + 5000).unref());
      // A balancer that health-checks every so often must see a 503 before the port
      // closes, or it sends a request into a refused connection: hold the drain open.
      const delay = new Promise<void>((resolve) => setTimeout(resolve, config['shutdown-delay'] * 1000).unref());
      await Promise.all([Promise.race([drain.idle(), grace]), delay]);
      // Connections that finish their last request while we close would otherwise idle
      // until the keep-alive timeout: drop them as they become idle.
      const reaper = setInterval(() => app.server.closeIdleConnections(), 100);
      await app.close();
      clearInterval(reaper);
      clearTimeout(deadline);
      await o.closeModels();
    })();
    return closing;
  };
}

/** SIGTERM and SIGINT close the server, then the process. */
export function closeOnSignals(close: () => Promise<void>, config: ServeConfig, log: pino.Logger): void {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      log.info(`${sig}: stopping (in-flight requests get ${config['shutdown-timeout']} s)`);
      void close().then(() => process.exit(0));
    });
  }
}
