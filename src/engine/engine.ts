import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { AbortedError, AppError, ConfigError, ServiceUnavailableError } from '../errors.js';
import type { MainMessage, WireError, WorkerMessage, WorkerOptions } from './protocol.js';
import type { EngineEvent, EngineInfo, EngineStats, GenerateRequest } from './types.js';

export type EngineState = 'loading' | 'ready' | 'restarting' | 'down' | 'stopped';

export interface EngineLogger {
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

const silentLogger: EngineLogger = { info() {}, warn() {}, error() {} };

/** Events of one request, pushed by the worker and pulled by the HTTP handler. */
class EventChannel {
  private readonly queue: Array<EngineEvent | AppError> = [];
  private waiter: (() => void) | null = null;
  /** Settles when the worker accepts the request (or refuses it, or dies first). */
  readonly accepted: Promise<void>;
  accept!: () => void;
  private refuse!: (err: AppError) => void;

  constructor() {
    this.accepted = new Promise<void>((resolve, reject) => {
      this.accept = resolve;
      this.refuse = reject;
    });
    // A refusal is read through `accepted`; never let it count as unhandled.
    this.accepted.catch(() => {});
  }

  push(item: EngineEvent | AppError): void {
    if (item instanceof AppError) this.refuse(item);
    else this.accept();
    this.queue.push(item);
    this.waiter?.();
  }

  async *drain(): AsyncGenerator<EngineEvent> {
    for (;;) {
      while (this.queue.length > 0) {
        const item = this.queue.shift()!;
        if (item instanceof AppError) throw item;
        yield item;
        if (item.finishReason !== null) return;
      }
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
      this.waiter = null;
    }
  }
}

function toAppError(e: WireError): AppError {
  return new AppError(e.status, e.type, e.message, { code: e.code, param: e.param, retryAfter: e.retryAfter ?? undefined });
}

/**
 * The main thread's handle on the engine worker: submit requests and read their events
 * as async iterables, abort them, read stats. If the worker dies, requests in flight end
 * with an error, `state` says so, and a new worker is started.
 */
export class Engine extends EventEmitter {
  state: EngineState = 'loading';
  info: EngineInfo | null = null;
  private worker: Worker | null = null;
  private readonly channels = new Map<string, EventChannel>();
  private readonly statsWaiters = new Map<number, (s: EngineStats) => void>();
  private statsToken = 0;
  /** When the worker died, within the last minute. */
  private deaths: number[] = [];
  private closing: Promise<void> | null = null;
  private lastError: string | null = null;

  private constructor(
    private readonly options: WorkerOptions,
    private readonly log: EngineLogger,
    private readonly workerFile: URL,
  ) {
    super();
  }

  /**
   * Starts the worker and resolves once the model is loaded. `workerFile` is the module
   * the thread boots (worker.ts; tests pass one that wraps it).
   */
  static async start(
    options: WorkerOptions,
    log: EngineLogger = silentLogger,
    workerFile = new URL('./worker.js', import.meta.url),
  ): Promise<Engine> {
    const engine = new Engine(options, log, workerFile);
    await engine.spawn();
    return engine;
  }

  get statusMessage(): string | null {
    return this.lastError;
  }

  private spawn(): Promise<void> {
    return new Promise((resolve, reject) => {
      const worker = new Worker(this.workerFile, { workerData: this.options });
      this.worker = worker;
      let ready = false;
      worker.on('message', (msg: WorkerMessage) => {
        switch (msg.type) {
          case 'ready':
            ready = true;
            this.info = msg.info;
            this.state = 'ready';
            this.lastError = null;
            this.emit('ready', msg.info);
            resolve();
            break;
          case 'accepted':
            this.channels.get(msg.requestId)?.accept();
            break;
          case 'events':
            for (const ev of msg.events) {
              const ch = this.channels.get(ev.requestId);
              if (!ch) continue;
              if (ev.finishReason === 'error' && ev.error) {
                ch.push(new AppError(ev.error.status, ev.error.type, ev.error.message, { code: ev.error.code }));
                this.channels.delete(ev.requestId);
                continue;
              }
              ch.push(ev);
              if (ev.finishReason !== null) this.channels.delete(ev.requestId);
            }
            break;
          case 'rejected': {
            const ch = this.channels.get(msg.requestId);
            this.channels.delete(msg.requestId);
            ch?.push(toAppError(msg.error));
            break;
          }
          case 'stats':
            this.statsWaiters.get(msg.token)?.(msg.stats);
            this.statsWaiters.delete(msg.token);
            break;
          case 'fault':
            this.log.error({ fault: msg.message }, 'engine step failed; requests in flight were ended');
            break;
          case 'warning':
            this.log.warn(msg.message);
            break;
          case 'failed':
            this.lastError = msg.message;
            if (!ready)
              reject(msg.config ? new ConfigError(msg.message) : new AppError(500, 'model_error', `the engine could not start: ${msg.message}`));
            break;
        }
      });
      worker.on('error', (err) => {
        this.lastError = err.message;
        this.log.error({ err }, 'engine worker error');
        if (!ready) reject(err);
      });
      worker.on('exit', (code) => {
        if (this.worker !== worker) return;
        this.worker = null;
        this.failInFlight(new ServiceUnavailableError('The engine stopped while this request was running; retry.'));
        if (this.state === 'stopped') return;
        if (!ready) return; // start() reports it
        this.restart(code);
      });
    });
  }

