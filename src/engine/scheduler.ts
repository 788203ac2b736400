import { KeyLimitError, QueueFullError } from '../errors.js';
import { ChunkGrid } from './chunk_grid.js';
import { type KvCacheManager, type KvSteps, kvSteps, type Lookup } from './kv_cache_manager.js';
import type { CacheableSequence, ScheduledSequence } from './sequence.js';

export interface SchedulerConfig {
  maxNumSeqs: number;
  /** Prefill chunk size: the per-step token budget for prompt tokens. */
  maxNumBatchedTokens: number;
  maxQueue: number;
  /** KV cache budget in token slots. */
  kvBudgetTokens: number;
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
  /** Warm-ups given up this step (a request came). */
  dropped: S[];
  /** The KV work around the model runs: rows freed and set up, prefix blocks loaded and saved. */
  kv: KvSteps;
}

/** What a step's run means for sampling, once `update` has moved the sequences on. */
export interface StepOutcome<S extends ScheduledSequence = ScheduledSequence> {
  /** The prefilled sequence, when this chunk completed a fresh prompt: its next token is sampled from the chunk's last logits. */
  promptDone: S | null;
  /** A warm-up this chunk completed: it has left the scheduler, its row kept for the turn it warmed. */
  warmUpDone: S | null;
}

/**
 * Continuous batching at step granularity (vLLM v1 / llama.cpp slots): every step
 * decodes all running sequences and advances at most one prompt by one chunk. Admission
 * is bounded by `maxNumSeqs` and the KV budget; when a growing batch would exceed the
 * budget, the most recently admitted sequence is preempted and recomputed later.
 *
 * Admission is fair between API keys (round robin over the keys with requests waiting):
 * the next admitted is the oldest waiting request of the key admitted least recently, so
 * while a key has a request waiting, each other key gets at most one admission before
 * it. Within a key, and with one key (or none), it is FIFO. A key's own limits bound its
 * running requests (`maxConcurrent`: the rest wait) and its waiting ones (`maxQueued`).
 *
 * A prompt's chunk boundaries depend only on the prompt (the chunk size and message
 * starts, chunk_grid.ts), never on what else runs, so a request's numbers do not depend
 * on its neighbours.
 *
 * Warm-ups (a conversation's likely next turn, prefilled for the prefix cache) use only
 * idle time: one is admitted when nothing else runs or waits, and given up at the first
 * step a request waits, so a request waits at most for the chunk in flight.
 *
 * It owns the KV cache manager: the plan names each step's KV work, which the step
 * executor does as named.
 */
export class Scheduler<S extends CacheableSequence = CacheableSequence> {
  private readonly waiting: S[] = [];
  /** In admission order (the last is the first to be preempted). */
  private readonly running: S[] = [];
  /** Warm-ups not yet admitted, oldest first. */
  private readonly warmUps: S[] = [];
  /** The warm-up admitted, if any (it runs alone). */
  private warmUp: S | null = null;
  /** When each key was last admitted (an admission count), for the round robin. */
  private readonly lastAdmitted = new Map<string, number>();
  private admissions = 0;

  constructor(
    readonly config: SchedulerConfig,
    readonly kv: KvCacheManager<S>,
    /** Where prompt chunks end (chunk_grid.ts); by default every maxNumBatchedTokens. */
    private readonly grid: ChunkGrid = new ChunkGrid(config.maxNumBatchedTokens),
  ) {}

  /** Requests waiting (warm-ups are not requests). */
  get numWaiting(): number {
    return this.waiting.length;
  }

  get numRunning(): number {
    return this.running.length - (this.warmUp ? 1 : 0);
  }

  hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0 || this.warmUps.length > 0;
  }

  /**
   * Queues a warm-up, to run when the engine is idle; beyond `maxNumSeqs` of them the
   * oldest is forgotten (it never ran, so it holds nothing). Returns that one.
   */
  addWarmUp(seq: S): S | null {
    seq.state = 'waiting';
    this.warmUps.push(seq);
    return this.warmUps.length > this.config.maxNumSeqs ? this.warmUps.shift()! : null;
  }

  add(seq: S): void {
    // The queue bound counts requests that must wait: those a free batch slot will take
    // at the next step do not.
    const freeSlots = Math.max(0, this.config.maxNumSeqs - this.running.length);
    if (this.waiting.length >= this.config.maxQueue + freeSlots) {
      throw new QueueFullError(`The server is busy: ${this.waiting.length} requests are already waiting. Retry shortly.`);
    }
    const t = seq.tenant;
    if (t && t.maxQueued !== null) {
      const name = t.name;
      const waiting = this.waiting.filter((s) => keyOf(s) === name).length;
      const running = this.running.filter((s) => keyOf(s) === name).length;
      const free = Math.max(0, Math.min(freeSlots, (t.maxConcurrent ?? Infinity) - running));
      if (waiting >= t.maxQueued + free) {
        throw new KeyLimitError(
          `Rate limit reached for API key '${name}': max_queued ${t.maxQueued} (it has ${waiting} requests waiting${t.maxConcurrent !== null ? ` and ${running} running, max_concurrent ${t.maxConcurrent}` : ''}). Retry shortly.`,
          'max_queued',
        );
      }
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
    const lengths = this.running.map((s) => (extra && s === extra.seq ? extra.length : s.state === 'decode' ? s.numComputed + 1 : s.numComputed));
    if (extra && !this.running.includes(extra.seq)) lengths.push(extra.length);
    return lengths;
  }

  private fits(extra?: { seq: S; length: number }): boolean {
    return this.kv.slotsFor(this.needs(extra)) <= this.config.kvBudgetTokens;
  }

  /**
   * Decides the next step. `canDecode` leaves out running sequences that cannot take a
   * token this step (waiting for their grammar's mask); they keep their cache.
   * `warmUpNow` false holds warm-ups back even when idle.
   */
  schedule(canDecode: (seq: S) => boolean = () => true, warmUpNow = true): StepPlan<S> {
    const kv: KvSteps = kvSteps(this.kv.takeOrphans());
    const plan: StepPlan<S> = { admitted: [], preempted: [], decode: [], prefill: null, dropped: [], kv };
    if (this.warmUp && this.waiting.length > 0) {
      this.running.splice(this.running.indexOf(this.warmUp), 1);
      this.warmUp.state = 'finished';
      plan.dropped.push(this.warmUp);
      kv.free.push(this.warmUp.id);
      this.warmUp = null;
    }
    // Make room for this step's decode tokens, preempting the youngest first.
    while (this.running.length > 1 && !this.fits()) {
      const victim = this.running.pop()!;
      victim.numComputed = 0;
      victim.state = 'waiting';
      victim.preemptions++;
      this.waiting.unshift(victim);
      plan.preempted.push(victim);
      kv.free.push(victim.id);
    }
    plan.decode = this.running.filter((s) => s.state === 'decode' && canDecode(s));

    let candidate = this.running.find((s) => s.state === 'prefill');
    const at = !candidate && this.running.length < this.config.maxNumSeqs ? this.nextWaiting() : -1;
    if (at >= 0) {
      const next = this.waiting[at];
      // Admit only if the whole prefill fits next to what runs now.
      // It waits while blocks of its prompt are read from disk, the others decoding meanwhile.
      const found =
        this.fits({ seq: next, length: Scheduler.prefillTarget(next) }) || this.running.length === 0
          ? this.kv.lookUp(next, Scheduler.prefillTarget(next), kv)
          : null;
      if (found) {
        this.waiting.splice(at, 1);
        this.lastAdmitted.set(keyOf(next), this.admissions++);
        this.admit(next, found, plan);
        candidate = next;
      }
    }
    if (!candidate && warmUpNow && this.running.length === 0 && this.waiting.length === 0) candidate = this.admitWarmUp(plan);
    if (candidate) {
      const start = candidate.numComputed;
      const end = Math.min(Scheduler.prefillTarget(candidate), this.grid.end(candidate.tokens, start));
      if (this.fits({ seq: candidate, length: end })) {
        plan.prefill = { seq: candidate, start, end };
        kv.save = this.kv.save(candidate, start, end, kv);
      }
    }
    return plan;
  }

  /**
   * Where in `waiting` the next request to admit is, or -1: a preempted one first (it was
   * admitted before), else the oldest of the key admitted least recently, among keys
   * below their `maxConcurrent`.
   */
  private nextWaiting(): number {
    let best = -1;
    let bestLast = Infinity;
    const seen = new Set<string>();
    let running: Map<string, number> | null = null;
    for (let i = 0; i < this.waiting.length; i++) {
      const s = this.waiting[i];
      const key = keyOf(s);
      if (seen.has(key)) continue;
      seen.add(key);
      const cap = s.tenant?.maxConcurrent ?? null;
      if (cap !== null) {
        running ??= this.runningByKey();
        if ((running.get(key) ?? 0) >= cap) continue;
      }
      if (s.preemptions > 0 && s.numComputed === 0 && i === 0) return 0;
      const last = this.lastAdmitted.get(key) ?? -1;
      if (last < bestLast) {
        best = i;
        bestLast = last;
      }
    }
    return best;
  }

  private runningByKey(): Map<string, number> {
    const out = new Map<string, number>();
    for (const s of this.running) out.set(keyOf(s), (out.get(keyOf(s)) ?? 0) + 1);
    return out;
  }

  /** Gives `seq` a row, starting after the cached blocks `found`. */
  private admit(seq: S, found: Lookup, plan: StepPlan<S>): void {
    seq.state = 'prefill';
    seq.numComputed = found.cached;
    seq.cachedTokens ??= found.cached;
    this.running.push(seq);
    plan.admitted.push(seq);
    plan.kv.rows.push(this.kv.admit(seq, found, this.config.maxNumBatchedTokens));
  }

  /** Forgets every warm-up; returns the rows to free (the running one's, a finished one's). */
  dropWarmUps(): number[] {
    this.warmUps.length = 0;
    const rows = this.kv.takeOrphans();
    const kept = this.kv.dropWarmUpRow();
    if (kept !== null) rows.push(kept);
    const running = this.warmUp;
    if (!running) return rows;
    this.running.splice(this.running.indexOf(running), 1);
    running.state = 'finished';
    this.warmUp = null;
    return [running.id, ...rows];
  }

  /** Admits the oldest warm-up that still has blocks to compute and fits. */
  private admitWarmUp(plan: StepPlan<S>): S | undefined {
    while (this.warmUps.length > 0) {
      const next = this.warmUps.shift()!;
      const target = Scheduler.prefillTarget(next);
      if (!this.fits({ seq: next, length: target })) continue;
      // A warm-up computes what the disk tier holds rather than wait for it: never null.
      const found = this.kv.lookUp(next, target, plan.kv)!;
      if (found.cached >= target) continue;
      this.admit(next, found, plan);
      this.warmUp = next;
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
    if (!plan.prefill) return { promptDone: null, warmUpDone: null };
    const { seq, end } = plan.prefill;
    const fresh = seq.tokens.length === seq.promptLength;
    seq.numComputed = end;
    if (end < Scheduler.prefillTarget(seq)) return { promptDone: null, warmUpDone: null };
    if (seq === this.warmUp) {
      this.running.splice(this.running.indexOf(seq), 1);
      seq.state = 'finished';
      this.warmUp = null;
      this.kv.keepWarmUpRow(seq);
      return { promptDone: null, warmUpDone: seq };
    }
    seq.state = 'decode';
    // A recomputed sequence (after preemption) decodes its last token next instead.
    return { promptDone: fresh ? seq : null, warmUpDone: null };
  }
}

/** The round robin's name for a sequence's key; requests without one share ''. */
function keyOf(s: ScheduledSequence): string {
  return s.tenant?.name ?? '';
}
