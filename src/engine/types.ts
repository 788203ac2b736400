import type { GrammarRequest } from '../runtime/grammar.js';
import type { SamplingParams, TokenLogprob } from '../runtime/sampler.js';
import type { GrammarStats } from './grammar_service.js';
import type { PrefixCacheStats } from './prefix_cache.js';

// The serving layer takes these through the engine's public types, never from runtime/ itself.
export type { GrammarRequest, GrammarSpec } from '../runtime/grammar.js';
export { DEFAULT_SAMPLING, type SamplingParams, samplingDefaults, type TokenLogprob } from '../runtime/sampler.js';

/** A generation request as the engine takes it: plain data, sent to the worker. */
export interface GenerateRequest {
  /** Unique per request; events and aborts refer to it. */
  requestId: string;
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  /** Token ids that end generation (the model's EOS ids unless ignoreEos), plus any the client gave. */
  stopTokenIds: number[];
  stop: string[];
  /** The stop string that ends the text stays at its end (vLLM's include_stop_str_in_output). */
  includeStopStr?: boolean;
  ignoreEos: boolean;
  skipSpecialTokens: boolean;
  /** Structured output: every token keeps the output a prefix of what the grammar accepts. */
  grammar?: GrammarRequest | null;
  /** The grammar holds only after this token (the end of a thinking block); null: from the start. */
  grammarAfter?: number | null;
  /**
   * A bound on thinking: after `tokens` generated tokens with no `endId` (</think>) among
   * them, the engine writes `transition` (a short closing sentence ending with </think>)
   * instead of sampling, and the model answers after it. Absent: thinking is not bounded.
   */
  thinkingBudget?: { tokens: number; endId: number; transition: number[] } | null;
  /**
   * Log-probabilities of the prompt's own tokens (echo with logprobs), with this many top
   * alternatives each; absent or null for none. With maxTokens 0 the prompt is only run.
   */
  promptLogprobs?: number | null;
  /**
   * With maxTokens 0: the prompt's last position's output, on the request's first event:
   * the whole row ('row': an embedding model's hidden state) or the values at these
   * indices (a reranker's "yes" / "no" logits). Absent or null: none.
   */
  promptOutput?: 'row' | number[] | null;
  /**
   * The prefix cache's scope for this request (the key's scope and the request's
   * cache_salt, src/serving/cache_scope.ts): its blocks are shared only with requests of
   * the same salt. Absent or null: the shared scope.
   */
  cacheSalt?: string | null;
  /** Who sent it (an API key's name) and that key's limits; absent: no key, no limits. */
  tenant?: TenantLimits | null;
}

/** An API key's name and its bounds in the engine (src/http/api_keys.ts reads them from the keys file). */
export interface TenantLimits {
  name: string;
  /** Of its requests, at most this many run in the batch at once (null: no bound). */
  maxConcurrent: number | null;
  /** Of its requests, at most this many wait for a batch slot (null: only the server's --max-queue). */
  maxQueued: number | null;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'error';

export interface RequestMetrics {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  /** Milliseconds from arrival to admission, to first token, and total. */
  queueMs: number;
  firstTokenMs: number;
  totalMs: number;
  preemptions: number;
}

/** What one step produced for one request. */
export interface EngineEvent {
  requestId: string;
  tokenIds: number[];
  /** Text completed by these tokens (stop strings already cut). */
  text: string;
  logprobs: TokenLogprob[] | null;
  /**
   * On a request's first event when it asked for promptLogprobs: one entry per prompt
   * token, the first null (nothing precedes it).
   */
  promptLogprobs?: Array<TokenLogprob | null>;
  /** What `promptOutput` asked for, on the first event of a prompt-only request. */
  promptOutput?: Float32Array;
  /** Prompt tokens served from the prefix cache, on every token's event (known once the prompt was admitted). */
  cachedTokens?: number;
  finishReason: FinishReason | null;
  /** The stop string or token id that ended generation, as vLLM reports it. */
  stopReason: string | number | null;
  metrics: RequestMetrics | null;
  /** Set when finishReason is 'error': a fault that ended this request. */
  error: { message: string; status: number; type: string; code: string | null } | null;
}

export interface EngineStats {
  running: number;
  waiting: number;
  kvUsedTokens: number;
  kvBudgetTokens: number;
  kvBytes: number;
  promptTokensTotal: number;
  generationTokensTotal: number;
  /** Prompt tokens computed by warm-ups of conversations' next turns (EngineCore.warm). */
  warmedTokensTotal: number;
  requestsFinished: number;
  steps: number;
  /** The grammar engine, once a structured request started it. */
  grammar: GrammarStats | null;
  /** Prefix caching, when on. */
  prefixCache: PrefixCacheStats | null;
}

export interface EngineLimits {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  maxQueue: number;
  maxModelLen: number;
  kvBudgetTokens: number;
}

/** What the worker reports once the model is loaded. */
export interface EngineInfo {
  modelDir: string;
  layout: string;
  dtype: string;
  device: 'cpu' | 'cuda';
  deviceNote: string | null;
  /** The note is a warning: CUDA was tried and failed. */
  deviceNoteIsWarning: boolean;
  vocabSize: number;
  /** Values in an embedding model's vector. */
  hiddenSize: number;
  /** What the export serves (manifest `task`): an `embed` engine's rows are hidden states, not logits. */
  task: 'chat' | 'embed' | 'rerank';
  limits: EngineLimits;
  /** What the model takes: its weights (the export's files) and the KV cache budget, in bytes. */
  memory: { weightBytes: number; kvBytes: number };
  eosTokenIds: number[];
  /** KV cache and prefix-cache bytes written at start (--kv-cache-prefault), 0 without it. */
  kvPrefaultedBytes: number;
  /** Prefix caching's block size and memory bound; null when it is off (and why, in `prefixCacheNote`). */
  prefixCache: {
    blockTokens: number;
    capacityBytes: number;
    /** The disk tier, when on: its directory, what it held at start, its bound, and whether it can write. */
    disk: { dir: string; blocks: number; bytes: number; capacityBytes: number; degraded: boolean } | null;
  } | null;
  prefixCacheNote: string | null;
  /** Why max_model_len is below what was asked (the KV budget), or null. */
  limitsNote: string | null;
}