  private restart(code: number): void {
    const now = Date.now();
    this.deaths = this.deaths.filter((t) => now - t < 60_000);
    this.deaths.push(now);
    if (this.deaths.length >= MAX_DEATHS_PER_MINUTE) {
      this.state = 'down';
      this.log.error({ code }, `engine worker died ${this.deaths.length} times within a minute; not restarting`);
      return;
    }
    this.log.error({ code }, 'engine worker exited; restarting');
    this.state = 'restarting';
    this.spawn().catch((err: Error) => {
      this.state = 'down';
      this.lastError = err.message;
      this.log.error({ err }, 'engine restart failed');
    });
  }

  private failInFlight(err: AppError): void {
    for (const ch of this.channels.values()) ch.push(err);
    this.channels.clear();
    for (const w of this.statsWaiters.values()) w(emptyStats());
    this.statsWaiters.clear();
  }

  private send(msg: MainMessage): void {
    this.worker?.postMessage(msg);
  }

  /**
   * Submits a request and resolves, once the worker has queued it, to its events.
   * Refusals (queue full, too long, engine down) reject here, before any output; faults
   * later are thrown by the iterator. Aborting `signal` ends generation at the next step
   * boundary with finishReason 'abort'.
   */
  async submit(request: GenerateRequest, signal?: AbortSignal): Promise<AsyncGenerator<EngineEvent>> {
    if (this.state !== 'ready' || !this.worker) {
      throw new ServiceUnavailableError(this.state === 'loading' ? 'The model is still loading.' : `The engine is ${this.state}.`);
    }
    if (signal?.aborted) throw new AbortedError();
    const ch = new EventChannel();
    this.channels.set(request.requestId, ch);
    this.send({ type: 'submit', request });
    const onAbort = () => this.abort(request.requestId);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await ch.accepted;
    } catch (err) {
      signal?.removeEventListener('abort', onAbort);
      throw err;
    }
    const drain = ch.drain();
    return (async function* () {
      try {
        yield* drain;
      } finally {
        signal?.removeEventListener('abort', onAbort);
      }
    })();
  }

  /** `submit` and iterate in one: errors of either kind come from the iterator. */
  async *generate(request: GenerateRequest, signal?: AbortSignal): AsyncGenerator<EngineEvent> {
    yield* await this.submit(request, signal);
  }

  /**
   * Asks the engine to compute the prefix cache's blocks of `promptIds` while it has
   * nothing else to do (EngineCore.warm); ignored when it is not ready or has no cache.
   */
  warm(promptIds: number[], salt: string | null = null): void {
    if (this.state === 'ready' && this.info?.prefixCache) this.send({ type: 'warm', promptIds, salt });
  }

  abort(requestId: string): void {
    if (this.channels.has(requestId)) this.send({ type: 'abort', requestId });
  }

  stats(): Promise<EngineStats> {
    if (!this.worker || this.state !== 'ready') return Promise.resolve(emptyStats());
    const token = ++this.statsToken;
    return new Promise((resolve) => {
      this.statsWaiters.set(token, resolve);
      this.send({ type: 'stats', token });
    });
  }

  /**
   * Stops the worker; requests still running end with an error. The worker is asked to
   * leave after its current step: terminating a thread inside an ONNX Runtime run aborts
   * the whole process.
   */
  close(): Promise<void> {
    // Once: a second caller waits for the same exit (exiting the process while the
    // worker is inside ONNX Runtime aborts it).
    this.closing ??= (async () => {
      this.state = 'stopped';
      const w = this.worker;
      this.worker = null;
      this.failInFlight(new ServiceUnavailableError('The server is shutting down.'));
      if (!w) return;
      const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
      w.postMessage({ type: 'shutdown' } satisfies MainMessage);
      await exited;
    })();
    return this.closing;
  }

  /**
   * Ends every request at the next step boundary with finish reason 'abort' (the
   * shutdown deadline): their clients get a normal end with what was generated.
   */
  abortAll(): void {
    this.send({ type: 'abort-all' });
  }
}

/** The worker is restarted after a death, until it dies this many times within a minute. */
const MAX_DEATHS_PER_MINUTE = 3;

export function emptyStats(): EngineStats {
  return {
    running: 0,
    waiting: 0,
    kvUsedTokens: 0,
    kvBudgetTokens: 0,
    kvBytes: 0,
    promptTokensTotal: 0,
    generationTokensTotal: 0,
    warmedTokensTotal: 0,
    requestsFinished: 0,
    steps: 0,
    grammar: null,
    prefixCache: null,
  };
}
