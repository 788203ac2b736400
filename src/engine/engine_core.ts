import { ContextLengthExceededError, InvalidRequestError } from '../errors.js';
import type { ModelRunner } from '../runtime/model_runner.js';
import { DEFAULT_SAMPLING, Sampler, tokenLogprob, type SequenceHistory, type TokenLogprob } from '../runtime/sampler.js';
import { Scheduler, type ScheduledSequence } from './scheduler.js';
import { IncrementalDetokenizer, StopStringMatcher } from '../text/detokenizer.js';
import type { QwenTokenizer } from '../text/tokenizer.js';
import type { GrammarService, RemoteConstraint } from './grammar_service.js';
import { PrefixCache, prefixKeys, type PrefixKeys } from './prefix_cache.js';
import { ChunkGrid } from './chunk_grid.js';
import type { EngineEvent, EngineLimits, EngineStats, FinishReason, GenerateRequest } from './types.js';

interface ActiveSequence extends ScheduledSequence {
  request: GenerateRequest;
  sampler: Sampler;
  history: SequenceHistory;
  detokenizer: IncrementalDetokenizer;
  stopMatcher: StopStringMatcher;
  stopIds: Set<number>;
  generated: number;
  arrivedAt: number;
  admittedAt: number | null;
  firstTokenAt: number | null;
  /** Structured output: the grammar's matcher over the output so far. */
  constraint: RemoteConstraint | null;
  /**
   * Logits waiting for the grammar's mask, which the grammar thread had not answered
   * when they came: the sequence sits out decode steps until it is sampled from them.
   */
  held: Float32Array | null;
  /** The constraint holds from now on (false while a thinking block runs before it). */
  constrained: boolean;
  /**
   * The thinking budget's state: thinking tokens so far (null once thinking ended, or for
   * requests without a budget), and the transition tokens still to write once it ran out.
   */
  thinking: { count: number; ended: boolean; forced: number[] | null } | null;
  /**
   * Prompt log-probabilities when asked: entry p + 1 is prompt token p + 1's, from the
   * logits at position p; `scored` positions are done (kept across a preemption's
   * recompute, so each is computed once). Sent with the first event, then dropped.
   */
  prompt: { logprobs: Array<TokenLogprob | null>; scored: number; top: number } | null;
  /** Its blocks' names in the prefix cache, computed as needed. */
  prefixKeys: PrefixKeys;
  /** Pool slots of the cached blocks found at admission, loaded before its first run. */
  hit: number[] | null;
  /** Prompt tokens served from the prefix cache at its first admission. */
  cachedTokens: number | null;
  /** A speculative prefill (see `warm`): no request waits for it and it emits nothing. */
  speculative: boolean;
}

/**
 * Prompt positions scored per run. Every position's logits are [tokens × vocab] floats
 * (151,936 per token for Qwen3: 600 KB), so a long chunk is scored in slices.
 */
const PROMPT_SCORE_SLICE = 64;

/** The chat template's message start: prefill chunks end before it (chunk_grid.ts)... */
const MESSAGE_START = '<|im_start|>';
/** ...unless it opens an assistant message, which joins the new tokens before it. */
const ASSISTANT = 'assistant';

/** Chunks of room a warm-up's row expects beyond its prompt: the next turn's message and the reply prompt. */
const NEXT_TURN_ROOM = 2;

/** The default of EngineCore's `warmAfterIdleMs`: longer than a program takes to send its next request. */
export const WARM_AFTER_IDLE_MS = 250;

/**
 * The engine's step loop body, owned by the worker thread: scheduler decisions, model
 * runs, sampling and text output for every request. `step()` runs one step and returns
 * the events it produced.
 */
