import { Sampler, type SequenceHistory, type TokenLogprob, tokenLogprob } from '../runtime/sampler.js';
import type { RemoteConstraint } from './grammar_service.js';
import type { GenerateRequest } from './types.js';

/** What the selector made of one row of logits. */
export type Selection =
  | { kind: 'token'; token: number; logprob: TokenLogprob | null; grammarEnded: boolean }
  /** The grammar thread has not sent the mask yet: the logits are kept (see `takeReady`). */
  | { kind: 'held' }
  /** The grammar allows nothing more: the answer is complete. */
  | { kind: 'complete' }
  | { kind: 'failed'; message: string };

/**
 * Picks one sequence's next token: the thinking budget's forced tokens, the grammar's
 * mask (held logits while it is computed), penalties over the history, and the sampler.
 */
export class TokenSelector {
  private readonly sampler: Sampler;
  private readonly history: SequenceHistory;
  /** The constraint holds from now on (false while a thinking block runs before it). */
  private constrained: boolean;
  /** Logits waiting for the grammar's mask: the sequence sits out decode steps until it is sampled from them. */
  private held: Float32Array | null = null;
  /** Thinking tokens so far, whether thinking ended, and the transition tokens still to write once the budget ran out. */
  private readonly thinking: { count: number; ended: boolean; forced: number[] | null } | null;

  constructor(
    private readonly request: GenerateRequest,
    vocabSize: number,
    private readonly constraint: RemoteConstraint | null,
  ) {
    this.sampler = new Sampler(request.sampling, vocabSize);
    this.history = { outputCounts: new Map(), seen: new Set(request.promptIds) };
    this.constrained = request.grammarAfter === null || request.grammarAfter === undefined;
    this.thinking = request.thinkingBudget ? { count: 0, ended: false, forced: null } : null;
  }

  get holding(): boolean {
    return this.held !== null;
  }

  /** Held logits whose mask has arrived since, handed back to be selected from; null if none. */
  takeReady(): Float32Array | null {
    if (!this.held || !this.constraint?.ready) return null;
    const logits = this.held;
    this.held = null;
    return logits;
  }

  /** Forgets held logits: a preemption's recompute computes them again from the same tokens. */
  dropHeld(): void {
    this.held = null;
  }

  dispose(): void {
    this.held = null;
    this.constraint?.dispose();
  }

  /** Selects the next token from `logits`, which a constraint masks in place. */
  select(logits: Float32Array): Selection {
    const forced = this.forcedToken();
    if (forced !== null) {
      const top = this.request.sampling.logprobs;
      return this.accept(forced, top === null ? null : tokenLogprob(logits, forced, top));
    }
    const constraint = this.constrained ? this.constraint : null;
    if (constraint) {
      if (constraint.failed) return { kind: 'failed', message: constraint.failed };
      if (!constraint.ready) {
        // No step waits for another thread's compile: the logits wait instead.
        this.held = logits.slice();
        return { kind: 'held' };
      }
      if (constraint.mask(logits) === 0) return { kind: 'complete' };
    }
    const { token, logprob } = this.sampler.sample(logits, this.history);
    return this.accept(token, logprob);
  }

  /**
   * The thinking budget: once a sequence has thought for its budget without ending the
   * thinking, the transition's tokens are written one per step instead of sampled (each
   * goes through the model like any token, so the answer that follows sees them).
   */
  private forcedToken(): number | null {
    const t = this.thinking;
    const budget = this.request.thinkingBudget;
    if (!t || !budget) return null;
    if (!t.ended && t.forced === null && t.count >= budget.tokens) t.forced = [...budget.transition];
    return t.forced && t.forced.length > 0 ? t.forced.shift()! : null;
  }

  private accept(token: number, logprob: TokenLogprob | null): Selection {
    const constraint = this.constrained ? this.constraint : null;
    if (this.thinking && !this.thinking.ended) {
      // Thinking ends at </think>, sampled or forced; until then each token counts.
      if (token === this.request.thinkingBudget!.endId) this.thinking.ended = true;
      else this.thinking.count++;
    }
    // Masked tokens have -Infinity logits, so the sampled one is always accepted.
    constraint?.accept(token);
    if (this.constraint && token === this.request.grammarAfter) this.constrained = true;
    this.history.seen.add(token);
    this.history.outputCounts.set(token, (this.history.outputCounts.get(token) ?? 0) + 1);
    return { kind: 'token', token, logprob, grammarEnded: constraint?.terminated ?? false };
  }
}
