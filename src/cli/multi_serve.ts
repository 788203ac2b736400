import { statSync } from 'node:fs';
import { join } from 'node:path';
import type { pino } from 'pino';
import type { Engine } from '../engine/engine.js';
import { AppError } from '../errors.js';
import { readManifest } from '../export/manifest.js';
import type { Keyring } from '../http/api_keys.js';
import { buildApp } from '../http/app.js';
import { Drain } from '../http/drain.js';
import { KeyLimiter } from '../http/key_limits.js';
import { MultiModelMetrics, type ServerMetrics } from '../http/metrics.js';
import { type LoadedServingModel, ModelRegistry } from '../serving/model_registry.js';
import { ResponseStore } from '../serving/response_store.js';
import { httpOptions, loadServingModel } from './load_model.js';
import { type ConfiguredModel, configuredModels, estimateBytes, isMultiModel } from './models_config.js';
import type { ServeConfig } from './serve_flags.js';
import { closeOnSignals, shutdownOnce } from './shutdown.js';

export { isMultiModel };

/** A server of several models (docs/models.md), as startServer returns it. */
export interface MultiServer {
  url: string;
  close(): Promise<void>;
  /** There is no one engine: each model has its own, while it is loaded. */
  readonly engine: Engine;
  models: ModelRegistry;
}

/** Loads one configured model for the registry, with its own settings and worker, logging what it serves. */
async function loadOne(
  m: ConfiguredModel,
  log: pino.Logger,
  metrics: Map<string, ServerMetrics>,
  limiter: KeyLimiter,
  responses: ResponseStore,
  workerFile: URL | undefined,
): Promise<LoadedServingModel> {
  const started = Date.now();
  const child = log.child({ model: m.spec.name });
  const loaded = await loadServingModel(m.config, child, m.spec.name, workerFile);
  // A key's tokens per minute count across every model it uses.
  const observe = loaded.ctx.observe;
  loaded.ctx.observe = (ev, reason, key) => {
    observe(ev, reason, key);
    if (key !== null) limiter.record(key, ev.promptTokens + ev.completionTokens);
  };
  loaded.ctx.options.aliases = m.spec.aliases;
  // One store of responses for the server: a response is found through any model, and outlives its model's unloading.
  loaded.ctx.responses = responses;
  metrics.set(m.spec.name, loaded.metrics);
  const info = loaded.ctx.engine.info!;
  const manifest = readManifest(loaded.resolved.exportDir);
  const weights = statSync(join(loaded.resolved.exportDir, manifest.externalData)).size;
  child.info(
    { task: loaded.task, dtype: info.dtype, device: info.device, max_model_len: info.limits.maxModelLen, seconds: (Date.now() - started) / 1000 },
    `loaded ${m.spec.name}`,
  );
  return {
    ctx: loaded.ctx,
    // The export's weights as loaded, and the KV budget as configured (estimateBytes of no files).
    bytes: weights + estimateBytes('', m.config),
    close: async () => {
      metrics.delete(m.spec.name);
      await loaded.close();
      child.info(`unloaded ${m.spec.name}`);
    },
  };
}

/** Starts a server of several models: each loads on demand (or at start with `preload`) in its own engine worker. */
export async function startMultiServer(
  config: ServeConfig,
  log: pino.Logger,
  installSignalHandlers: boolean,
  keys: Keyring,
  workerFile?: URL,
): Promise<MultiServer> {
  const models = await configuredModels(config);
  const metrics = new Map<string, ServerMetrics>();
  // A key's limits hold for all the models together, not for each.
  const limiter = new KeyLimiter({ maxNumSeqs: config['max-num-seqs'], maxQueue: config['max-queue'], acrossModels: true });
  const responses = new ResponseStore(config['responses-store']);
  const registry = new ModelRegistry(
    models.map((m) => m.spec),
    (spec) => loadOne(models.find((m) => m.spec === spec)!, log, metrics, limiter, responses, workerFile),
    {
      memoryBytes: config['models-memory'] ?? null,
      idleUnloadMs: config['model-idle-unload'] === undefined ? null : config['model-idle-unload'] * 1000,
      log: { info: (msg) => log.info(msg), warn: (msg) => log.warn(msg), error: (obj, msg) => log.error(obj, msg) },
    },
  );
  const drain = new Drain();
  const app = await buildApp(registry, httpOptions(config), new MultiModelMetrics(() => [...metrics.values()]), drain, { keys, limiter }, log).catch(
    async (err: unknown) => {
      await registry.close();
      keys.close();
      throw err;
    },
  );
  let address: string;
  try {
    address = await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await registry.close();
    keys.close();
    throw new AppError(500, 'server_error', `cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`);
  }
  log.info(
    { models: models.map((m) => ({ name: m.spec.name, aliases: m.spec.aliases, model: m.config.model?.[0], preload: m.spec.preload })) },
    `serving ${models.length} models at ${address}/v1 (each loads when first asked for)`,
  );
  await registry.preload();
  const close = shutdownOnce({
    app,
    drain,
    config,
    log,
    abortAll: () => registry.abortAll(),
    closeModels: async () => {
      await registry.close();
      keys.close();
    },
  });
  if (installSignalHandlers) closeOnSignals(close, config, log);
  return {
    url: address,
    close,
    models: registry,
    get engine(): Engine {
      throw new Error('a server of several models has an engine per model: use models');
    },
  };
}
