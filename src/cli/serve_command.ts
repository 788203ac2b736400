import { availableParallelism } from 'node:os';
import { pino } from 'pino';
import { z } from 'zod';
import { Engine } from '../engine/engine.js';
import { AppError } from '../errors.js';
import { DEMO_NAME, defaultCacheDir, resolveExportTarget, resolveModel } from '../export/model_source.js';
import { buildApp } from '../http/app.js';
import { Drain } from '../http/drain.js';
import { ServerMetrics } from '../http/metrics.js';
import type { HttpOptions } from '../http/options.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { cudaUsable } from '../runtime/session.js';
import type { ReasoningEffortBudgets, ServingContext } from '../serving/context.js';
import { ReasoningSeal } from '../serving/reasoning_seal.js';
import { ResponseStore } from '../serving/response_store.js';
import { ChatTemplate } from '../text/chat_template.js';
import { OffThreadTokenizer } from '../text/offthread_tokenizer.js';
import { QwenTokenizer, readTokenizerFiles } from '../text/tokenizer.js';
import { createProgress } from '../util/progress.js';
import { type ConfigOf, type Flags, formatHelp, parseCommand, seconds, size, wholeNumber } from './flags.js';

const EFFORT_BUDGETS = 'minimal=256,low=1024,medium=4096,high=16384';
const effortBudgets = (text: string) => Object.fromEntries(text.split(',').map((pair) => [pair.split('=')[0], Number(pair.split('=')[1])]));

