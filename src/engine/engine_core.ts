import type { KvBlockPool } from '../runtime/kv_block_pool.js';
import { kvCostModel } from '../runtime/kv_cost.js';
import type { ModelRunner } from '../runtime/model_runner.js';
import type { TokenVocabulary } from '../text/token_vocabulary.js';
import { messageGrid } from './chunk_grid.js';
import type { DiskBlockStore } from './disk_block_store.js';
import { type EngineTotals, engineStats } from './engine_stats.js';
import type { RemoteConstraint } from './grammar_service.js';
import { KvCacheManager } from './kv_cache_manager.js';
import type { Ending } from './output_processor.js';
import { PrefixCache } from './prefix_cache.js';
import { type IntakeOptions, RequestIntake } from './request_intake.js';
import { Scheduler } from './scheduler.js';
import { newSequence, newWarmUp, type Sequence, type SequenceContext } from './sequence.js';
import { StepExecutor } from './step_executor.js';
import type { EngineEvent, EngineLimits, EngineStats, GenerateRequest } from './types.js';

/** The default of EngineCore's `warmAfterIdleMs`: longer than a program takes to send its next request. */
export const WARM_AFTER_IDLE_MS = 250;

/**
 * The engine's step loop (worker thread) and the wiring of its parts: the scheduler plans
 * a step with its KV cache manager, the step executor runs it, each sequence's token
 * selector picks its token and its output processor turns it into events.
 */
export class EngineCore {
  readonly scheduler: Scheduler<Sequence>;
  private readonly executor: StepExecutor;
  private readonly byRequest = new Map<string, Sequence>();
  private nextId = 0;
  private pendingEvents: EngineEvent[] = [];
  private readonly totals: EngineTotals = { prompt: 0, generation: 0, finished: 0, steps: 0, warmed: 0 };
  /** Aborts during a step wait for its end: freeing a row mid-run would move rows inside buffers the session is reading. */
  private stepping = false;
  private readonly abortsAfterStep = new Set<string>();
  /** abortAll came during a step: warm-ups go when it ends (see abortsAfterStep). */
  private dropWarmUpsAfterStep = false;
  /** Sequences whose logits wait for their grammar's mask, so a step need not look at every request. */
  private readonly holding = new Set<Sequence>();
  /** When a request last ran or arrived (see options.warmAfterIdleMs). */
  private busyAt = -Infinity;
  private readonly intake: RequestIntake;
  private readonly now: () => number;

  constructor(
    private readonly runner: ModelRunner,
    private readonly tokenizer: TokenVocabulary,
    readonly limits: EngineLimits,
    private readonly options: IntakeOptions & {
      /** Prefix caching's pool (blocks of one prefill chunk); absent: every prompt is computed whole. */
      prefixCachePool?: KvBlockPool | null;
      /** The prefix cache's tier below memory (--prefix-cache-dir); absent: memory only. */
      prefixCacheDisk?: DiskBlockStore | null;
      /** Idle milliseconds before a warm-up starts, so a client sending its next turn at once never waits for one. */
      warmAfterIdleMs?: number;
      now?: () => number;
    } = {},
  ) {
    this.now = options.now ?? (() => performance.now());
    // Chunks end at message starts, with the cache on or off alike (chunk_grid.ts).
    const grid = messageGrid(tokenizer, limits.maxNumBatchedTokens);
    const pool = options.prefixCachePool ?? null;
    // With the disk tier the pool's last slot is its scratch (KvCacheManager.save).
    const disk = pool && pool.slots > 1 ? (options.prefixCacheDisk ?? null) : null;
    const prefixCache = pool ? new PrefixCache(grid, pool, disk ? pool.slots - 1 : pool.slots) : null;
    const kv = new KvCacheManager<Sequence>(kvCostModel(runner.manifest.layout), prefixCache, disk);
    this.scheduler = new Scheduler<Sequence>(limits, kv, grid);
    this.executor = new StepExecutor(runner, kv);
    this.intake = new RequestIntake(limits, runner.promptLogits, options, runner.vocabSize);
  }

