/**
 * The engine's worker thread: it owns the ONNX Runtime session, the KV cache, the
 * scheduler and the samplers, so model runs never block the HTTP thread. It talks to the
 * main thread only in plain messages (see `WorkerMessage` / `MainMessage`).
 */

import { freemem } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { AppError, ConfigError } from '../errors.js';
import { readManifest } from '../export/manifest.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { FastRunner } from '../runtime/fast_runner.js';
import { bytesPerBlock, KvBlockPool } from '../runtime/kv_block_pool.js';
import { kvBudget, memoryBytes } from '../runtime/kv_budget.js';
import { slotsForOne } from '../runtime/kv_cost.js';
import { availableBytes, checkFits, weightBytes } from '../runtime/memory_plan.js';
import type { ModelRunner } from '../runtime/model_runner.js';
import { createSession } from '../runtime/session.js';
import { StagedFastRunner } from '../runtime/staged_runner.js';
import { StandardRunner } from '../runtime/standard_runner.js';
import { VocabularyTable } from '../text/token_vocabulary.js';
import { messageGrid } from './chunk_grid.js';
import { DiskBlockStore } from './disk_block_store.js';
import { EngineCore } from './engine_core.js';
import { blockFingerprint } from './export_fingerprint.js';
import { GrammarService } from './grammar_service.js';
import type { MainMessage, WireError, WorkerMessage, WorkerOptions } from './protocol.js';
import type { EngineInfo, EngineLimits } from './types.js';

const port = parentPort!;
const options = workerData as WorkerOptions;

function post(message: WorkerMessage): void {
  port.postMessage(message);
}

/**
 * Prefill chunk when the operator sets none. On CPU a step's length grows with the chunk
 * and every running stream waits for the whole step, while prefill speed peaks at 64–128
 * tokens: 64 was the fastest under load (docs/performance.md). A GPU needs large chunks
 * to be busy.
 */
function defaultPrefillChunk(device: 'cuda' | 'cpu'): number {
  return device === 'cuda' ? 512 : 64;
}

function resolveLimits(
  manifest: ReturnType<typeof readManifest>,
  device: 'cuda' | 'cpu',
): { limits: EngineLimits; kvBytes: number; note: string | null } {
  const positions = manifest.config.maxPositionEmbeddings;
  // Positions past the checkpoint's own are untrained: asking for them is a mistake to report, not to shrink quietly.
  if (options.maxModelLen !== null && options.maxModelLen > positions) {
    throw new ConfigError(
      `--max-model-len ${options.maxModelLen} is more than this model's ${positions} positions (max_position_embeddings); use at most ${positions}.`,
    );
  }
  const longest = options.maxModelLen ?? positions;
  // Each layout's own cost of one sequence: the fast layout's capacity steps, the standard one's growth.
  const budget = kvBudget(manifest, options.kvCacheMemory, freemem(), longest, slotsForOne(manifest.layout));
  const note =
    budget.maxModelLen < longest
      ? `max_model_len lowered from ${longest} to ${budget.maxModelLen} tokens: the KV cache budget (--kv-cache-memory, ${Math.round(budget.bytes / 2 ** 20)} MiB) holds no longer sequence; raise it for the full context`
      : null;
  return {
    limits: {
      maxNumSeqs: options.maxNumSeqs,
      maxNumBatchedTokens: options.maxNumBatchedTokens ?? defaultPrefillChunk(device),
      maxQueue: options.maxQueue,
      maxModelLen: budget.maxModelLen,
      kvBudgetTokens: budget.kvBudgetTokens,
    },
    kvBytes: budget.bytes,
    note,
  };
}