export const SERVE_FLAGS = {
  model: {
    type: 'string',
    env: 'QWEN3_SERVE_MODEL',
    defaultText: 'demo model',
    help: 'Export directory, Hugging Face checkpoint directory, or Hub repo id (`org/name`)',
    schema: z.string().min(1).optional(),
  },
  host: { type: 'string', env: 'QWEN3_SERVE_HOST', default: '127.0.0.1', help: 'Address to listen on', schema: z.string().min(1) },
  port: { type: 'string', env: 'QWEN3_SERVE_PORT', default: '8000', help: 'Port to listen on', schema: wholeNumber(0, 65535) },
  'served-model-name': {
    type: 'string',
    env: 'QWEN3_SERVE_SERVED_MODEL_NAME',
    defaultText: 'directory name',
    help: 'Model id in the API',
    schema: z.string().min(1).max(256).optional(),
  },
  'no-ui': { type: 'boolean', env: 'QWEN3_SERVE_NO_UI', help: 'Do not serve the chat page at `/`', schema: z.boolean() },
  'api-key': {
    type: 'string',
    env: 'QWEN3_SERVE_API_KEY',
    help: 'Require this Bearer token on `/v1/*`, `/tokenize`, `/detokenize` (`/health` and `/metrics` stay open)',
    schema: z.string().min(1).optional(),
  },
  device: {
    type: 'string',
    env: 'QWEN3_SERVE_DEVICE',
    default: 'auto',
    help: "`auto`: CUDA when it can run here (without `--dtype`, a checkpoint is then exported in fp16 for the GPU) and the export can run there (fp16/int4 exports, the standard layout) and onnxruntime-node's CUDA provider is installed (`ONNXRUNTIME_NODE_INSTALL=cuda12`, the GPU image), falling back to the CPU if it fails to load; the start log says which and why. `cuda` (fails if CUDA cannot run), `cpu`",
    schema: z.enum(['auto', 'cuda', 'cpu']),
  },
  threads: {
    type: 'string',
    env: 'QWEN3_SERVE_THREADS',
    defaultText: 'all cores',
    help: 'ONNX Runtime intra-op threads',
    schema: wholeNumber(1, 1024).optional(),
  },
  dtype: {
    type: 'string',
    env: 'QWEN3_SERVE_DTYPE',
    defaultText: 'fp32 on CPU, fp16 on CUDA',
    help: 'Weights when exporting a checkpoint: `fp32`, `fp16`, `int4`',
    schema: z.enum(['fp32', 'fp16', 'int4']).optional(),
  },
  layout: {
    type: 'string',
    env: 'QWEN3_SERVE_LAYOUT',
    default: 'fast',
    help: 'Graph layout when exporting a checkpoint: `fast`, `standard`',
    schema: z.enum(['fast', 'standard']),
  },
  'cache-dir': {
    type: 'string',
    env: 'QWEN3_SERVE_CACHE',
    defaultText: '`~/.cache/qwen3-serve`',
    help: 'Exports, Hub downloads and the demo model',
    schema: z.string().min(1).optional(),
  },
  'max-model-len': {
    type: 'string',
    env: 'QWEN3_SERVE_MAX_MODEL_LEN',
    defaultText: "the model's `max_position_embeddings`",
    help: 'Longest prompt + completion',
    schema: wholeNumber(16, 10_000_000).optional(),
  },
  'max-num-seqs': {
    type: 'string',
    env: 'QWEN3_SERVE_MAX_NUM_SEQS',
    default: '16',
    help: 'Requests in the running batch',
    schema: wholeNumber(1, 1024),
  },
  'max-num-batched-tokens': {
    type: 'string',
    env: 'QWEN3_SERVE_MAX_NUM_BATCHED_TOKENS',
    defaultText: '64 on CPU, 512 on CUDA',
    help: "Most prompt tokens per step (a prefill chunk, which also ends where a system, user or tool message starts), and so the prefix cache's largest block: on CPU 64-token chunks prefill faster than 32 or 128 under load, and short chunks keep running streams from stalling while a prompt joins",
    schema: wholeNumber(16, 1_000_000).optional(),
  },
  'max-queue': {
    type: 'string',
    env: 'QWEN3_SERVE_MAX_QUEUE',
    default: '128',
    help: 'Waiting requests; beyond it, 429',
    schema: wholeNumber(0, 1_000_000),
  },
  'kv-cache-memory': {
    type: 'string',
    env: 'QWEN3_SERVE_KV_CACHE_MEMORY',
    default: '0.25',
    help: 'KV cache budget: bytes (`2GiB`) or a fraction of free memory',
    schema: size(true),
  },
  'no-prefix-caching': {
    type: 'boolean',
    env: 'QWEN3_SERVE_NO_PREFIX_CACHING',
    help: "Turn prefix caching off: by default a prompt that begins with tokens an earlier or running request already computed (a conversation's history, a shared system prompt or tool list) reuses their keys and values, in blocks of one prefill chunk, with bit-identical results",
    schema: z.boolean(),
  },
  'no-warm-next-turn': {
    type: 'boolean',
    env: 'QWEN3_SERVE_NO_WARM_NEXT_TURN',
    help: "Do not prefill a chat's next turn ahead: by default, once a chat answer ends and the engine has nothing else to do, it computes the prefix cache blocks of the conversation as its next prompt will render it (the answer included, which the chat template renders at other positions and without its thinking), so the next turn computes only its new message; a request that arrives meanwhile waits at most for the chunk in flight",
    schema: z.boolean(),
  },
  'prefix-cache-memory': {
    type: 'string',
    env: 'QWEN3_SERVE_PREFIX_CACHE_MEMORY',
    default: '0.1',
    help: 'Memory for cached prompt blocks, on top of the KV budget: bytes (`1GiB`) or a fraction of free memory; the least recently used blocks go first when it is full',
    schema: size(true),
  },
  'kv-cache-prefault': {
    type: 'boolean',
    env: 'QWEN3_SERVE_KV_CACHE_PREFAULT',
    help: "Write the whole KV budget (and the prefix cache's memory) at start, as vLLM preallocates its cache: resident memory is the budget from the start, and no step waits for the OS to map fresh pages, and prompts prefill in a staging buffer of their own so they never slow the running streams (fast layout; see docs/architecture.md)",
    schema: z.boolean(),
  },
  'json-whitespace': {
    type: 'string',
    env: 'QWEN3_SERVE_JSON_WHITESPACE',
    default: 'compact',
    help: "Structured JSON output: `compact` (one line, `, ` and `: `, as Qwen3 writes tool calls) or `any` (any whitespace between tokens, vLLM's default; small models may loop on it)",
    schema: z.enum(['compact', 'any']),
  },
  'reasoning-field': {
    type: 'string',
    env: 'QWEN3_SERVE_REASONING_FIELD',
    default: 'reasoning_content',
    help: '`reasoning_content`, `reasoning` or `both`',
    schema: z.enum(['reasoning_content', 'reasoning', 'both']),
  },
  'responses-store': {
    type: 'string',
    env: 'QWEN3_SERVE_RESPONSES_STORE',
    default: '1000',
    help: 'Responses API results kept for `previous_response_id`, retrieve and delete (in memory; the oldest is dropped first, then its id is a 404; 0 stores none)',
    schema: wholeNumber(0, 1_000_000),
  },
  'reasoning-secret': {
    type: 'string',
    env: 'QWEN3_SERVE_REASONING_SECRET',
    defaultText: 'a random key per process',
    help: "Key for the Responses API's `encrypted_content` (reasoning a stateless client such as Codex sends back, sealed with AES-256-GCM): give replicas behind one address the same secret so any of them can open another's; a blob that does not open is ignored",
    schema: z.string().min(16, 'use at least 16 characters').optional(),
  },
  'reasoning-effort-budgets': {
    type: 'string',
    env: 'QWEN3_SERVE_REASONING_EFFORT_BUDGETS',
    default: EFFORT_BUDGETS,
    help: "Thinking budgets in tokens for `reasoning_effort` levels (`none` turns thinking off); a request's `thinking_token_budget` overrides them",
    schema: z
      .string()
      .regex(/^(minimal|low|medium|high)=\d+(,(minimal|low|medium|high)=\d+)*$/, 'expected level=tokens pairs, such as low=1024,high=16384')
      // Levels not named keep their default.
      .transform((text) => ({ ...effortBudgets(EFFORT_BUDGETS), ...effortBudgets(text) }) as ReasoningEffortBudgets),
  },
  'strict-max-tokens': {
    type: 'boolean',
    env: 'QWEN3_SERVE_STRICT_MAX_TOKENS',
    help: "Refuse (400, as OpenAI's API does) a request whose `max_tokens` / `max_output_tokens` is more than the context leaves after its prompt; by default it is capped to what is left, and the answer ends with `length` / `max_tokens` / `incomplete` if it runs out (agents ask for 32k tokens on any prompt). A prompt that alone fills the context is a 400 either way",
    schema: z.boolean(),
  },
  'default-thinking': {
    type: 'string',
    env: 'QWEN3_SERVE_DEFAULT_THINKING',
    default: 'on',
    help: 'Thinking for requests that do not say',
    schema: z.enum(['on', 'off']),
  },
  'cors-origins': {
    type: 'string',
    env: 'QWEN3_SERVE_CORS_ORIGINS',
    default: '*',
    help: 'Allowed origins, comma-separated; `none` disables CORS',
    schema: z.string(),
  },
  'body-limit': {
    type: 'string',
    env: 'QWEN3_SERVE_BODY_LIMIT',
    default: '4MiB',
    help: 'Largest request body (larger: 413); bodies nested more than 128 levels are a 400',
    schema: size(false),
  },
  'request-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_REQUEST_TIMEOUT',
    default: '60',
    help: 'Seconds a client has to send a whole request, headers and body; then 408 (a trickled body cannot hold a connection)',
    schema: seconds(1, 86_400),
  },
  'headers-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_HEADERS_TIMEOUT',
    default: '20',
    help: 'Seconds a client has to send the request headers; then 408',
    schema: seconds(1, 3600),
  },
  'idle-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_IDLE_TIMEOUT',
    default: '75',
    help: 'Seconds a kept-alive connection may sit idle between requests',
    schema: seconds(1, 3600),
  },
  'stream-buffer-limit': {
    type: 'string',
    env: 'QWEN3_SERVE_STREAM_BUFFER_LIMIT',
    default: '1MiB',
    help: "Bytes of a streamed answer a client may leave unread (beyond the kernel's socket buffers); beyond it the connection is closed and the request aborted, its batch slot freed",
    schema: size(false),
  },
  'tokenize-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_TOKENIZE_TIMEOUT',
    default: '10',
    help: 'Prompts over 8,192 characters are tokenized on a thread of their own, so `/health` and running streams never wait for them; one that takes longer than this many seconds is a 400',
    schema: seconds(0.1, 3600),
  },
  'grammar-compile-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_GRAMMAR_COMPILE_TIMEOUT',
    default: '5',
    help: 'Seconds a structured-output schema or grammar may take to compile (on the grammar thread); slower ones are a 400 naming the bound',
    schema: seconds(0.1, 600),
  },
  'keep-alive': {
    type: 'string',
    env: 'QWEN3_SERVE_KEEP_ALIVE',
    default: '10',
    help: 'Seconds between SSE keep-alive comments while a prompt is prefilled',
    schema: wholeNumber(1, 3600),
  },
  'shutdown-timeout': {
    type: 'string',
    env: 'QWEN3_SERVE_SHUTDOWN_TIMEOUT',
    default: '30',
    help: 'On SIGTERM/SIGINT the server drains: `/health` and new requests get 503 with Retry-After at once (load balancers stop sending, clients retry elsewhere) while requests in flight finish; after this many seconds those still running end at the next step boundary with what they generated (streams close normally), the engine stops after its step, and the process exits 0',
    schema: wholeNumber(0, 3600),
  },
  'metrics-compat': {
    type: 'string',
    env: 'QWEN3_SERVE_METRICS_COMPAT',
    default: 'none',
    help: "Also export every metric under vLLM's `vllm:` names (`vllm`), for dashboards, autoscalers and inference gateways made for vLLM",
    schema: z.enum(['none', 'vllm']),
  },
  'log-level': {
    type: 'string',
    env: 'QWEN3_SERVE_LOG_LEVEL',
    default: 'info',
    help: 'Pino log level',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']),
  },
  'log-prompts': {
    type: 'boolean',
    env: 'QWEN3_SERVE_LOG_PROMPTS',
    help: 'Log rendered prompts at debug level (otherwise prompts never reach the logs)',
    schema: z.boolean(),
  },
} satisfies Flags;

export type ServeConfig = ConfigOf<typeof SERVE_FLAGS>;

export const SERVE_HELP = formatHelp(
  'qwen3-serve serve [options]   (also: npm start -- [options])',
  'Serves a Qwen3 model over an OpenAI-compatible HTTP API. Every option can also be set by its environment variable.',
  SERVE_FLAGS,
);

export function parseServeConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServeConfig | null {
  return parseCommand(SERVE_FLAGS, argv, SERVE_HELP, env);
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

export async function serveCommand(argv: string[]): Promise<void> {
  const config = parseServeConfig(argv);
  if (!config) return;
  await startServer(config, { installSignalHandlers: true });
  // Keep running until a signal closes the server.
  await new Promise(() => {});
}