export class EngineCore {
  readonly scheduler: Scheduler<ActiveSequence>;
  private readonly byRequest = new Map<string, ActiveSequence>();
  private nextId = 0;
  private pendingEvents: EngineEvent[] = [];
  private readonly totals = { prompt: 0, generation: 0, finished: 0, steps: 0, warmed: 0 };
  /**
   * Aborts that arrive while a step runs (the worker handles messages while ONNX Runtime
   * computes) wait for the step's end: freeing a row mid-run would move another row's
   * cache inside buffers the session is reading, and leave the step's results with no row.
   */
  private stepping = false;
  /** Sequences with held logits (see ActiveSequence.held), so a step need not look at every request. */
  private readonly holding = new Set<ActiveSequence>();
  private readonly abortsAfterStep = new Set<string>();
  /** abortAll came during a step: speculative prefills go when it ends (see abortsAfterStep). */
  private dropSpeculativeAfterStep = false;
  /**
   * A finished warm-up's cache, kept by the runner until anything else is admitted: the
   * turn it warmed takes it over rather than loading the same blocks back from the pool.
   */
  private resident: { id: number; tokens: number[] } | null = null;
  /** When a request last ran or arrived (see options.warmAfterIdleMs). */
  private busyAt = -Infinity;

  /** Requests whose grammar is being compiled, and whether they were aborted meanwhile. */
  private readonly preparing = new Map<string, boolean>();
  private grammars: GrammarService | null = null;
  private readonly now: () => number;

  constructor(
    private readonly runner: ModelRunner,
    private readonly tokenizer: QwenTokenizer,
    readonly limits: EngineLimits,
    private readonly options: {
      /** Builds the grammar engine, on the first structured request: most servers never need it. */
      grammars?: () => GrammarService;
      /** Stop tokens a grammar ends with when a request names none. */
      eosTokenIds?: number[];
      /** Prefix caching (its blocks are the prefill chunk long); absent: every prompt is computed whole. */
      prefixCache?: PrefixCache | null;
      /**
       * Milliseconds without requests before a speculative prefill starts (`warm`): a client
       * that sends its next turn at once computes it itself, without first waiting for a
       * warm-up's chunk and loading its history twice.
       */
      warmAfterIdleMs?: number;
      now?: () => number;
    } = {},
  ) {
    this.now = options.now ?? (() => performance.now());
    const cache = options.prefixCache ?? null;
    if (cache && cache.blockTokens !== limits.maxNumBatchedTokens) {
      throw new Error(`prefix cache blocks of ${cache.blockTokens} tokens must equal the prefill chunk (${limits.maxNumBatchedTokens})`);
    }
    // Chunks end at message starts, with the cache on or off alike (chunk_grid.ts).
    const messageStart = tokenizer.tokenId(MESSAGE_START);
    const assistant = tokenizer.tokenId(ASSISTANT);
    const grid = new ChunkGrid(
      limits.maxNumBatchedTokens,
      new Set(messageStart === undefined ? [] : [messageStart]),
      new Set(assistant === undefined ? [] : [assistant]),
    );
    if (cache) cache.grid = grid;
    this.scheduler = new Scheduler<ActiveSequence>(
      { maxNumSeqs: limits.maxNumSeqs, maxNumBatchedTokens: limits.maxNumBatchedTokens, maxQueue: limits.maxQueue, kvBudgetTokens: limits.kvBudgetTokens },
      runner,
      cache ? { cachedTokens: (seq, target) => this.lookUpPrefix(cache, seq, target) } : null,
      grid,
    );
  }

  /**
   * The cached blocks a sequence being admitted can start from. The chunk holding its
   * last prefill token is always computed, as without the cache: its logits give the next
   * token. A request scoring its prompt needs every position's logits, so it takes only
   * blocks before the positions it has yet to score (none, unless it was preempted).
   */
  private lookUpPrefix(cache: PrefixCache, seq: ActiveSequence, target: number): number {
    // A speculative prefill needs no logits, only blocks: every cached one serves it.
    let limit = seq.speculative ? target : target - 1;
    if (seq.prompt) limit = Math.min(limit, seq.prompt.scored);
    seq.hit = cache.match(seq.tokens, limit, seq.speculative ? null : target, seq.prefixKeys);
    const cached = PrefixCache.covered(seq.prefixKeys, seq.hit.length);
    seq.cachedTokens ??= cached;
    return cached;
  }

