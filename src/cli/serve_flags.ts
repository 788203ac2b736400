import { z } from 'zod';
import type { ReasoningEffortBudgets } from '../serving/context.js';
import { type ConfigOf, type Flags, formatHelp, parseCommand, seconds, size, wholeNumber } from './flags.js';

// The serve command's settings, each declared once: flag, environment variable, default, validation and help (src/cli/flags.ts).

const EFFORT_BUDGETS = 'minimal=256,low=1024,medium=4096,high=16384';
const effortBudgets = (text: string) => Object.fromEntries(text.split(',').map((pair) => [pair.split('=')[0], Number(pair.split('=')[1])]));

export const SERVE_FLAGS = {
  model: {
    type: 'string',
    env: 'QWEN3_SERVE_MODEL',
    defaultText: 'demo model',
    help: 'Export directory, Hugging Face checkpoint directory, or Hub repo id (`org/name`). Repeat it to serve several models, each as `alias=path-or-id` or bare (named after its directory or repo); see docs/models.md',
    multiple: true,
    schema: z.array(z.string().min(1)).optional(),
  },
  'models-config': {
    type: 'string',
    env: 'QWEN3_SERVE_MODELS_CONFIG',
    help: 'A YAML file of models to serve, each with its own settings (docs/models.md); with `--model`, both sets are served',
    schema: z.string().min(1).optional(),
  },
  'model-idle-unload': {
    type: 'string',
    env: 'QWEN3_SERVE_MODEL_IDLE_UNLOAD',
    defaultText: 'never',
    help: 'With several models: unload a model no request used for this many seconds (it loads again when asked for)',
    schema: seconds(1, 365 * 86400).optional(),
  },
  'models-memory': {
    type: 'string',
    env: 'QWEN3_SERVE_MODELS_MEMORY',
    defaultText: 'no bound',
    help: 'With several models: memory the loaded models may take together (weights and KV cache, e.g. `8GiB`); the least recently used idle model is unloaded to load another, and a request that cannot be fitted gets 503 with `Retry-After`',
    schema: size(false).optional(),
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
  'api-keys-file': {
    type: 'string',
    env: 'QWEN3_SERVE_API_KEYS_FILE',
    help: 'API keys in a JSON file, each with a name, the key or its SHA-256, and optional limits (`max_concurrent`, `max_queued`, `tokens_per_minute`); read again within a second of any change, so keys are added, revoked and rotated without a restart (format: docs/security.md)',
    schema: z.string().min(1).optional(),
  },
  'prefix-cache-scope': {
    type: 'string',
    env: 'QWEN3_SERVE_PREFIX_CACHE_SCOPE',
    defaultText: '`key` with `--api-keys-file`, else `shared`',
    help: "Which requests share prefix cache blocks: `key` (only requests of the same API key, so no key can time another's prompts) or `shared` (all); a request's `cache_salt` narrows it further either way",
    schema: z.enum(['shared', 'key']).optional(),
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
  'kv-dtype': {
    type: 'string',
    env: 'QWEN3_SERVE_KV_DTYPE',
    defaultText: 'fp16 with fp16 or int4 weights, fp32 with fp32',
    help: 'KV cache type when exporting a checkpoint (fast layout): `fp16`, `fp32` (twice the memory per token; on the CPU it decodes long contexts faster, docs/performance.md), `int8` (CPU, with fp32 or int4 weights)',
    schema: z.enum(['fp16', 'fp32', 'int8']).optional(),
  },
  layout: {
    type: 'string',
    env: 'QWEN3_SERVE_LAYOUT',
    default: 'fast',
    help: 'Graph layout when exporting a checkpoint: `fast`, `standard`',
    schema: z.enum(['fast', 'standard']),
  },
  task: {
    type: 'string',
    env: 'QWEN3_SERVE_TASK',
    default: 'auto',
    help: "What the model serves: `chat`, `embed` (`/v1/embeddings`), `rerank` (`/v1/rerank`); `auto` reads it from the checkpoint (sentence-transformers' `modules.json`: embed; the model card's `pipeline_tag: text-ranking`: rerank; else chat)",
    schema: z.enum(['auto', 'chat', 'embed', 'rerank']),
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
  'prefix-cache-dir': {
    type: 'string',
    env: 'QWEN3_SERVE_PREFIX_CACHE_DIR',
    defaultText: 'none (memory only)',
    help: "A directory for the prefix cache's tier below memory: every cached prompt block is also written there (in the background; the model never waits for the disk), and at start the server serves the blocks it finds, so a restart, a crash or a new replica on the same volume does not compute long system prompts and tool lists again. Blocks are used only by the exact export, dtype, KV layout and chunk grid that wrote them, checked by checksum (a torn or edited file is deleted, never served); a full or read-only disk turns writes off with a warning",
    schema: z.string().min(1).optional(),
  },
  'prefix-cache-disk': {
    type: 'string',
    env: 'QWEN3_SERVE_PREFIX_CACHE_DISK',
    default: '10GiB',
    help: 'Bytes the `--prefix-cache-dir` files may take; the least recently used blocks are deleted first',
    schema: size(false),
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
    help: "Thinking budgets in tokens for `reasoning_effort` levels (`none` turns thinking off), capped so thinking takes at most 3/4 of the request's `max_tokens`; a request's `thinking_token_budget` overrides them (uncapped)",
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
    help: 'Largest request body (larger: 413, at once when its Content-Length says so; the body is then read and dropped up to a bound); bodies nested more than 128 levels are a 400',
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
  'shutdown-delay': {
    type: 'string',
    env: 'QWEN3_SERVE_SHUTDOWN_DELAY',
    default: '0',
    help: 'On SIGTERM/SIGINT, keep the port open and `/health` at 503 for at least this many seconds, even with nothing running, so that a load balancer health-checking the server sees the drain before connections are refused (HAProxy, Nginx; Kubernetes has `preStop` for this)',
    schema: wholeNumber(0, 600),
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
