import { NotFoundError, ServiceUnavailableError } from '../errors.js';
import { shortened } from '../util/shortened.js';
import type { ServingContext } from './context.js';

/** One configured model: its served name, other names, and what loading it is expected to take. */
export interface ModelSpec {
  name: string;
  aliases: string[];
  /** Load at start rather than at the first request. */
  preload: boolean;
  /** Memory it takes once loaded (weights and KV cache), for the memory budget; corrected after the load. */
  estimatedBytes: number;
}

/** A loaded model: its serving context and how to unload it. */
export interface LoadedServingModel {
  ctx: ServingContext;
  /** Memory it takes, as measured once loaded. */
  bytes: number;
  close(): Promise<void>;
}

export type ModelState = 'unloaded' | 'loading' | 'loaded' | 'failed';

interface Entry {
  spec: ModelSpec;
  state: ModelState;
  loaded: LoadedServingModel | null;
  loading: Promise<LoadedServingModel> | null;
  /** Requests using it now: it is not unloaded while any runs. */
  users: number;
  lastUsed: number;
  idleTimer: NodeJS.Timeout | null;
  error: string | null;
  failedAt: number;
}

export interface RegistryOptions {
  /** Bytes the loaded models may take together; null: no bound. */
  memoryBytes: number | null;
  /** Unload a model unused this long; null: never. */
  idleUnloadMs: number | null;
  /** A model that failed to load is tried again after this long (its requests get 503 until then). */
  retryFailedMs?: number;
  log: { info(msg: string): void; warn(msg: string): void; error(obj: object, msg: string): void };
  now?: () => number;
}

/** What a request holds while it uses a model: release it when the request ends. */
export interface ModelLease {
  ctx: ServingContext;
  release(): void;
}

/**
 * The models of a server that serves several (llama-server's router, Ollama): each is
 * found by its name or an alias, loaded when first asked for (or at start), unloaded when
 * idle, and the least recently used idle one makes room within the memory budget. Loading,
 * its failure and unloading touch no other model: each runs in its own engine worker.
 */
export class ModelRegistry {
  private readonly entries: Entry[];
  private readonly byName = new Map<string, Entry>();
  private readonly now: () => number;
  private closed = false;

  constructor(
    specs: ModelSpec[],
    private readonly load: (spec: ModelSpec) => Promise<LoadedServingModel>,
    private readonly options: RegistryOptions,
  ) {
    this.now = options.now ?? (() => Date.now());
    this.entries = specs.map((spec) => ({
      spec,
      state: 'unloaded',
      loaded: null,
      loading: null,
      users: 0,
      lastUsed: 0,
      idleTimer: null,
      error: null,
      failedAt: 0,
    }));
    for (const e of this.entries) {
      for (const name of [e.spec.name, ...e.spec.aliases]) {
        if (this.byName.has(name)) throw new Error(`the model name ${JSON.stringify(name)} is given twice`);
        this.byName.set(name, e);
      }
    }
  }

  /** Every model with its state, in configuration order. */
  list(): Array<{ spec: ModelSpec; state: ModelState; ctx: ServingContext | null; error: string | null }> {
    return this.entries.map((e) => ({ spec: e.spec, state: e.state, ctx: e.loaded?.ctx ?? null, error: e.error }));
  }

  /** The model a request names (any alias), or the first one when it names none. */
  find(name: string | undefined): ModelSpec | undefined {
    return name === undefined ? this.entries[0]?.spec : this.byName.get(name)?.spec;
  }

  /** Loads the models marked preload, in order; a failure is logged and leaves the others. */
  async preload(): Promise<void> {
    for (const e of this.entries) if (e.spec.preload) await this.ensureLoaded(e).catch(() => {});
  }

  /**
   * The model `name` for one request, loaded if it is not (the request waits): an unknown
   * name is a 404; a model that cannot be loaded or fitted is a 503 with Retry-After.
   */
  async acquire(name: string | undefined): Promise<ModelLease> {
    const e = name === undefined ? this.entries[0] : this.byName.get(name);
    if (!e) {
      const known = this.entries.map((x) => x.spec.name).join(', ');
      throw new NotFoundError(`The model \`${shortened(name ?? '')}\` does not exist. This server serves: ${known}.`, {
        param: 'model',
        code: 'model_not_found',
      });
    }
    e.users++;
    this.touch(e);
    try {
      const loaded = await this.ensureLoaded(e);
      let released = false;
      return {
        ctx: loaded.ctx,
        release: () => {
          if (released) return;
          released = true;
          e.users--;
          this.touch(e);
        },
      };
    } catch (err) {
      e.users--;
      throw err;
    }
  }

