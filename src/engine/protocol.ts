import type { JsonWhitespace } from '../runtime/grammar.js';
import type { DeviceChoice } from '../runtime/session.js';
import type { VocabularyData } from '../text/token_vocabulary.js';
import type { EngineEvent, EngineInfo, EngineStats, GenerateRequest } from './types.js';

/** What the worker is started with. */
export interface WorkerOptions {
  modelDir: string;
  /** The tokenizer's vocabulary when the starting thread has read it already; absent, the worker reads it. */
  vocabulary?: VocabularyData;
  device: DeviceChoice;
  threads: number;
  maxNumSeqs: number;
  /** Prefill chunk; null picks by device (see `defaultPrefillChunk` in worker.ts). */
  maxNumBatchedTokens: number | null;
  maxQueue: number;
  maxModelLen: number | null;
  /** Bytes, or a fraction (≤ 1) of free memory at start. */
  kvCacheMemory: number;
  /**
   * Prefix caching: memory for the blocks finished and running prompts leave behind, in
   * bytes or a fraction (≤ 1) of free memory at start; absent or 0, prefix caching is off.
   */
  prefixCacheMemory?: number | null;
  /** The prefix cache's tier below memory: a directory of block files, kept across restarts; absent, memory only. */
  prefixCacheDir?: string | null;
  /** Bytes the disk tier's files may take. */
  prefixCacheDisk?: number;
  /** Write the whole KV budget at start (fast layout), so no step waits for fresh pages. */
  kvCachePrefault?: boolean;
  /** Structured JSON output: one line in Qwen3's own spacing, or any whitespace. */
  jsonWhitespace?: JsonWhitespace;
  /** A grammar compile taking longer is refused (400) and its thread replaced. */
  grammarCompileTimeoutMs?: number;
}

export interface WireError {
  message: string;
  status: number;
  type: string;
  code: string | null;
  param: string | null;
  retryAfter: number | null;
}

/** Main thread → worker. */
export type MainMessage =
  | { type: 'submit'; request: GenerateRequest }
  | { type: 'abort'; requestId: string }
  /** A warm-up for the prefix cache (EngineCore.warm); no answer. */
  | { type: 'warm'; promptIds: number[]; salt: string | null }
  | { type: 'stats'; token: number }
  | { type: 'shutdown' }
  /** Ends every request at the next step boundary (the shutdown deadline). */
  | { type: 'abort-all' };

/** Worker → main thread. */
export type WorkerMessage =
  | { type: 'ready'; info: EngineInfo }
  | { type: 'accepted'; requestId: string }
  | { type: 'events'; events: EngineEvent[] }
  | { type: 'rejected'; requestId: string; error: WireError }
  | { type: 'stats'; token: number; stats: EngineStats }
  | { type: 'fault'; message: string }
  /** Something the operator should know that ended no request (a grammar thread replaced). */
  | { type: 'warning'; message: string }
  /** The engine could not start; `config` when a setting was at fault (the CLI exits 2). */
  | { type: 'failed'; message: string; config: boolean };
