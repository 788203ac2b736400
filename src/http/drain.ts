import { ServiceUnavailableError } from '../errors.js';

/** Paths that stay open while draining: a scraper keeps reading the metrics, and a draining replica is alive. */
const OPEN_WHILE_DRAINING = new Set(['/metrics', '/live']);

/**
 * Draining for a graceful stop: once started, new requests (and /health, so load
 * balancers stop sending) get 503 with Retry-After while requests already in flight,
 * streams included, run to their end; `idle()` resolves when none is left.
 */
export class Drain {
  private draining = false;
  private active = 0;
  private waiters: Array<() => void> = [];

  get isDraining(): boolean {
    return this.draining;
  }

  /** Counts a request until its response is done; refuses it while draining. */
  admit(path: string, onDone: (cb: () => void) => void): void {
    if (this.draining && !OPEN_WHILE_DRAINING.has(path))
      throw new ServiceUnavailableError('The server is shutting down; retry on another replica.', 2);
    this.active++;
    onDone(() => {
      this.active--;
      if (this.active === 0) for (const w of this.waiters.splice(0)) w();
    });
  }

  start(): void {
    this.draining = true;
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