  /**
   * Saves the block a prefill run just computed, when the run was one whole chunk: the
   * block is then exactly what any later prompt with these tokens would compute there.
   */
  private publishBlock(seq: ActiveSequence, start: number, end: number, oneRun: boolean): void {
    const cache = this.options.prefixCache;
    if (!cache || !oneRun) return;
    const index = cache.chunkIndex(seq.tokens, start, end, seq.prefixKeys);
    if (index === null) return;
    const slot = cache.reserve(seq.tokens, index, seq.prefixKeys);
    if (slot === null) return;
    try {
      this.runner.saveBlock(seq.id, start, end - start, cache.pool, slot);
    } catch (err) {
      cache.release(seq.tokens, index, seq.prefixKeys);
      throw err;
    }
  }

  /**
   * Queues a request; a refusal (queue full, invalid, too long) rejects. A request without
   * a grammar is queued before this returns; one with a grammar first waits for its
   * constraint from the grammar thread, and an abort meanwhile applies once it is queued,
   * so every abort takes the one path through `abort`.
   */
  async submit(req: GenerateRequest): Promise<void> {
    if (!req.grammar) {
      this.queue(req, null);
      return;
    }
    if (!this.options.grammars) throw new Error('this engine has no grammar engine');
    this.grammars ??= this.options.grammars();
    this.preparing.set(req.requestId, false);
    let constraint: RemoteConstraint;
    let aborted: boolean;
    try {
      constraint = await this.grammars.open(req.grammar, req.stopTokenIds.length > 0 ? req.stopTokenIds : (this.options.eosTokenIds ?? []));
    } finally {
      aborted = this.preparing.get(req.requestId) ?? false;
      this.preparing.delete(req.requestId);
    }
    try {
      this.queue(req, constraint);
    } catch (err) {
      constraint.dispose();
      throw err;
    }
    if (aborted) this.abort(req.requestId);
  }

  /** Stops the grammar thread, if one was started. */
  async close(): Promise<void> {
    await this.grammars?.shutdown();
  }

  private queue(req: GenerateRequest, constraint: RemoteConstraint | null): void {
    if (this.byRequest.has(req.requestId)) throw new Error(`duplicate request id ${req.requestId}`);
    if (Boolean(req.grammar) !== Boolean(constraint)) throw new Error('a grammar request needs its constraint, and only it');
    const total = req.promptIds.length + req.maxTokens;
    if (req.promptIds.length === 0) throw new InvalidRequestError('The prompt is empty.', { param: 'prompt' });
    if (req.maxTokens < 0) throw new Error(`maxTokens ${req.maxTokens} is negative`);
    const wantsPrompt = req.promptLogprobs !== null && req.promptLogprobs !== undefined;
    if (wantsPrompt && !this.runner.promptLogits) {
      throw new InvalidRequestError('This export returns only the last position\'s logits, so prompt log-probabilities (echo with logprobs) are unavailable; export the model again.', { param: 'echo' });
    }
    // The one context-length check: the OpenAI layer only fills in max_tokens when absent.
    if (total > this.limits.maxModelLen) throw new ContextLengthExceededError(this.limits.maxModelLen, req.promptIds.length, req.maxTokens);
    const seq = this.newSequence(req, constraint, wantsPrompt);
    this.scheduler.add(seq);
    this.byRequest.set(req.requestId, seq);
    this.busyAt = this.now();
  }

  private newSequence(req: GenerateRequest, constraint: RemoteConstraint | null, wantsPrompt: boolean, speculative = false): ActiveSequence {
    return {
      id: this.nextId++,
      tokens: [...req.promptIds],
      promptLength: req.promptIds.length,
      numComputed: 0,
      state: 'waiting',
      preemptions: 0,
      request: req,
      sampler: new Sampler(req.sampling, this.runner.vocabSize),
      history: { outputCounts: new Map(), seen: new Set(req.promptIds) },
      detokenizer: new IncrementalDetokenizer(this.tokenizer, req.skipSpecialTokens),
      stopMatcher: new StopStringMatcher(req.stop),
      stopIds: new Set(req.ignoreEos ? [] : req.stopTokenIds),
      generated: 0,
      arrivedAt: this.now(),
      admittedAt: null,
      firstTokenAt: null,
      constraint,
      held: null,
      thinking: req.thinkingBudget ? { count: 0, ended: false, forced: null } : null,
      constrained: req.grammarAfter === null || req.grammarAfter === undefined,
      prompt: wantsPrompt ? { logprobs: [null], scored: 0, top: req.promptLogprobs! } : null,
      prefixKeys: prefixKeys(),
      hit: null,
      cachedTokens: null,
      speculative,
    };
  }

