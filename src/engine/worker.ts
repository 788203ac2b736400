/**
 * The engine's worker thread: it owns the ONNX Runtime session, the KV cache, the
 * scheduler and the samplers, so model runs never block the HTTP thread. It talks to the
 * main thread only in plain messages (see `WorkerMessage` / `MainMessage`).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { freemem } from 'node:os';
import { AppError, ConfigError } from '../errors.js';
import { readManifest } from '../export/manifest.js';
import { createSession } from '../runtime/session.js';
import { FastRunner, CAPACITY_STEP } from '../runtime/fast_runner.js';
import { StagedFastRunner } from '../runtime/staged_runner.js';
import { StandardRunner } from '../runtime/standard_runner.js';
import { BYTES, type ModelRunner } from '../runtime/model_runner.js';
import { GrammarService, type RemoteConstraint } from './grammar_service.js';
import { QwenTokenizer } from '../text/tokenizer.js';
import { readGenerationConfig } from '../model/generation_config.js';
import { EngineCore } from './engine_core.js';
import type { MainMessage, WorkerMessage, WorkerOptions } from './protocol.js';
import type { EngineInfo, EngineLimits, GenerateRequest } from './types.js';

const port = parentPort!;
const options = workerData as WorkerOptions;

function post(message: WorkerMessage): void {
  port.postMessage(message);
}

/** Bytes of KV per token: keys and values, every layer. */
function kvBytesPerToken(m: ReturnType<typeof readManifest>): number {
  const c = m.config;
  // int8 entries carry one float32 scale per token and head.
  const perHead = c.headDim * BYTES[m.kvDtype] + (m.kvDtype === 'int8' ? BYTES.float32 : 0);
  return 2 * c.numLayers * c.numKvHeads * perHead;
}

/**
 * Prefill chunk when the operator sets none. On CPU, prefill speed hardly depends on the
 * chunk (docs/performance.md) while a step's length grows with it, and every running stream waits for the whole step: small chunks
 * bound that stall. A GPU needs large chunks to be busy.
 */
function defaultPrefillChunk(device: 'cuda' | 'cpu'): number {
  return device === 'cuda' ? 512 : 32;
}

function resolveLimits(manifest: ReturnType<typeof readManifest>, device: 'cuda' | 'cpu'): { limits: EngineLimits; kvBudgetBytes: number } {
  const perToken = kvBytesPerToken(manifest);
  const budget = options.kvCacheMemory <= 1 ? Math.floor(freemem() * options.kvCacheMemory) : Math.floor(options.kvCacheMemory);
  let kvSlots = Math.floor(budget / perToken);
  let maxModelLen = Math.min(options.maxModelLen ?? manifest.config.maxPositionEmbeddings, manifest.config.maxPositionEmbeddings);
  // One sequence of the longest allowed length must fit, capacity buckets included.
  const fitsOne = Math.floor(kvSlots / CAPACITY_STEP) * CAPACITY_STEP;
  if (fitsOne < CAPACITY_STEP) {
    throw new ConfigError(`--kv-cache-memory gives ${budget} bytes, less than one ${CAPACITY_STEP}-token block (${perToken * CAPACITY_STEP} bytes) of this model's KV cache.`);
  }
  if (maxModelLen > fitsOne) maxModelLen = fitsOne;
  kvSlots = Math.max(kvSlots, CAPACITY_STEP);
  return {
    limits: {
      maxNumSeqs: options.maxNumSeqs,
      maxNumBatchedTokens: options.maxNumBatchedTokens ?? defaultPrefillChunk(device),
      maxQueue: options.maxQueue,
      maxModelLen,
      kvCacheTokens: kvSlots,
    },
    kvBudgetBytes: budget,
  };
}

