import { QueueFullError } from '../errors.js';
import { ChunkGrid } from './chunk_grid.js';

export type SequenceState = 'waiting' | 'prefill' | 'decode' | 'finished';

/** What the scheduler knows of a request: token counts and state, nothing about sampling. */
export interface ScheduledSequence {
  /** Small integer id, also the KV cache's key. */
  readonly id: number;
  /** Prompt followed by generated tokens. */
  readonly tokens: number[];
  readonly promptLength: number;
  /** Tokens whose keys/values are cached. */
  numComputed: number;
  state: SequenceState;
  /** Times this sequence was preempted (its cache dropped, to be recomputed). */
  preemptions: number;
}

export interface SchedulerConfig {
  maxNumSeqs: number;
  /** Prefill chunk size: the per-step token budget for prompt tokens. */
  maxNumBatchedTokens: number;
  maxQueue: number;
  /** KV cache budget in token slots. */
  kvBudgetTokens: number;
}

/**
 * Prefix caching, asked once per admission: how many of the sequence's first `target`
 * tokens already have their keys and values cached (and will be loaded), so its prefill
 * starts after them.
 */
export interface PrefixLookup<S> {
  cachedTokens(seq: S, target: number): number;
}

/** The cache's cost model, from the model runner. */
export interface KvCostModel {
  slotsFor(lengths: number[]): number;
}

export interface StepPlan<S extends ScheduledSequence = ScheduledSequence> {
  /** Sequences newly given a KV slot this step. */
  admitted: S[];
  /** Sequences whose cache must be dropped before the step (they wait to be recomputed). */
  preempted: S[];
  /** One new token each, batched. */
  decode: S[];
  /** At most one prompt chunk: tokens[start, end) of `seq`. */
  prefill: { seq: S; start: number; end: number } | null;
  /** Speculative prefills given up this step (a request came): their cache must be freed. */
  dropped: S[];
}

/** What a step's run means for sampling, once `update` has moved the sequences on. */
export interface StepOutcome<S extends ScheduledSequence = ScheduledSequence> {
  /** The prefilled sequence, when this chunk completed a fresh prompt: its next token is sampled from the chunk's last logits. */
  promptDone: S | null;
  /** A speculative prefill this chunk completed: it has left the scheduler, its cache must be freed. */
  speculativeDone: S | null;
}

/**
 * Continuous batching at step granularity (vLLM v1 / llama.cpp slots): every step
 * decodes all running sequences and advances at most one prompt by one chunk. Admission
 * is FIFO, bounded by `maxNumSeqs` and the KV budget; when a growing batch would exceed
 * the budget, the most recently admitted sequence is preempted and recomputed later.
 *
 * A prompt's chunk boundaries depend only on the prompt (the chunk size and message
 * starts, chunk_grid.ts), never on what else runs, so a request's numbers do not depend
 * on its neighbours.
 *
 * Speculative prefills (a conversation's likely next turn, computed for the prefix cache)
 * use only idle time: one is admitted when nothing else runs or waits, and given up at
 * the first step a request waits, so a request waits at most for the chunk in flight.
 */
export class Scheduler<S extends ScheduledSequence = ScheduledSequence> {
  private readonly waiting: S[] = [];
  /** In admission order (the last is the first to be preempted). */
  private readonly running: S[] = [];
  /** Speculative prefills not yet admitted, oldest first. */
  private readonly speculative: S[] = [];
  /** The speculative prefill admitted, if any (it runs alone). */
  private warming: S | null = null;

  constructor(
    readonly config: SchedulerConfig,
    private readonly kv: KvCostModel,
    private readonly prefix: PrefixLookup<S> | null = null,
    /** Where prompt chunks end (chunk_grid.ts); by default every maxNumBatchedTokens. */
    private readonly grid: ChunkGrid = new ChunkGrid(config.maxNumBatchedTokens),
  ) {}

