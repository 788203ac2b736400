import type { Engine } from '../engine/engine.js';
import type { FinishReason, RequestMetrics } from '../engine/types.js';
import type { GenerationConfig } from '../model/generation_config.js';
import type { ModelTask } from '../model/task.js';
import type { ChatTemplate } from '../text/chat_template.js';
import type { OffThreadTokenizer } from '../text/offthread_tokenizer.js';
import type { QwenTokenizer } from '../text/tokenizer.js';
import type { ReasoningSeal } from './reasoning_seal.js';
import type { ResponseStore } from './response_store.js';

export type ReasoningField = 'reasoning_content' | 'reasoning' | 'both';
export type ReasoningEffortBudgets = Record<'minimal' | 'low' | 'medium' | 'high', number>;

/** What the serving and protocol modules need to know of the server's settings. */
export interface ServingOptions {
  /** The model id clients name in requests and see in /v1/models. */
  modelName: string;
  /** Other names requests may give it (a server of several models: docs/models.md). */
  aliases?: string[];
  reasoningField: ReasoningField;
  /** Thinking on unless a request turns it off. */
  defaultThinking: boolean;
  /** Log prompt text at debug level (off: prompts never reach the logs). */
  logPrompts: boolean;
  /** Thinking budgets in tokens for OpenAI's reasoning_effort levels. */
  reasoningEffortBudgets: ReasoningEffortBudgets;
  /** After a chat answer, have the engine prefill the conversation's next prompt while idle (prefix caching). */
  warmNextTurn: boolean;
  /** Refuse a max_tokens larger than the context leaves, instead of capping it. */
  strictMaxTokens: boolean;
}

/** What every serving module needs, built once at start. */
export interface ServingContext {
  engine: Engine;
  tokenizer: QwenTokenizer;
  /** Encodes and decodes long texts off the HTTP thread: use it for anything a client sent. */
  codec: OffThreadTokenizer;
  template: ChatTemplate;
  generation: GenerationConfig;
  /** Called once per finished generation, with the API key's name (the HTTP layer's metrics and per-key limits listen). */
  observe: (metrics: RequestMetrics, reason: FinishReason, key: string | null) => void;
  options: ServingOptions;
  /** Responses kept for previous_response_id, retrieve and delete. */
  responses: ResponseStore;
  /** Seals reasoning for clients that keep no state on the server (Responses' encrypted_content). */
  seal: ReasoningSeal;
  /** Unix seconds the model was loaded (for `created`). */
  createdAt: number;
  /** What the model serves: chat and completions, embeddings (/v1/embeddings), or reranking (/v1/rerank). */
  task: ModelTask;
  /** The token an embedding model's tokenizer appends to every text (Qwen3-Embedding's `<|endoftext|>`), or null. */
  inputEndToken: number | null;
}