  /**
   * Queues a speculative prefill of `promptIds`' whole blocks for the prefix cache: a
   * conversation's next turn as the chat template will render it, so that turn finds its
   * history cached, the answer just given included. It runs only while the engine is idle
   * (see Scheduler) and emits nothing; false when it has nothing to compute.
   */
  warm(promptIds: number[]): boolean {
    const cache = this.options.prefixCache;
    if (!cache) return false;
    // Its whole chunks: they end where the next message starts, or are a whole chunk long.
    const keys: PrefixKeys = prefixKeys();
    const limit = Math.min(promptIds.length, this.limits.maxModelLen - 1);
    let count = 0;
    while (cache.keysFor(promptIds, count + 1, keys).length > count && keys.ends[count] <= limit) count++;
    const whole = PrefixCache.covered(keys, count);
    if (whole === 0) return false;
    const tokens = promptIds.slice(0, whole);
    keys.keys.length = count;
    keys.ends.length = count;
    // Its last chunk ends where a message starts (or is a whole chunk long): it is whole.
    keys.boundaryAtEnd = true;
    if (cache.cachedTokens(tokens, keys) >= whole) return false;
    const req: GenerateRequest = {
      requestId: `warm-${this.nextId}`,
      promptIds: tokens,
      sampling: DEFAULT_SAMPLING,
      maxTokens: 0,
      stopTokenIds: [],
      stop: [],
      ignoreEos: true,
      skipSpecialTokens: true,
    };
    const seq = this.newSequence(req, null, false, true);
    seq.prefixKeys = keys;
    this.scheduler.addSpeculative(seq);
    return true;
  }

  /** Ends a request and frees its cache, at once between steps, else when the running step ends. */
  abort(requestId: string): void {
    if (this.preparing.has(requestId)) {
      this.preparing.set(requestId, true);
      return;
    }
    if (this.stepping) {
      this.abortsAfterStep.add(requestId);
      return;
    }
    const seq = this.byRequest.get(requestId);
    if (!seq) return;
    this.finish(seq, 'abort', null);
  }

  hasWork(): boolean {
    return this.scheduler.hasWork();
  }

  stats(): EngineStats {
    let used = 0;
    for (const s of this.byRequest.values()) if (s.state === 'prefill' || s.state === 'decode') used += s.numComputed;
    return {
      running: this.scheduler.numRunning,
      waiting: this.scheduler.numWaiting,
      kvUsedTokens: used,
      kvBudgetTokens: this.limits.kvBudgetTokens,
      kvBytes: this.runner.kvBytes(),
      promptTokensTotal: this.totals.prompt,
      generationTokensTotal: this.totals.generation,
      warmedTokensTotal: this.totals.warmed,
      requestsFinished: this.totals.finished,
      steps: this.totals.steps,
      grammar: this.grammars?.stats() ?? null,
      prefixCache: this.options.prefixCache?.stats() ?? null,
    };
  }

  /** Events produced since the last call (including aborts done between steps). */
  takeEvents(): EngineEvent[] {
    const out = this.pendingEvents;
    this.pendingEvents = [];
    return out;
  }

  /** Runs one step; false when nothing could move (every running sequence waits for its grammar). */
  async step(): Promise<boolean> {
    this.stepping = true;
    try {
      return await this.runStep();
    } finally {
      this.stepping = false;
      for (const id of this.abortsAfterStep) this.abort(id);
      this.abortsAfterStep.clear();
      if (this.dropSpeculativeAfterStep) {
        this.dropSpeculativeAfterStep = false;
        this.dropSpeculative();
      }
    }
  }