  private touch(e: Entry): void {
    e.lastUsed = this.now();
    if (e.idleTimer) clearTimeout(e.idleTimer);
    e.idleTimer = null;
    const idle = this.options.idleUnloadMs;
    if (idle !== null && e.users === 0 && e.state === 'loaded') {
      e.idleTimer = setTimeout(() => {
        e.idleTimer = null;
        if (e.users === 0 && e.state === 'loaded') {
          this.options.log.info(`unloading ${e.spec.name}: idle for ${Math.round(idle / 1000)} s`);
          void this.unload(e);
        }
      }, idle);
      e.idleTimer.unref();
    }
  }

  private ensureLoaded(e: Entry): Promise<LoadedServingModel> {
    if (this.closed) return Promise.reject(new ServiceUnavailableError('The server is shutting down.'));
    if (e.loaded) return Promise.resolve(e.loaded);
    if (e.loading) return e.loading;
    const retryMs = this.options.retryFailedMs ?? 30_000;
    if (e.state === 'failed' && this.now() - e.failedAt < retryMs) {
      const wait = Math.max(1, Math.ceil((retryMs - (this.now() - e.failedAt)) / 1000));
      return Promise.reject(new ServiceUnavailableError(`The model \`${e.spec.name}\` failed to load: ${e.error}`, wait));
    }
    e.loading = (async () => {
      try {
        // Inside the try: a model that does not fit now is refused this once, and nothing is left loading.
        await this.makeRoom(e);
      } catch (err) {
        e.loading = null;
        throw err;
      }
      e.state = 'loading';
      this.options.log.info(`loading ${e.spec.name}`);
      try {
        const loaded = await this.load(e.spec);
        e.loaded = loaded;
        e.state = 'loaded';
        e.error = null;
        this.touch(e);
        return loaded;
      } catch (err) {
        e.state = 'failed';
        e.error = (err as Error).message;
        e.failedAt = this.now();
        this.options.log.error({ err }, `${e.spec.name} failed to load`);
        throw new ServiceUnavailableError(`The model \`${e.spec.name}\` failed to load: ${e.error}`, Math.ceil(retryMs / 1000));
      } finally {
        e.loading = null;
      }
    })();
    return e.loading;
  }

  /** Unloads least recently used idle models until `e` fits the budget; a 503 when it cannot. */
  private async makeRoom(e: Entry): Promise<void> {
    const budget = this.options.memoryBytes;
    if (budget === null) return;
    const used = () => this.entries.reduce((n, x) => n + (x.loaded ? x.loaded.bytes : x.loading && x !== e ? x.spec.estimatedBytes : 0), 0);
    if (e.spec.estimatedBytes > budget) {
      throw new ServiceUnavailableError(
        `The model \`${e.spec.name}\` needs about ${mib(e.spec.estimatedBytes)} MiB, more than --models-memory (${mib(budget)} MiB).`,
        60,
      );
    }
    while (used() + e.spec.estimatedBytes > budget) {
      const idle = this.entries.filter((x) => x !== e && x.state === 'loaded' && x.users === 0).sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (!idle) {
        throw new ServiceUnavailableError(
          `The model \`${e.spec.name}\` does not fit in --models-memory (${mib(budget)} MiB) beside the models serving requests now; retry shortly.`,
          5,
        );
      }
      this.options.log.info(`unloading ${idle.spec.name} to make room for ${e.spec.name} (--models-memory)`);
      await this.unload(idle);
    }
  }

  private async unload(e: Entry): Promise<void> {
    const loaded = e.loaded;
    if (!loaded) return;
    e.loaded = null;
    e.state = 'unloaded';
    if (e.idleTimer) clearTimeout(e.idleTimer);
    e.idleTimer = null;
    await loaded.close();
  }

  /** Ends every loaded model's running requests at their next step (the shutdown deadline). */
  abortAll(): void {
    for (const e of this.entries) e.loaded?.ctx.engine.abortAll();
  }

  /** Unloads every model, waiting for loads under way. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.entries.map((e) => e.loading?.catch(() => {})));
    await Promise.all(this.entries.map((e) => this.unload(e)));
  }
}

const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
