import { availableParallelism } from 'node:os';
import type { pino } from 'pino';
import { Engine } from '../engine/engine.js';
import { ConfigError } from '../errors.js';
import { readManifest } from '../export/manifest.js';
import { defaultCacheDir, type ResolvedModel, resolveExportTarget, resolveModel } from '../export/model_source.js';
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
import { QwenTokenizer } from '../text/tokenizer.js';
import { createProgress } from '../util/progress.js';
import type { ServeConfig } from './serve_flags.js';

/** One model loaded for serving: its context for the protocol modules, its metrics and what was loaded. */
export interface LoadedModel {
  ctx: ServingContext;
  metrics: ServerMetrics;
  resolved: ResolvedModel;
  task: ModelTask;
  close(): Promise<void>;
}

/**
 * Exports the model if needed, starts its engine worker and builds its serving context:
 * `config.model` is one model (the first); `name` overrides its served name; `workerFile`
 * is the module the engine's thread boots (Engine.start's; tests pass one that wraps it).
 */
export async function loadServingModel(config: ServeConfig, log: pino.Logger, name?: string, workerFile?: URL): Promise<LoadedModel> {
  const requestedDevice = config.device;
  const model = config.model?.[0];
  const target = resolveExportTarget(requestedDevice, config.dtype, cudaUsable());
  if (target.note && model !== undefined) log.info(target.note);
  const resolved = await resolveModel({
    model,
    cacheDir: config['cache-dir'] ?? defaultCacheDir(),
    dtype: target.dtype,
    ...(config['kv-dtype'] !== undefined ? { kvDtype: config['kv-dtype'] } : {}),
    layout: config.layout,
    device: target.device,
    progress: createProgress(),
    log: (msg) => log.info(msg),
    ...(config.task !== 'auto' ? { task: config.task } : {}),
  });
  const task = servedTask(config.task, readManifest(resolved.exportDir).task, resolved.exportDir);
  // Read once here: the engine's worker takes the vocabulary from this thread rather than parsing tokenizer.json again.
  const tokenizer = QwenTokenizer.fromDir(resolved.exportDir);
  const { files } = tokenizer;
  const engine = await Engine.start(
    {
      modelDir: resolved.exportDir,
      vocabulary: tokenizer.vocabulary.data(),
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
    workerFile,
  );
  const codec = new OffThreadTokenizer(tokenizer, resolved.exportDir, config['tokenize-timeout'] * 1000);
  codec.start();
  const modelName = name ?? config['served-model-name'] ?? resolved.name;
  const metrics = new ServerMetrics(engine, modelName, config['metrics-compat']);
  const ctx: ServingContext = {
    engine,
    tokenizer,
    codec,
    template: ChatTemplate.fromTokenizerConfig(files.config),
    generation: readGenerationConfig(resolved.exportDir),
    observe: (m, reason, key) => metrics.observe(m, reason, key),
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
  if (config['log-prompts']) engine.on('prompt', (prompt: string) => log.debug({ prompt }, 'rendered prompt'));
  return {
    ctx,
    metrics,
    resolved,
    task,
    close: async () => {
      await engine.close();
      await codec.close();
    },
  };
}

/** The HTTP settings of the serve flags. */
export function httpOptions(config: ServeConfig): HttpOptions {
  return {
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