async function start(): Promise<EngineCore> {
  const manifest = readManifest(options.modelDir);
  const { session, device, fallbackReason, cudaFailed } = await createSession(options.modelDir, manifest, { device: options.device, threads: options.threads });
  const { limits } = resolveLimits(manifest, device);
  const fastRunner = () => new FastRunner(session, manifest, limits.maxNumSeqs, limits.maxModelLen, limits.kvCacheTokens);
  // Prompts prefill apart only when the decoding buffers are prefaulted: otherwise a long
  // prompt moving in grows the decoding buffer into fresh pages all in one step, where
  // growing it chunk by chunk spreads the same page faults over its prefill.
  const fast = manifest.layout !== 'fast' ? null : options.kvCachePrefault ? new StagedFastRunner(fastRunner(), fastRunner()) : fastRunner();
  const runner: ModelRunner = fast ?? new StandardRunner(session, manifest, limits.maxNumSeqs);
  // The standard layout's cache is allocated per step by its contract: nothing to prefault.
  const kvPrefaultedBytes = options.kvCachePrefault && fast ? fast.prefault() : 0;
  const tokenizer = QwenTokenizer.fromDir(options.modelDir);
  const generation = readGenerationConfig(options.modelDir);
  const core = new EngineCore(runner, tokenizer, limits);
  eosTokenIds = generation.eosTokenIds;
  buildGrammars = () =>
    new GrammarService({
      vocabulary: tokenizer.byteLevelVocabulary(manifest.config.vocabSize),
      stopTokenIds: generation.eosTokenIds,
      whitespace: options.jsonWhitespace ?? 'compact',
      compileTimeoutMs: options.grammarCompileTimeoutMs ?? 5000,
      onProgress: () => wake?.(),
      log: (message) => post({ type: 'warning', message }),
    });
  const info: EngineInfo = {
    modelDir: options.modelDir,
    layout: manifest.layout,
    dtype: manifest.dtype,
    device,
    deviceNote: fallbackReason,
    deviceNoteIsWarning: cudaFailed,
    vocabSize: manifest.config.vocabSize,
    limits,
    eosTokenIds: generation.eosTokenIds,
    kvPrefaultedBytes,
  };
  post({ type: 'ready', info });
  return core;
}

let wake: (() => void) | null = null;
let core: EngineCore | null = null;
let stopping = false;

function flush(): void {
  if (!core) return;
  const events = core.takeEvents();
  if (events.length > 0) post({ type: 'events', events });
}

/** Built on the first structured-output request: most servers never need it. */
let grammars: GrammarService | null = null;
let buildGrammars: (() => GrammarService) | null = null;
let eosTokenIds: number[] = [];
/** Requests whose grammar is being compiled, and which of them were aborted meanwhile. */
const preparing = new Map<string, { aborted: boolean }>();

/**
 * Queues a request, compiling its grammar first (see GrammarCompiler for the cost; the
 * first one also loads xgrammar, asynchronously, so messages may arrive meanwhile: an
 * abort then applies once the request is queued).
 */
async function submit(core: EngineCore, request: GenerateRequest): Promise<void> {
  const state = { aborted: false };
  preparing.set(request.requestId, state);
  try {
    let constraint: RemoteConstraint | null = null;
    if (request.grammar) {
      grammars ??= buildGrammars!();
      constraint = await grammars.open(request.grammar, request.stopTokenIds.length > 0 ? request.stopTokenIds : eosTokenIds);
    }
    core.submit(request, constraint);
    post({ type: 'accepted', requestId: request.requestId });
    if (state.aborted) {
      core.abort(request.requestId);
      flush();
    }
  } catch (err) {
    const e = err instanceof AppError ? err : new AppError(500, 'internal_error', (err as Error).message);
    post({ type: 'rejected', requestId: request.requestId, error: { message: e.message, status: e.status, type: e.type, code: e.code, param: e.param, retryAfter: e.retryAfter ?? null } });
  } finally {
    preparing.delete(request.requestId);
  }
  wake?.();
}

port.on('message', (msg: MainMessage) => {
  if (!core) return;
  switch (msg.type) {
    case 'submit':
      void submit(core, msg.request);
      break;
    case 'abort':
      if (preparing.has(msg.requestId)) preparing.get(msg.requestId)!.aborted = true;
      core.abort(msg.requestId);
      flush();
      break;
    case 'stats':
      post({ type: 'stats', token: msg.token, stats: { ...core.stats(), grammar: grammars?.stats() ?? null } });
      break;
    case 'shutdown':
      stopping = true;
      break;
    case 'abort-all':
      for (const id of [...preparing.keys()]) preparing.get(id)!.aborted = true;
      core.abortAll();
      flush();
      break;
  }
  wake?.();
});

async function loop(): Promise<void> {
  core = await start();
  while (!stopping) {
    if (!core.hasWork()) {
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = null;
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
    if (!moved) {
      // Every running sequence waits for its grammar's mask: sleep until one arrives.
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100).unref();
      });
      wake = null;
      continue;
    }
    // Let queued messages (new requests, aborts) in between steps.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await grammars?.shutdown();
  port.close();
}

loop().catch((err: unknown) => {
  post({ type: 'failed', message: err instanceof Error ? err.message : String(err), config: err instanceof ConfigError });
  process.exit(1);
});