  private async runStep(): Promise<boolean> {
    const resumed = this.resumeHeld();
    const now = this.now();
    const plan = this.scheduler.schedule((s) => s.held === null, now - this.busyAt >= (this.options.warmAfterIdleMs ?? WARM_AFTER_IDLE_MS));
    if (plan.decode.length > 0 || (plan.prefill && !plan.prefill.seq.speculative)) this.busyAt = now;
    this.totals.steps++;
    for (const seq of plan.preempted) {
      // Its held logits are computed again by the recompute, from the same tokens.
      seq.held = null;
      this.holding.delete(seq);
      this.runner.removeSequence(seq.id);
    }
    for (const seq of plan.dropped) this.runner.removeSequence(seq.id);
    // Run the model for the plan, then let the scheduler move the sequences on, then sample.
    const decodeLogits =
      plan.decode.length > 0
        ? await this.runner.decode(
            plan.decode.map((s) => s.id),
            plan.decode.map((s) => s.tokens[s.tokens.length - 1]),
          )
        : null;
    // Admitted sequences get their rows after the decode run: a prompt that finished its
    // prefill has then left the staging rows (StagedFastRunner.decode), so the new one
    // takes the row whose pages it wrote, rather than fresh pages and a row move.
    for (const seq of plan.admitted) {
      const hitTokens = PrefixCache.covered(seq.prefixKeys, seq.hit?.length ?? 0);
      if (!this.takeResident(seq, hitTokens)) {
        this.dropResident();
        this.runner.addSequence(seq.id);
        if (hitTokens > 0) this.runner.loadBlocks(seq.id, this.options.prefixCache!.pool, PrefixCache.blocks(seq.prefixKeys, seq.hit!));
      }
      // A warm-up's row makes room for the next turn's message, so taking it over moves nothing.
      this.runner.expect(seq.id, seq.promptLength + (seq.speculative ? NEXT_TURN_ROOM * this.limits.maxNumBatchedTokens : 0));
      seq.hit = null;
      seq.admittedAt ??= this.now();
    }
    let prefillLogits: Float32Array | null = null;
    if (plan.prefill) {
      const { seq, start, end } = plan.prefill;
      const scoring = seq.prompt !== null && seq.prompt.scored < Math.min(end, seq.promptLength - 1);
      prefillLogits = scoring ? await this.prefillScoring(seq, start, end) : await this.runner.prefill(seq.id, seq.tokens.slice(start, end));
      this.publishBlock(seq, start, end, !scoring || end - start <= PROMPT_SCORE_SLICE);
      if (seq.speculative) this.totals.warmed += end - start;
    }
    const { promptDone, speculativeDone } = this.scheduler.update(plan);
    if (speculativeDone) {
      this.dropResident();
      this.resident = { id: speculativeDone.id, tokens: speculativeDone.tokens };
    }
    if (decodeLogits) {
      const v = this.runner.vocabSize;
      plan.decode.forEach((seq, i) => this.sample(seq, decodeLogits.subarray(i * v, (i + 1) * v)));
    }
    if (promptDone) {
      this.totals.prompt += promptDone.promptLength;
      if (promptDone.request.maxTokens === 0) {
        // The prompt alone was asked for (echo, max_tokens 0): its scores if asked, no token.
        this.emit(promptDone, [], '', null);
        this.finish(promptDone, 'length', null);
      } else this.sample(promptDone, prefillLogits!);
    }
    return resumed || plan.decode.length > 0 || plan.prefill !== null || plan.preempted.length > 0;
  }

  /** Samples the sequences whose grammar masks arrived since their logits did; true if any. */
  private resumeHeld(): boolean {
    let any = false;
    for (const seq of [...this.holding]) {
      if (seq.held && seq.constraint?.ready) {
        const logits = seq.held;
        seq.held = null;
        this.holding.delete(seq);
        this.sample(seq, logits);
        any = true;
      }
    }
    return any;
  }

  /**
   * Samples the next token from `logits`. A constrained sequence whose mask the grammar
   * thread has not sent yet keeps a copy of its logits instead (see `held`), so no step
   * waits for another thread's compile.
   */
  private sample(seq: ActiveSequence, logits: Float32Array): void {
    const forced = this.forcedToken(seq);
    if (forced !== null) {
      this.accept(seq, logits, forced);
      return;
    }
    const constraint = seq.constrained ? seq.constraint : null;
    if (constraint) {
      if (constraint.failed) {
        this.fail(seq, `structured output failed: ${constraint.failed}`);
        return;
      }
      if (!constraint.ready) {
        seq.held = logits.slice();
        this.holding.add(seq);
        return;
      }
      if (constraint.mask(logits) === 0) {
        // Nothing is allowed: the answer is complete.
        this.finish(seq, 'stop', null);
        return;
      }
    }
    this.accept(seq, logits);
  }

