import { availableParallelism } from 'node:os';
import { pino } from 'pino';
import { Engine } from '../engine/engine.js';
import { AppError } from '../errors.js';
import { DEMO_NAME, defaultCacheDir, resolveExportTarget, resolveModel } from '../export/model_source.js';
import { Keyring } from '../http/api_keys.js';
import { buildApp } from '../http/app.js';
import { Drain } from '../http/drain.js';
import { KeyLimiter } from '../http/key_limits.js';
import { ServerMetrics } from '../http/metrics.js';
import type { HttpOptions } from '../http/options.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { cudaUsable } from '../runtime/session.js';
import type { ServingContext } from '../serving/context.js';
import { ReasoningSeal } from '../serving/reasoning_seal.js';
import { ResponseStore } from '../serving/response_store.js';
import { ChatTemplate } from '../text/chat_template.js';
import { OffThreadTokenizer } from '../text/offthread_tokenizer.js';
import { QwenTokenizer, readTokenizerFiles } from '../text/tokenizer.js';
import { createProgress } from '../util/progress.js';
import { parseServeConfig, type ServeConfig } from './serve_flags.js';

export { parseServeConfig, SERVE_FLAGS, type ServeConfig } from './serve_flags.js';

export interface RunningServer {
  url: string;
  close(): Promise<void>;
  engine: Engine;
}