/** The prefix cache's pool the options ask for: blocks of one prefill chunk, bounded by --prefix-cache-memory. */
function createPrefixCachePool(runner: ModelRunner, chunk: number): { pool: KvBlockPool | null; note: string | null } {
  const memory = options.prefixCacheMemory ?? 0;
  if (memory <= 0) return { pool: null, note: 'off' };
  const layout = runner.blockLayout(chunk);
  const bytes = memoryBytes(memory, freemem());
  const slots = Math.floor(bytes / bytesPerBlock(layout));
  if (slots < 1)
    return {
      pool: null,
      note: `off: --prefix-cache-memory gives ${bytes} bytes, less than one ${chunk}-token block (${bytesPerBlock(layout)} bytes)`,
    };
  return { pool: new KvBlockPool(layout, slots), note: null };
}

/** The prefix cache's disk tier the options ask for, over `pool`'s blocks (see disk_block_store.ts). */
function openDiskTier(
  manifest: ReturnType<typeof readManifest>,
  device: string,
  pool: KvBlockPool | null,
  gridSignature: string,
  wake: () => void,
): DiskBlockStore | null {
  const dir = options.prefixCacheDir;
  if (!dir || !pool) return null;
  const fingerprint = blockFingerprint({
    modelDir: options.modelDir,
    manifest,
    device,
    threads: options.threads,
    layout: pool.layout,
    gridSignature,
  });
  return DiskBlockStore.open({
    dir,
    capacityBytes: options.prefixCacheDisk ?? 0,
    fingerprint,
    payloadBytes: pool.bytesPerBlock,
    warn: (message) => post({ type: 'warning', message }),
    wake,
  });
}

async function start(wake: () => void): Promise<EngineCore> {
  const manifest = readManifest(options.modelDir);
  const weights = weightBytes(options.modelDir, manifest);
  // Before the session reads a byte: a model that cannot fit is an error naming the numbers, not a swapping or killed process.
  checkFits(weights, options.kvCacheMemory, availableBytes(), options.device === 'cuda' || manifest.device === 'cuda' ? 'cuda' : 'cpu');
  const { session, device, fallbackReason, cudaFailed } = await createSession(options.modelDir, manifest, {
    device: options.device,
    threads: options.threads,
  });
  const { limits, kvBytes, note: limitsNote } = resolveLimits(manifest, device);
  const fastRunner = () => new FastRunner(session, manifest, limits.maxNumSeqs, limits.maxModelLen, limits.kvBudgetTokens);
  // Prompts prefill apart only when the decoding buffers are prefaulted: otherwise a long
  // prompt moving in grows the decoding buffer into fresh pages all in one step, where
  // growing it chunk by chunk spreads the same page faults over its prefill.
  const fast = manifest.layout !== 'fast' ? null : options.kvCachePrefault ? new StagedFastRunner(fastRunner(), fastRunner()) : fastRunner();
  const runner: ModelRunner = fast ?? new StandardRunner(session, manifest, limits.maxNumSeqs);
  // The standard layout's cache is allocated per step by its contract: nothing to prefault.
  const kvPrefaultedBytes = options.kvCachePrefault && fast ? fast.prefault() : 0;
  const tokenizer = options.vocabulary ? new VocabularyTable(options.vocabulary) : VocabularyTable.fromDir(options.modelDir);
  const generation = readGenerationConfig(options.modelDir);
  const { pool, note: prefixCacheNote } = createPrefixCachePool(runner, limits.maxNumBatchedTokens);
  // With --kv-cache-prefault the prefix cache's pool is written too, for the same reason.
  const poolPrefaultedBytes = options.kvCachePrefault && pool ? pool.prefault() : 0;
  const disk = openDiskTier(manifest, device, pool, messageGrid(tokenizer, limits.maxNumBatchedTokens).signature, wake);
  const core = new EngineCore(runner, tokenizer, limits, {
    prefixCachePool: pool,
    prefixCacheDisk: disk,
    eosTokenIds: generation.eosTokenIds,
    grammars: () =>
      new GrammarService({
        vocabulary: tokenizer.byteLevelVocabulary(manifest.config.vocabSize),
        stopTokenIds: generation.eosTokenIds,
        whitespace: options.jsonWhitespace ?? 'compact',
        compileTimeoutMs: options.grammarCompileTimeoutMs ?? 5000,
        onProgress: wake,
        log: (message) => post({ type: 'warning', message }),
      }),
  });
  const info: EngineInfo = {
    modelDir: options.modelDir,
    layout: manifest.layout,
    dtype: manifest.dtype,
    device,
    deviceNote: fallbackReason,
    deviceNoteIsWarning: cudaFailed,
    vocabSize: manifest.config.vocabSize,
    hiddenSize: manifest.config.hiddenSize,
    task: manifest.task,
    limits,
    memory: { weightBytes: weights, kvBytes },
    eosTokenIds: generation.eosTokenIds,
    kvPrefaultedBytes: kvPrefaultedBytes + poolPrefaultedBytes,
    prefixCache: pool ? { blockTokens: limits.maxNumBatchedTokens, capacityBytes: pool.slots * pool.bytesPerBlock, disk: diskInfo(disk) } : null,
    prefixCacheNote,
    limitsNote,
  };
  post({ type: 'ready', info });
  return core;
}

