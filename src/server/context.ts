import type { Engine } from '../engine/engine.js';
import type { GenerationConfig } from '../model/generation_config.js';
import type { ChatTemplate } from '../text/chat_template.js';
import type { QwenTokenizer } from '../text/tokenizer.js';
import type { OffThreadTokenizer } from '../text/offthread_tokenizer.js';
import type { ServerMetrics } from './metrics.js';

export type ReasoningField = 'reasoning_content' | 'reasoning' | 'both';

export interface ServerOptions {
  /** The model id clients name in requests and see in /v1/models. */
  modelName: string;
  apiKey: string | null;
  /** Allowed CORS origins; ['*'] for any, [] to disable CORS. */
  corsOrigins: string[];
  reasoningField: ReasoningField;
  /** Thinking on unless a request turns it off. */
  defaultThinking: boolean;
  /** Keep-alive comment interval while a streamed request waits for its first token. */
  keepAliveMs: number;
  bodyLimit: number;
  /** Milliseconds to receive a whole request, its headers, and between requests on a kept-alive connection. */
  requestTimeoutMs: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Bytes of a stream a client may leave unread before the request is aborted. */
  streamBufferLimit: number;
  /** Log prompt text at debug level (off: prompts never reach the logs). */
  logPrompts: boolean;
}

/** What every route needs, built once at start. */
export interface ServingContext {
  engine: Engine;
  tokenizer: QwenTokenizer;
  /** Encodes and decodes long texts off the HTTP thread: use it for anything a client sent. */
  codec: OffThreadTokenizer;
  template: ChatTemplate;
  generation: GenerationConfig;
  metrics: ServerMetrics;
  options: ServerOptions;
  /** Unix seconds the model was loaded (for `created`). */
  createdAt: number;
}