  /** Runs one step; false when nothing could move (every running sequence waits for its grammar). */
  async step(): Promise<boolean> {
    this.stepping = true;
    try {
      const resumed = this.resumeHeld();
      const now = this.now();
      const plan = this.scheduler.schedule((s) => !s.selector.holding, now - this.busyAt >= (this.options.warmAfterIdleMs ?? WARM_AFTER_IDLE_MS));
      if (plan.decode.length > 0 || (plan.prefill && !plan.prefill.seq.warmUp)) this.busyAt = now;
      this.totals.steps++;
      for (const seq of plan.preempted) this.release(seq);
      const logits = await this.executor.execute(plan);
      for (const seq of plan.admitted) seq.output.admitted(this.now());
      if (plan.prefill?.seq.warmUp) this.totals.warmed += plan.prefill.end - plan.prefill.start;
      const { promptDone } = this.scheduler.update(plan);
      const v = this.runner.vocabSize;
      plan.decode.forEach((seq, i) => this.sample(seq, logits.decode!.subarray(i * v, (i + 1) * v)));
      if (promptDone) {
        this.totals.prompt += promptDone.promptLength;
        // The prompt alone was asked for (echo, max_tokens 0): its scores if asked, no token.
        if (promptDone.request.maxTokens === 0) this.finish(promptDone, { reason: 'length', stopReason: null }, true, logits.prefill);
        else this.sample(promptDone, logits.prefill!);
      }
      return resumed || plan.decode.length > 0 || plan.prefill !== null || plan.preempted.length > 0 || plan.kv.fill.length > 0;
    } finally {
      this.stepping = false;
      for (const id of this.abortsAfterStep) this.abort(id);
      this.abortsAfterStep.clear();
      if (this.dropWarmUpsAfterStep) this.dropWarmUps();
    }
  }

  /** Queues a request (one without a grammar before this returns); a refusal rejects with a coded error. */
  async submit(req: GenerateRequest): Promise<void> {
    if (!req.grammar) return this.queue(req, null);
    const { constraint, aborted } = await this.intake.compile(req);
    try {
      this.queue(req, constraint);
    } catch (err) {
      constraint.dispose();
      throw err;
    }
    if (aborted) this.abort(req.requestId);
  }

  private queue(req: GenerateRequest, constraint: RemoteConstraint | null): void {
    if (this.byRequest.has(req.requestId)) throw new Error(`duplicate request id ${req.requestId}`);
    this.intake.check(req, constraint);
    const seq = newSequence(this.nextId++, req, constraint, this.sequenceContext());
    this.scheduler.add(seq);
    this.byRequest.set(req.requestId, seq);
    this.busyAt = this.now();
  }

  private sequenceContext(): SequenceContext {
    return { tokenizer: this.tokenizer, vocabSize: this.runner.vocabSize, maxModelLen: this.limits.maxModelLen, now: this.now() };
  }

  /** Queues a warm-up of a conversation's next turn for the prefix cache (see Scheduler); false when it has nothing to compute. */
  warm(promptIds: number[], salt: string | null = null): boolean {
    const prompt = this.scheduler.kv.warmUpPrompt(promptIds, this.limits.maxModelLen, salt);
    if (!prompt) return false;
    this.scheduler.addWarmUp(newWarmUp(this.nextId++, prompt.tokens, prompt.keys, this.sequenceContext()));
    return true;
  }

  /** Ends a request and frees its cache, at once between steps, else when the running step ends. */
  abort(requestId: string): void {
    if (this.intake.abort(requestId)) return;
    if (this.stepping) this.abortsAfterStep.add(requestId);
    else {
      const seq = this.byRequest.get(requestId);
      if (seq) this.finish(seq, { reason: 'abort', stopReason: null });
    }
  }

