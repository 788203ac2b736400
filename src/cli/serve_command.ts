import { pino } from 'pino';
import type { Engine } from '../engine/engine.js';
import { AppError } from '../errors.js';
import { DEMO_NAME } from '../export/model_source.js';
import { Keyring } from '../http/api_keys.js';
import { buildApp } from '../http/app.js';
import { Drain } from '../http/drain.js';
import { KeyLimiter } from '../http/key_limits.js';
import { httpOptions, loadServingModel } from './load_model.js';
import { isMultiModel, startMultiServer } from './multi_serve.js';
import { parseServeConfig, type ServeConfig } from './serve_flags.js';
import { closeOnSignals, shutdownOnce } from './shutdown.js';

export { parseServeConfig, SERVE_FLAGS, type ServeConfig } from './serve_flags.js';

export interface RunningServer {
  url: string;
  close(): Promise<void>;
  engine: Engine;
}

/** Loads the model, starts the engine and listens. Used by the CLI and the end-to-end tests. */
export async function startServer(
  config: ServeConfig,
  opts: { logger?: pino.Logger; installSignalHandlers?: boolean; engineWorker?: URL } = {},
): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: config['log-level'] });
  // Read first: a keys file that does not parse stops the start before any model loads.
  const keys = new Keyring(config['api-key'] ?? null, config['api-keys-file'] ?? null, log);
  if (isMultiModel(config)) return startMultiServer(config, log, opts.installSignalHandlers ?? false, keys, opts.engineWorker);
  const { ctx, metrics, resolved, task, close: closeModel } = await loadServingModel(config, log, undefined, opts.engineWorker);
  const { engine } = ctx;
  const limiter = new KeyLimiter({ maxNumSeqs: engine.info!.limits.maxNumSeqs, maxQueue: engine.info!.limits.maxQueue });
  const observe = ctx.observe;
  ctx.observe = (m, reason, key) => {
    observe(m, reason, key);
    if (key !== null) limiter.record(key, m.promptTokens + m.completionTokens);
  };
  const closeAll = async () => {
    await closeModel();
    keys.close();
  };
  const modelName = ctx.options.modelName;
  const http = httpOptions(config);
  const drain = new Drain();
  // A start that fails after the model loaded stops its engine, or the process would never exit.
  const app = await buildApp(ctx, http, metrics, drain, { keys, limiter }, log).catch(async (err: unknown) => {
    await closeAll();
    throw err;
  });
  let address: string;
  try {
    address = await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await closeAll();
    throw new AppError(500, 'server_error', `cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`);
  }
  const info = engine.info!;
  log.info(
    {
      model: modelName,
      ...(task !== 'chat' ? { task } : {}),
      export: resolved.exportDir,
      layout: info.layout,
      dtype: info.dtype,
      device: info.device,
      max_model_len: info.limits.maxModelLen,
      api_keys: keys.enabled ? keys.size : 'none',
      prefix_cache_scope: http.prefixCacheScope,
      kv_budget_tokens: info.limits.kvBudgetTokens,
      weights_mib: Math.round(info.memory.weightBytes / 2 ** 20),
      kv_cache_mib: Math.round(info.memory.kvBytes / 2 ** 20),
      kv_cache_prefaulted_mib: Math.round(info.kvPrefaultedBytes / 2 ** 20),
      prefix_cache: info.prefixCache
        ? {
            block_tokens: info.prefixCache.blockTokens,
            memory_mib: Math.round(info.prefixCache.capacityBytes / 2 ** 20),
            ...(info.prefixCache.disk && {
              disk: {
                dir: info.prefixCache.disk.dir,
                blocks: info.prefixCache.disk.blocks,
                mib: Math.round(info.prefixCache.disk.bytes / 2 ** 20),
                capacity_mib: Math.round(info.prefixCache.disk.capacityBytes / 2 ** 20),
                writable: !info.prefixCache.disk.degraded,
              },
            }),
          }
        : info.prefixCacheNote,
    },
    `serving ${modelName} on ${info.device} at ${address}/v1`,
  );
  if (info.limitsNote) log.warn(info.limitsNote);
  if (info.deviceNote) log[info.deviceNoteIsWarning ? 'warn' : 'info'](`running on CPU: ${info.deviceNote}`);
  if (resolved.demo) {
    log.warn(
      `${DEMO_NAME} is a demo model with random weights: the API works end to end but its answers are noise. ` +
        'Serve a real model with: npm start -- --model /path/to/Qwen3-0.6B',
    );
  }

  const close = shutdownOnce({ app, drain, config, log, abortAll: () => engine.abortAll(), closeModels: closeAll });
  if (opts.installSignalHandlers) closeOnSignals(close, config, log);
  return { url: address, close, engine };
}

export async function serveCommand(argv: string[]): Promise<void> {
  const config = parseServeConfig(argv);
  if (!config) return;
  await startServer(config, { installSignalHandlers: true });
  // Keep running until a signal closes the server.
  await new Promise(() => {});
}
