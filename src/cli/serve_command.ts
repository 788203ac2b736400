import { availableParallelism } from 'node:os';
import { pino } from 'pino';
import { Engine } from '../engine/engine.js';
import { AppError, ConfigError } from '../errors.js';
import { readManifest } from '../export/manifest.js';
import { DEMO_NAME, defaultCacheDir, resolveExportTarget, resolveModel } from '../export/model_source.js';
import { buildApp } from '../http/app.js';
import { Drain } from '../http/drain.js';
import { ServerMetrics } from '../http/metrics.js';
import type { HttpOptions } from '../http/options.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { appendedSpecialToken, type ModelTask } from '../model/task.js';
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
    ...(config.task !== 'auto' ? { task: config.task } : {}),
  });
  const task = servedTask(config.task, readManifest(resolved.exportDir).task, resolved.exportDir);
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
  const ctx: ServingContext = {
    engine,
    tokenizer,
    codec,
    template: ChatTemplate.fromTokenizerConfig(files.config),
    generation: readGenerationConfig(resolved.exportDir),
    observe: (m, reason) => metrics.observe(m, reason),
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
    task,
    inputEndToken: task === 'embed' ? appendedSpecialToken(files.tokenizer) : null,
  };
  const http: HttpOptions = {
    apiKey: config['api-key'] ?? null,
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
  const app = await buildApp(ctx, http, metrics, drain, log);
  let address: string;
  try {
    address = await app.listen({ host: config.host, port: config.port });
  } catch (err) {
    await engine.close();
    await codec.close();
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
      kv_budget_tokens: info.limits.kvBudgetTokens,
      kv_cache_prefaulted_mib: Math.round(info.kvPrefaultedBytes / 2 ** 20),
      prefix_cache: info.prefixCache
        ? { block_tokens: info.prefixCache.blockTokens, memory_mib: Math.round(info.prefixCache.capacityBytes / 2 ** 20) }
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

/** The task a model is served for: the flag's, which an export must have been made for when it is `embed`. */
function servedTask(flag: ServeConfig['task'], exported: ModelTask, dir: string): ModelTask {
  if (flag === 'auto') return exported;
  if ((flag === 'embed') !== (exported === 'embed'))
    throw new ConfigError(
      `--task ${flag}: ${dir} was exported ${exported === 'embed' ? 'as an embedding model' : 'with a language-model head'}; serve its checkpoint with --task ${flag} to export it for that.`,
    );
  return flag;
}

export async function serveCommand(argv: string[]): Promise<void> {
  const config = parseServeConfig(argv);
  if (!config) return;
  await startServer(config, { installSignalHandlers: true });
  // Keep running until a signal closes the server.
  await new Promise(() => {});
}