function diskInfo(disk: DiskBlockStore | null): NonNullable<EngineInfo['prefixCache']>['disk'] {
  if (!disk) return null;
  const { dir, blocks, bytes, capacityBytes, degraded } = disk.stats(0);
  return { dir, blocks, bytes, capacityBytes, degraded };
}

function wireError(err: unknown): WireError {
  const e = err instanceof AppError ? err : new AppError(500, 'server_error', (err as Error).message, { code: 'engine_fault' });
  return { message: e.message, status: e.status, type: e.type, code: e.code, param: e.param, retryAfter: e.retryAfter ?? null };
}

/**
 * Boots the engine, then runs its step loop until asked to stop: a step whenever there is
 * work, sleeping otherwise until a message or a grammar mask wakes it.
 */
async function main(): Promise<void> {
  let wakeUp: (() => void) | null = null;
  const wake = () => wakeUp?.();
  const sleep = (ms?: number) =>
    new Promise<void>((resolve) => {
      wakeUp = resolve;
      if (ms) setTimeout(resolve, ms).unref();
    }).then(() => {
      wakeUp = null;
    });
  const core = await start(wake);
  let stopping = false;
  const flush = () => {
    const events = core.takeEvents();
    if (events.length > 0) post({ type: 'events', events });
  };
  port.on('message', (msg: MainMessage) => {
    switch (msg.type) {
      case 'submit': {
        const { requestId } = msg.request;
        core
          .submit(msg.request)
          .then(
            () => {
              post({ type: 'accepted', requestId });
              flush();
            },
            (err: unknown) => post({ type: 'rejected', requestId, error: wireError(err) }),
          )
          .finally(wake);
        break;
      }
      case 'abort':
        core.abort(msg.requestId);
        flush();
        break;
      case 'warm':
        core.warm(msg.promptIds, msg.salt);
        break;
      case 'stats':
        post({ type: 'stats', token: msg.token, stats: core.stats() });
        break;
      case 'shutdown':
        stopping = true;
        break;
      case 'abort-all':
        core.abortAll();
        flush();
        break;
    }
    wake();
  });
  while (!stopping) {
    if (!core.hasWork()) {
      await sleep();
      continue;
    }
    let moved = true;
    try {
      moved = await core.step();
    } catch (err) {
      // A model fault ends the requests in flight, not the engine.
      post({ type: 'events', events: core.failAll(`model step failed: ${(err as Error).message}`) });
      post({ type: 'fault', message: (err as Error).stack ?? String(err) });
    }
    flush();
    // Every running sequence waits for its grammar's mask: sleep until one arrives.
    if (!moved) await sleep(100);
    // Let queued messages (new requests, aborts) in between steps.
    else await new Promise((resolve) => setImmediate(resolve));
  }
  await core.close();
  port.close();
}

main().catch((err: unknown) => {
  post({ type: 'failed', message: err instanceof Error ? err.message : String(err), config: err instanceof ConfigError });
  process.exit(1);
});
