import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { pino } from 'pino';
import { AppError } from '../errors.js';
import { Engine } from '../engine/engine.js';
import { DEMO_NAME, defaultCacheDir, resolveModel } from '../engine/model_source.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { buildApp } from '../server/app.js';
import type { ServingContext } from '../server/context.js';
import { ServerMetrics } from '../server/metrics.js';
import { ChatTemplate } from '../text/chat_template.js';
import { QwenTokenizer, readTokenizerFiles } from '../text/tokenizer.js';
import { OffThreadTokenizer } from '../text/offthread_tokenizer.js';
import { createProgress } from '../util/progress.js';
import { formatHelp, parseCommand, type FlagSpec } from './flags.js';

export const SERVE_FLAGS: FlagSpec[] = [
  { name: 'model', type: 'string', env: 'QWEN3_SERVE_MODEL', help: 'Export directory, Hugging Face checkpoint directory, or Hub repo id (org/name); none serves the demo model' },
  { name: 'host', type: 'string', env: 'QWEN3_SERVE_HOST', default: '127.0.0.1', help: 'Address to listen on' },
  { name: 'port', type: 'string', env: 'QWEN3_SERVE_PORT', default: '8000', help: 'Port to listen on' },
  { name: 'served-model-name', type: 'string', env: 'QWEN3_SERVE_SERVED_MODEL_NAME', help: 'Model id in the API (default: the model directory name)' },
  { name: 'api-key', type: 'string', env: 'QWEN3_SERVE_API_KEY', help: 'Require this Bearer token on /v1/* and /tokenize' },
  { name: 'device', type: 'string', env: 'QWEN3_SERVE_DEVICE', default: 'auto', help: 'auto (CUDA if it loads, else CPU), cuda or cpu' },
  { name: 'threads', type: 'string', env: 'QWEN3_SERVE_THREADS', default: 'all cores', help: "ONNX Runtime's intra-op threads" },
  { name: 'dtype', type: 'string', env: 'QWEN3_SERVE_DTYPE', default: 'fp32 on CPU, fp16 on CUDA', help: 'Weights when exporting a checkpoint: fp32, fp16 or int4' },
  { name: 'layout', type: 'string', env: 'QWEN3_SERVE_LAYOUT', default: 'fast', help: 'Graph layout when exporting a checkpoint: fast or standard' },
  { name: 'cache-dir', type: 'string', env: 'QWEN3_SERVE_CACHE', default: '~/.cache/qwen3-serve', help: 'Where exports of checkpoints (and the demo model) are kept' },
  { name: 'max-model-len', type: 'string', env: 'QWEN3_SERVE_MAX_MODEL_LEN', default: "the model's max_position_embeddings", help: 'Longest prompt + completion, in tokens' },
  { name: 'max-num-seqs', type: 'string', env: 'QWEN3_SERVE_MAX_NUM_SEQS', default: '16', help: 'Requests in the running batch at most' },
  { name: 'max-num-batched-tokens', type: 'string', env: 'QWEN3_SERVE_MAX_NUM_BATCHED_TOKENS', default: '32 on CPU, 512 on CUDA', help: 'Prompt tokens per step (prefill chunk size): smaller chunks stall running streams for less time when a prompt joins' },
  { name: 'max-queue', type: 'string', env: 'QWEN3_SERVE_MAX_QUEUE', default: '128', help: 'Waiting requests at most; beyond it requests get 429' },
  { name: 'kv-cache-memory', type: 'string', env: 'QWEN3_SERVE_KV_CACHE_MEMORY', default: '0.25', help: 'KV cache budget: bytes (e.g. 2GiB) or a fraction of free memory' },
  { name: 'kv-cache-prefault', type: 'boolean', env: 'QWEN3_SERVE_KV_CACHE_PREFAULT', help: 'Write the whole KV budget at start (like vLLM preallocating its cache): resident memory is the budget from the start, no step waits for the OS to map fresh pages, and prompts prefill apart so they never slow the running streams' },
  { name: 'json-whitespace', type: 'string', env: 'QWEN3_SERVE_JSON_WHITESPACE', default: 'compact', help: "Structured JSON output: compact (one line, ', ' and ': ' as Qwen3 writes tool calls) or any (any whitespace between tokens, vLLM's default; small models may loop on it)" },
  { name: 'reasoning-field', type: 'string', env: 'QWEN3_SERVE_REASONING_FIELD', default: 'reasoning_content', help: 'Name of the thinking field: reasoning_content, reasoning or both' },
  { name: 'default-thinking', type: 'string', env: 'QWEN3_SERVE_DEFAULT_THINKING', default: 'on', help: 'Qwen3 thinking for requests that do not say: on or off' },
  { name: 'cors-origins', type: 'string', env: 'QWEN3_SERVE_CORS_ORIGINS', default: '*', help: "Comma-separated allowed origins, '*' for any, 'none' to disable CORS" },
  { name: 'body-limit', type: 'string', env: 'QWEN3_SERVE_BODY_LIMIT', default: '4MiB', help: 'Largest request body' },
  { name: 'request-timeout', type: 'string', env: 'QWEN3_SERVE_REQUEST_TIMEOUT', default: '60', help: 'Seconds a client has to send a whole request, headers and body; then 408' },
  { name: 'headers-timeout', type: 'string', env: 'QWEN3_SERVE_HEADERS_TIMEOUT', default: '20', help: 'Seconds a client has to send the request headers; then 408' },
  { name: 'idle-timeout', type: 'string', env: 'QWEN3_SERVE_IDLE_TIMEOUT', default: '75', help: 'Seconds a kept-alive connection may sit idle between requests' },
  { name: 'stream-buffer-limit', type: 'string', env: 'QWEN3_SERVE_STREAM_BUFFER_LIMIT', default: '1MiB', help: 'Bytes of a streamed answer a client may leave unread; beyond it the connection is closed and the request aborted' },
  { name: 'tokenize-timeout', type: 'string', env: 'QWEN3_SERVE_TOKENIZE_TIMEOUT', default: '10', help: 'Seconds a long prompt may take to tokenize (off the HTTP thread); slower ones get 400' },
  { name: 'grammar-compile-timeout', type: 'string', env: 'QWEN3_SERVE_GRAMMAR_COMPILE_TIMEOUT', default: '5', help: 'Seconds a structured-output schema or grammar may take to compile; slower ones get 400' },
  { name: 'keep-alive', type: 'string', env: 'QWEN3_SERVE_KEEP_ALIVE', default: '10', help: 'Seconds between SSE keep-alive comments while a prompt is prefilled' },
  { name: 'shutdown-timeout', type: 'string', env: 'QWEN3_SERVE_SHUTDOWN_TIMEOUT', default: '30', help: 'Seconds in-flight requests get to finish on SIGTERM/SIGINT' },
  { name: 'log-level', type: 'string', env: 'QWEN3_SERVE_LOG_LEVEL', default: 'info', help: 'fatal, error, warn, info, debug or trace' },
  { name: 'log-prompts', type: 'boolean', env: 'QWEN3_SERVE_LOG_PROMPTS', help: 'Log rendered prompts at debug level (off by default: prompts stay out of logs)' },
];