  /**
   * Prefills tokens [start, end) of `seq` with every position's logits, recording each
   * prompt token's log-probability from the position before it. Returns the last
   * position's logits, as a plain prefill would.
   */
  private async prefillScoring(seq: ActiveSequence, start: number, end: number): Promise<Float32Array> {
    const prompt = seq.prompt!;
    const v = this.runner.vocabSize;
    let last: Float32Array = new Float32Array(0);
    for (let from = start; from < end; from += PROMPT_SCORE_SLICE) {
      const to = Math.min(end, from + PROMPT_SCORE_SLICE);
      const logits = await this.runner.prefill(seq.id, seq.tokens.slice(from, to), true);
      for (let p = Math.max(from, prompt.scored); p < Math.min(to, seq.promptLength - 1); p++) {
        const row = logits.subarray((p - from) * v, (p - from + 1) * v);
        const token = seq.tokens[p + 1];
        let rank = 1;
        for (let i = 0; i < v; i++) if (row[i] > row[token]) rank++;
        prompt.logprobs[p + 1] = { ...tokenLogprob(row, token, prompt.top), rank };
      }
      prompt.scored = Math.max(prompt.scored, Math.min(to, seq.promptLength - 1));
      last = logits.subarray((to - from - 1) * v, (to - from) * v);
    }
    return last;
  }

  /**
   * The thinking budget: once a sequence has thought for its budget without ending the
   * thinking, the transition's tokens are written one per step instead of sampled (each
   * goes through the model like any token, so the answer that follows sees them).
   */
  private forcedToken(seq: ActiveSequence): number | null {
    const t = seq.thinking;
    const budget = seq.request.thinkingBudget;
    if (!t || !budget) return null;
    if (!t.ended && t.forced === null && t.count >= budget.tokens) t.forced = [...budget.transition];
    return t.forced && t.forced.length > 0 ? t.forced.shift()! : null;
  }

  /** Takes the token sampled from `logits` (masked if constrained), or the forced one, and turns it into an event. */
  private accept(seq: ActiveSequence, logits: Float32Array, forced: number | null = null): void {
    const constraint = seq.constrained ? seq.constraint : null;
    const top = seq.request.sampling.logprobs;
    const { token, logprob } =
      forced === null ? seq.sampler.sample(logits, seq.history) : { token: forced, logprob: top === null ? null : tokenLogprob(logits, forced, top) };
    if (seq.thinking && !seq.thinking.ended) {
      // Thinking ends at </think>, sampled or forced; until then each token counts.
      if (token === seq.request.thinkingBudget!.endId) seq.thinking.ended = true;
      else seq.thinking.count++;
    }
    // Masked tokens have -Infinity logits, so the sampled one is always accepted.
    constraint?.accept(token);
    if (seq.constraint && token === seq.request.grammarAfter) seq.constrained = true;
    seq.tokens.push(token);
    seq.generated++;
    this.totals.generation++;
    seq.history.seen.add(token);
    seq.history.outputCounts.set(token, (seq.history.outputCounts.get(token) ?? 0) + 1);
    seq.firstTokenAt ??= this.now();
    const logprobs: TokenLogprob[] | null = logprob ? [logprob] : null;

    if (seq.stopIds.has(token)) {
      // The stop token itself is not text; release what the stop-string matcher held.
      const text = seq.detokenizer.flush() + seq.stopMatcher.flush();
      this.emit(seq, [token], text, logprobs);
      this.finish(seq, 'stop', token);
      return;
    }
    const piece = seq.detokenizer.push(token);
    const { emit, stopped, matched } = seq.stopMatcher.push(piece);
    if (stopped) {
      this.emit(seq, [token], emit, logprobs);
      this.finish(seq, 'stop', matched ?? null);
      return;
    }
    if (constraint?.terminated) {
      // A stop token the grammar accepted that is not a stop id here (ignore_eos): the end.
      this.emit(seq, [token], emit + seq.stopMatcher.push(seq.detokenizer.flush()).emit + seq.stopMatcher.flush(), logprobs);
      this.finish(seq, 'stop', null);
      return;
    }
    const atLimit = seq.generated >= seq.request.maxTokens || seq.tokens.length >= this.limits.maxModelLen;
    if (atLimit) {
      const text = emit + seq.stopMatcher.push(seq.detokenizer.flush()).emit + seq.stopMatcher.flush();
      this.emit(seq, [token], text, logprobs);
      this.finish(seq, 'length', null);
      return;
    }
    this.emit(seq, [token], emit, logprobs);
  }