  /** Ends every request at a step boundary with finish reason 'abort' (the shutdown deadline), so clients get a clean end. */
  abortAll(): void {
    for (const id of [...this.intake.compiling(), ...this.byRequest.keys()]) this.abort(id);
    if (this.stepping) this.dropWarmUpsAfterStep = true;
    else this.dropWarmUps();
  }

  /** Fails every request (the model faulted); returns their events. */
  failAll(message: string): EngineEvent[] {
    for (const seq of [...this.byRequest.values()]) this.fail(seq, message, 'engine_fault');
    this.dropWarmUps();
    return this.takeEvents();
  }

  /** Stops the grammar thread, if one was started, and waits for the disk tier's writes. */
  async close(): Promise<void> {
    await this.intake.close();
    await this.scheduler.kv.disk?.close();
  }

  hasWork(): boolean {
    return this.scheduler.hasWork();
  }

  stats(): EngineStats {
    const { scheduler, limits, totals } = this;
    return engineStats({
      scheduler,
      limits,
      totals,
      sequences: this.byRequest.values(),
      grammar: this.intake.stats(),
      kvBytes: this.runner.kvBytes(),
    });
  }

  /** Events produced since the last call (including aborts done between steps). */
  takeEvents(): EngineEvent[] {
    const out = this.pendingEvents;
    this.pendingEvents = [];
    return out;
  }

  /** Selects from the logits of sequences whose grammar masks arrived since; true if any. */
  private resumeHeld(): boolean {
    const ready = [...this.holding].map((seq) => ({ seq, logits: seq.selector.takeReady() })).filter((r) => r.logits !== null);
    for (const { seq, logits } of ready) {
      this.holding.delete(seq);
      this.sample(seq, logits!);
    }
    return ready.length > 0;
  }

  /** Takes the token the selector picks from `logits` and hands it to the output processor. */
  private sample(seq: Sequence, logits: Float32Array): void {
    const picked = seq.selector.select(logits);
    if (picked.kind === 'held') this.holding.add(seq);
    else if (picked.kind === 'complete') this.finish(seq, { reason: 'stop', stopReason: null });
    else if (picked.kind === 'failed') this.fail(seq, `structured output failed: ${picked.message}`, 'structured_output_failed');
    else {
      seq.tokens.push(picked.token);
      this.totals.generation++;
      const out = seq.output.token(picked.token, picked.logprob, picked.grammarEnded, seq.tokens.length, seq.cachedTokens ?? 0, this.now());
      this.pendingEvents.push(out.event);
      if (out.ending) this.finish(seq, out.ending);
    }
  }

  /** Drops a sequence's held logits: preempted, finished or failed. */
  private release(seq: Sequence): void {
    seq.selector.dropHeld();
    this.holding.delete(seq);
  }

  /** Ends a request; `promptOnly` sends its first event (output_processor.ts promptEvent) first. */
  private finish(seq: Sequence, ending: Ending, promptOnly = false, last: Float32Array | null = null): void {
    if (promptOnly) this.pendingEvents.push(seq.output.promptEvent(seq.cachedTokens ?? 0, last));
    this.remove(seq);
    this.totals.finished++;
    this.pendingEvents.push(seq.output.finished(ending, seq.cachedTokens ?? 0, seq.preemptions, this.now()));
  }

  /** Ends one request with an error event whose code says what went wrong. */
  private fail(seq: Sequence, message: string, code: string): void {
    this.remove(seq);
    this.pendingEvents.push(seq.output.failed(message, 500, 'server_error', code));
  }

  private remove(seq: Sequence): void {
    if (this.scheduler.remove(seq)) this.runner.removeSequence(seq.id);
    this.release(seq);
    seq.selector.dispose();
    this.byRequest.delete(seq.request.requestId);
  }

  /** Forgets every warm-up, freeing the one running and a finished one's row: after a fault, or at shutdown. */
  private dropWarmUps(): void {
    this.dropWarmUpsAfterStep = false;
    for (const id of this.scheduler.dropWarmUps()) this.runner.removeSequence(id);
  }
}