/** Loads the model, starts the engine and listens. Used by the CLI and the end-to-end tests. */
export async function startServer(config: ServeConfig, opts: { logger?: pino.Logger; installSignalHandlers?: boolean } = {}): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: config['log-level'] });
  // Read first: a keys file that does not parse stops the start before the model loads.
  const keys = new Keyring(config['api-key'] ?? null, config['api-keys-file'] ?? null, log);
  const requestedDevice = config.device;
  const target = resolveExportTarget(requestedDevice, config.dtype, cudaUsable());
  if (target.note && config.model !== undefined) log.info(target.note);
  const resolved = await resolveModel({
    model: config.model,
    cacheDir: config['cache-dir'] ?? defaultCacheDir(),
    dtype: target.dtype,
    layout: config.layout,
    device: target.device,
    progress: createProgress(),
    log: (msg) => log.info(msg),
  });
  const engine = await Engine.start(
    {
      modelDir: resolved.exportDir,
      device: requestedDevice,
      threads: config.threads ?? availableParallelism(),
      maxNumSeqs: config['max-num-seqs'],
      maxNumBatchedTokens: config['max-num-batched-tokens'] ?? null,
      maxQueue: config['max-queue'],
      maxModelLen: config['max-model-len'] ?? null,
      kvCacheMemory: config['kv-cache-memory'],
      kvCachePrefault: config['kv-cache-prefault'],
      prefixCacheMemory: config['no-prefix-caching'] ? 0 : config['prefix-cache-memory'],
      prefixCacheDir: config['prefix-cache-dir'] ?? null,
      prefixCacheDisk: config['prefix-cache-disk'],
      jsonWhitespace: config['json-whitespace'],
      grammarCompileTimeoutMs: config['grammar-compile-timeout'] * 1000,
    },
    log,
  );
  const files = readTokenizerFiles(resolved.exportDir);
  const tokenizer = new QwenTokenizer(files);
  const codec = new OffThreadTokenizer(tokenizer, resolved.exportDir, config['tokenize-timeout'] * 1000);
  codec.start();
  const modelName = config['served-model-name'] ?? resolved.name;
  const metrics = new ServerMetrics(engine, modelName, config['metrics-compat']);
  const limiter = new KeyLimiter({ maxNumSeqs: engine.info!.limits.maxNumSeqs, maxQueue: engine.info!.limits.maxQueue });
  const ctx: ServingContext = {
    engine,
    tokenizer,
    codec,
    template: ChatTemplate.fromTokenizerConfig(files.config),
    generation: readGenerationConfig(resolved.exportDir),
    observe: (m, reason, key) => {
      metrics.observe(m, reason, key);
      if (key !== null) limiter.record(key, m.promptTokens + m.completionTokens);
    },
    responses: new ResponseStore(config['responses-store']),
    seal: new ReasoningSeal(config['reasoning-secret']),
    options: {
      modelName,
      reasoningField: config['reasoning-field'],
      defaultThinking: config['default-thinking'] === 'on',
      logPrompts: config['log-prompts'],
      reasoningEffortBudgets: config['reasoning-effort-budgets'],
      warmNextTurn: !config['no-prefix-caching'] && !config['no-warm-next-turn'],
      strictMaxTokens: config['strict-max-tokens'],
    },
    createdAt: Math.floor(Date.now() / 1000),
  };
  const http: HttpOptions = {
    prefixCacheScope: config['prefix-cache-scope'] ?? (config['api-keys-file'] ? 'key' : 'shared'),
    corsOrigins:
      config['cors-origins'] === 'none'
        ? []
        : config['cors-origins']
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean),
    keepAliveMs: config['keep-alive'] * 1000,
    bodyLimit: config['body-limit'],
    requestTimeoutMs: Math.round(config['request-timeout'] * 1000),
    headersTimeoutMs: Math.round(config['headers-timeout'] * 1000),
    idleTimeoutMs: Math.round(config['idle-timeout'] * 1000),
    streamBufferLimit: config['stream-buffer-limit'],
    ui: !config['no-ui'],
  };
  if (config['log-prompts']) engine.on('prompt', (prompt: string) => log.debug({ prompt }, 'rendered prompt'));
  const drain = new Drain();
  const app = await buildApp(ctx, http, metrics, drain, { keys, limiter }, log);
  let address: string;
  try {
    address = await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await engine.close();
    await codec.close();
    keys.close();
    throw new AppError(500, 'server_error', `cannot listen on ${config.host}:${config.port}: ${(err as Error).message}`);
  }
  const info = engine.info!;
  log.info(
    {
      model: modelName,
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

  let closing: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Stop accepting, give in-flight requests the deadline, then end what is left.
      // At the deadline, requests still running end at the next step boundary with what
      // they generated (finish reason 'abort'): their clients get a normal end, and the
      // HTTP server can then close. The engine is stopped once, after its current step.
      const deadline = setTimeout(() => {
        log.warn('shutdown deadline reached; ending requests still running');
        engine.abortAll();
      }, config['shutdown-timeout'] * 1000);
      deadline.unref();
      // Drain: /health and new requests get 503 + Retry-After at once (load balancers stop
      // sending, clients retry elsewhere) while requests in flight run to their end.
      drain.start();
      // A request that is not generating (a body still trickling in) does not end at the
      // deadline: a few seconds after it, the server closes regardless.
      const grace = new Promise<void>((resolve) => setTimeout(resolve, config['shutdown-timeout'] * 1000 + 5000).unref());
      await Promise.race([drain.idle(), grace]);
      // Connections that finish their last request while we close would otherwise idle
      // until the keep-alive timeout: drop them as they become idle.
      const reaper = setInterval(() => app.server.closeIdleConnections(), 100);
      await app.close();
      clearInterval(reaper);
      clearTimeout(deadline);
      await engine.close();
      await codec.close();
      keys.close();
    })();
    return closing;
  };
  if (opts.installSignalHandlers) {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        log.info(`${sig}: stopping (in-flight requests get ${config['shutdown-timeout']} s)`);
        void close().then(() => process.exit(0));
      });
    }
  }
  return { url: address, close, engine };
}

export async function serveCommand(argv: string[]): Promise<void> {
  const config = parseServeConfig(argv);
  if (!config) return;
  await startServer(config, { installSignalHandlers: true });
  // Keep running until a signal closes the server.
  await new Promise(() => {});
}