  private emit(seq: ActiveSequence, tokenIds: number[], text: string, logprobs: TokenLogprob[] | null): void {
    const prompt = seq.prompt;
    seq.prompt = null;
    this.pendingEvents.push({
      requestId: seq.request.requestId,
      tokenIds,
      text,
      logprobs,
      ...(prompt ? { promptLogprobs: prompt.logprobs } : {}),
      cachedTokens: seq.cachedTokens ?? 0,
      finishReason: null,
      stopReason: null,
      metrics: null,
      error: null,
    });
  }

  private finish(seq: ActiveSequence, reason: FinishReason, stopReason: string | number | null): void {
    if (this.scheduler.remove(seq)) this.runner.removeSequence(seq.id);
    seq.constraint?.dispose();
    seq.held = null;
    this.holding.delete(seq);
    this.byRequest.delete(seq.request.requestId);
    this.totals.finished++;
    const t = this.now();
    this.pendingEvents.push({
      requestId: seq.request.requestId,
      tokenIds: [],
      text: '',
      logprobs: null,
      finishReason: reason,
      stopReason,
      metrics: {
        promptTokens: seq.promptLength,
        completionTokens: seq.generated,
        cachedTokens: seq.cachedTokens ?? 0,
        queueMs: (seq.admittedAt ?? t) - seq.arrivedAt,
        firstTokenMs: (seq.firstTokenAt ?? t) - seq.arrivedAt,
        totalMs: t - seq.arrivedAt,
        preemptions: seq.preemptions,
      },
      error: null,
    });
  }

  /** Ends one request with an error event. */
  private fail(seq: ActiveSequence, message: string, status = 500, type = 'internal_error'): void {
    if (this.scheduler.remove(seq)) this.runner.removeSequence(seq.id);
    seq.constraint?.dispose();
    seq.held = null;
    this.holding.delete(seq);
    this.byRequest.delete(seq.request.requestId);
    this.pendingEvents.push({
      requestId: seq.request.requestId,
      tokenIds: [],
      text: '',
      logprobs: null,
      finishReason: 'error',
      stopReason: null,
      metrics: null,
      error: { message, status, type, code: null },
    });
  }

  /** Fails every request (the model faulted); returns their events. */
  failAll(message: string): EngineEvent[] {
    for (const seq of [...this.byRequest.values()]) this.fail(seq, message);
    this.dropSpeculative();
    return this.takeEvents();
  }

  /** Forgets every speculative prefill, freeing the one running and a finished one's row: after a fault, or at shutdown. */
  private dropSpeculative(): void {
    for (const seq of this.scheduler.dropSpeculative()) this.runner.removeSequence(seq.id);
    this.dropResident();
  }

  /**
   * Gives `seq` the resident warm-up's row when its `hitTokens` cached tokens are that
   * row's first ones: the same tokens, so the same keys and values the pool holds.
   */
  private takeResident(seq: ActiveSequence, hitTokens: number): boolean {
    const r = this.resident;
    if (!r || hitTokens === 0 || hitTokens > r.tokens.length) return false;
    for (let i = 0; i < hitTokens; i++) if (r.tokens[i] !== seq.tokens[i]) return false;
    this.runner.handOver(r.id, seq.id, hitTokens);
    this.resident = null;
    return true;
  }

  private dropResident(): void {
    if (!this.resident) return;
    this.runner.removeSequence(this.resident.id);
    this.resident = null;
  }

  /**
   * Ends every request at a step boundary with finish reason 'abort' (the shutdown
   * deadline): their clients get a clean end with what was generated.
   */
  abortAll(): void {
    for (const id of [...this.preparing.keys(), ...this.byRequest.keys()]) this.abort(id);
    if (this.stepping) this.dropSpeculativeAfterStep = true;
    else this.dropSpeculative();
  }
}