const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };

/** "2GiB", "500MB", "123456", or a fraction like "0.3". */
export function parseSize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return null;
  const unit = UNITS[m[2].toLowerCase()];
  if (unit === undefined) return null;
  return Number(m[1]) * unit;
}

const intFlag = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, 'expected a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

const sizeFlag = (allowFraction: boolean) =>
  z.string().transform((s, c) => {
    const v = parseSize(s);
    if (v === null || v <= 0 || (!allowFraction && v < 1) || (v > 1 && !Number.isInteger(v))) {
      c.addIssue({ code: 'custom', message: allowFraction ? 'expected bytes (e.g. 2GiB) or a fraction of free memory (e.g. 0.3)' : 'expected a size such as 4MiB' });
      return z.NEVER;
    }
    return v;
  });

const secondsFlag = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+(\.\d+)?$/, 'expected seconds, such as 30 or 0.5')
    .transform(Number)
    .pipe(z.number().min(min).max(max));

const serveSchema = z.object({
  model: z.string().min(1).optional(),
  host: z.string().min(1).default('127.0.0.1'),
  port: intFlag(0, 65535).default(8000),
  'served-model-name': z.string().min(1).max(256).optional(),
  'api-key': z.string().min(1).optional(),
  device: z.enum(['auto', 'cuda', 'cpu']).default('auto'),
  threads: intFlag(1, 1024).optional(),
  dtype: z.enum(['fp32', 'fp16', 'int4']).optional(),
  layout: z.enum(['fast', 'standard']).default('fast'),
  'cache-dir': z.string().min(1).optional(),
  'max-model-len': intFlag(16, 10_000_000).optional(),
  'max-num-seqs': intFlag(1, 1024).default(16),
  'max-num-batched-tokens': intFlag(16, 1_000_000).optional(),
  'max-queue': intFlag(0, 1_000_000).default(128),
  'kv-cache-memory': sizeFlag(true).default(0.25),
  'kv-cache-prefault': z.boolean().default(false),
  'json-whitespace': z.enum(['compact', 'any']).default('compact'),
  'reasoning-field': z.enum(['reasoning_content', 'reasoning', 'both']).default('reasoning_content'),
  'default-thinking': z.enum(['on', 'off']).default('on'),
  'cors-origins': z.string().default('*'),
  'body-limit': sizeFlag(false).default(4 * 2 ** 20),
  'request-timeout': secondsFlag(1, 86_400).default(60),
  'headers-timeout': secondsFlag(1, 3600).default(20),
  'idle-timeout': secondsFlag(1, 3600).default(75),
  'stream-buffer-limit': sizeFlag(false).default(2 ** 20),
  'tokenize-timeout': secondsFlag(0.1, 3600).default(10),
  'grammar-compile-timeout': secondsFlag(0.1, 600).default(5),
  'keep-alive': intFlag(1, 3600).default(10),
  'shutdown-timeout': intFlag(0, 3600).default(30),
  'log-level': z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
  'log-prompts': z.boolean().default(false),
});