  /** Requests waiting (speculative prefills are not requests). */
  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length - (this.warming ? 1 : 0);
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.speculative.length > 0;
  }

  /**
   * Queues a speculative prefill, to run when the engine is idle; beyond `maxNumSeqs` of
   * them the oldest is forgotten (it never ran, so it holds nothing). Returns that one.
   */
  addSpeculative(seq: S): S | null {
    seq.state = 'waiting';
    this.speculative.push(seq);
    return this.speculative.length > this.config.maxNumSeqs ? this.speculative.shift()! : null;
  }

  add(seq: S): void {
    // The queue bound counts requests that must wait: those a free batch slot will take
    // at the next step do not.
    const freeSlots = Math.max(0, this.config.maxNumSeqs - this.running.length);
    if (this.waiting.length >= this.config.maxQueue + freeSlots) {
      throw new QueueFullError(`The server is busy: ${this.waiting.length} requests are already waiting. Retry shortly.`);
    }
    seq.state = 'waiting';
    this.waiting.push(seq);
  }

  /** Removes a sequence wherever it is; returns true if it was running (its cache must be freed). */
  remove(seq: S): boolean {
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    seq.state = 'finished';
    return r >= 0;
  }

  /** Tokens of the sequence still to be prefilled before it can decode. */
  static prefillTarget(seq: ScheduledSequence): number {
    // A fresh prompt is prefilled whole (its last logits give the first token); a
    // recomputed sequence prefills all but its last token, which it then decodes.
    return seq.tokens.length === seq.promptLength ? seq.promptLength : seq.tokens.length - 1;
  }

  private needs(extra?: { seq: S; length: number }): number[] {
    const lengths = this.running.map((s) =>
      extra && s === extra.seq ? extra.length : s.state === 'decode' ? s.numComputed + 1 : s.numComputed,
    );
    if (extra && !this.running.includes(extra.seq)) lengths.push(extra.length);
    return lengths;
  }

  private fits(extra?: { seq: S; length: number }): boolean {
    return this.kv.slotsFor(this.needs(extra)) <= this.config.kvBudgetTokens;
  }

  /**
   * Decides the next step. `canDecode` leaves out running sequences that cannot take a
   * token this step (waiting for their grammar's mask); they keep their cache.
   * `speculate` false holds speculative prefills back even when idle.
   */
  schedule(canDecode: (seq: S) => boolean = () => true, speculate = true): StepPlan<S> {
    const plan: StepPlan<S> = { admitted: [], preempted: [], decode: [], prefill: null, dropped: [] };
    if (this.warming && this.waiting.length > 0) {
      this.running.splice(this.running.indexOf(this.warming), 1);
      this.warming.state = 'finished';
      plan.dropped.push(this.warming);
      this.warming = null;
    }
    // Make room for this step's decode tokens, preempting the youngest first.
    while (this.running.length > 1 && !this.fits()) {
      const victim = this.running.pop()!;
      victim.numComputed = 0;
      victim.state = 'waiting';
      victim.preemptions++;
      this.waiting.unshift(victim);
      plan.preempted.push(victim);
    }
    plan.decode = this.running.filter((s) => s.state === 'decode' && canDecode(s));

    let candidate = this.running.find((s) => s.state === 'prefill');
    if (!candidate && this.waiting.length > 0 && this.running.length < this.config.maxNumSeqs) {
      const next = this.waiting[0];
      // Admit only if the whole prefill fits next to what runs now.
      if (this.fits({ seq: next, length: Scheduler.prefillTarget(next) }) || this.running.length === 0) {
        this.waiting.shift();
        next.state = 'prefill';
        next.numComputed = this.prefix?.cachedTokens(next, Scheduler.prefillTarget(next)) ?? 0;
        this.running.push(next);
        plan.admitted.push(next);
        candidate = next;
      }
    }
    if (!candidate && speculate && this.running.length === 0 && this.waiting.length === 0) candidate = this.admitSpeculative(plan);
    if (candidate) {
      const start = candidate.numComputed;
      const end = Math.min(Scheduler.prefillTarget(candidate), this.grid.end(candidate.tokens, start));
      if (this.fits({ seq: candidate, length: end })) plan.prefill = { seq: candidate, start, end };
    }
    return plan;
  }

  /** Forgets every speculative prefill; returns the admitted one, if any, whose cache must be freed. */
  dropSpeculative(): S[] {
    this.speculative.length = 0;
    const running = this.warming;
    if (!running) return [];
    this.running.splice(this.running.indexOf(running), 1);
    running.state = 'finished';
    this.warming = null;
    return [running];
  }

  /** Admits the oldest speculative prefill that still has blocks to compute and fits. */
  private admitSpeculative(plan: StepPlan<S>): S | undefined {
    while (this.speculative.length > 0) {
      const next = this.speculative.shift()!;
      const target = Scheduler.prefillTarget(next);
      if (!this.fits({ seq: next, length: target })) continue;
      const cached = this.prefix?.cachedTokens(next, target) ?? 0;
      if (cached >= target) continue;
      next.state = 'prefill';
      next.numComputed = cached;
      this.running.push(next);
      this.warming = next;
      plan.admitted.push(next);
      return next;
    }
    return undefined;
  }

  /**
   * The one place where a step's sequences move on after the model ran `plan`: each
   * decoded sequence has its previous last token cached, the prefilled one its chunk.
   */
  update(plan: StepPlan<S>): StepOutcome<S> {
    for (const seq of plan.decode) seq.numComputed += 1;
    if (!plan.prefill) return { promptDone: null, speculativeDone: null };
    const { seq, end } = plan.prefill;
    const fresh = seq.tokens.length === seq.promptLength;
    seq.numComputed = end;
    if (end < Scheduler.prefillTarget(seq)) return { promptDone: null, speculativeDone: null };
    if (seq === this.warming) {
      this.running.splice(this.running.indexOf(seq), 1);
      seq.state = 'finished';
      this.warming = null;
      return { promptDone: null, speculativeDone: seq };
    }
    seq.state = 'decode';
    // A recomputed sequence (after preemption) decodes its last token next instead.
    return { promptDone: fresh ? seq : null, speculativeDone: null };
  }
}