export type ServeConfig = z.infer<typeof serveSchema>;

export const SERVE_HELP = formatHelp(
  'qwen3-serve serve [options]   (also: npm start -- [options])',
  'Serves a Qwen3 model over an OpenAI-compatible HTTP API. Every option can also be set by its environment variable.',
  SERVE_FLAGS,
);

export function parseServeConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServeConfig | null {
  return parseCommand(SERVE_FLAGS, serveSchema, argv, SERVE_HELP, env);
}

export interface RunningServer {
  url: string;
  close(): Promise<void>;
  engine: Engine;
}

/** Loads the model, starts the engine and listens. Used by the CLI and the end-to-end tests. */
export async function startServer(config: ServeConfig, opts: { logger?: pino.Logger; installSignalHandlers?: boolean } = {}): Promise<RunningServer> {
  const log = opts.logger ?? pino({ level: config['log-level'] });
  const requestedDevice = config.device;
  const dtype = config.dtype ?? (requestedDevice === 'cuda' ? 'fp16' : 'fp32');
  const exportDevice = requestedDevice === 'cuda' || dtype === 'fp16' ? 'cuda' : 'cpu';
  const resolved = await resolveModel({
    model: config.model,
    cacheDir: config['cache-dir'] ?? defaultCacheDir(),
    dtype,
    layout: config.layout,
    device: exportDevice === 'cuda' && dtype === 'fp32' ? 'cpu' : exportDevice,
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
      jsonWhitespace: config['json-whitespace'],
      grammarCompileTimeoutMs: config['grammar-compile-timeout'] * 1000,
    },
    log,
  );
  const files = readTokenizerFiles(resolved.exportDir);
  const tokenizer = new QwenTokenizer(files);
  const codec = new OffThreadTokenizer(tokenizer, resolved.exportDir, config['tokenize-timeout'] * 1000);
  const modelName = config['served-model-name'] ?? resolved.name;
  const ctx: ServingContext = {
    engine,
    tokenizer,
    codec,
    template: ChatTemplate.fromTokenizerConfig(files.config),
    generation: readGenerationConfig(resolved.exportDir),
    metrics: new ServerMetrics(engine, modelName),
    options: {
      modelName,
      apiKey: config['api-key'] ?? null,
      corsOrigins: config['cors-origins'] === 'none' ? [] : config['cors-origins'].split(',').map((s) => s.trim()).filter(Boolean),
      reasoningField: config['reasoning-field'],
      defaultThinking: config['default-thinking'] === 'on',
      keepAliveMs: config['keep-alive'] * 1000,
      bodyLimit: config['body-limit'],
      requestTimeoutMs: Math.round(config['request-timeout'] * 1000),
      headersTimeoutMs: Math.round(config['headers-timeout'] * 1000),
      idleTimeoutMs: Math.round(config['idle-timeout'] * 1000),
      streamBufferLimit: config['stream-buffer-limit'],
      logPrompts: config['log-prompts'],
    },
    createdAt: Math.floor(Date.now() / 1000),
  };
  if (config['log-prompts']) engine.on('prompt', (prompt: string) => log.debug({ prompt }, 'rendered prompt'));
  const app = await buildApp(ctx, log);
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
      export: resolved.exportDir,
      layout: info.layout,
      dtype: info.dtype,
      device: info.device,
      max_model_len: info.limits.maxModelLen,
      kv_cache_tokens: info.limits.kvCacheTokens,
      kv_cache_prefaulted_mib: Math.round(info.kvPrefaultedBytes / 2 ** 20),
    },
    `serving ${modelName} on ${info.device} at ${address}/v1`,
  );
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

export async function serveCommand(argv: string[]): Promise<void> {
  const config = parseServeConfig(argv);
  if (!config) return;
  await startServer(config, { installSignalHandlers: true });
  // Keep running until a signal closes the server.
  await new Promise(() => {});
}
