import { type TokenLogprob, tokenLogprob } from '../runtime/sampler.js';

/**
 * Prompt positions scored per run. Every position's logits are [tokens × vocab] floats
 * (151,936 per token for Qwen3: 600 KB), so a long chunk is scored in slices.
 */
export const PROMPT_SCORE_SLICE = 64;

/**
 * A request's prompt log-probabilities (echo with logprobs): entry p + 1 is prompt token
 * p + 1's, from the logits at position p. Positions before `scored` are done, kept across
 * a preemption's recompute so each is computed once; once handed to the first event
 * (`take`), nothing more is scored.
 */
export class PromptScores {
  private readonly logprobs: Array<TokenLogprob | null> = [null];
  private scored = 0;
  private taken = false;

  constructor(
    private readonly top: number,
    private readonly promptLength: number,
  ) {}

  /** Positions before this one need no logits any more (prefix-cache lookups may cover them). */
  get scoredTo(): number {
    return this.taken ? Infinity : this.scored;
  }

  /** Whether a prefill ending at `end` still has positions to score: it then runs with every position's logits. */
  pending(end: number): boolean {
    return !this.taken && this.scored < Math.min(end, this.promptLength - 1);
  }

  /** Scores prompt tokens from the logits of positions [from, to) of `tokens` (every position's, in order). */
  record(logits: Float32Array, from: number, to: number, tokens: readonly number[], vocab: number): void {
    const last = Math.min(to, this.promptLength - 1);
    for (let p = Math.max(from, this.scored); p < last; p++) {
      const row = logits.subarray((p - from) * vocab, (p - from + 1) * vocab);
      const token = tokens[p + 1];
      let rank = 1;
      for (let i = 0; i < vocab; i++) if (row[i] > row[token]) rank++;
      this.logprobs[p + 1] = { ...tokenLogprob(row, token, this.top), rank };
    }
    this.scored = Math.max(this.scored, last);
  }

  /** The scores, for the request's first event; after this the prompt is no longer scored. */
  take(): Array<TokenLogprob | null> {
    this.taken = true;
    return this.logprobs;
  }
}

/** Model runs a prefill of [start, end) takes: one, unless it scores the prompt in slices. */
export function prefillRuns(prompt: PromptScores | null, start: number, end: number): number {
  return prompt?.pending(end) ? Math.ceil((end - start) / PROMPT_SCORE_SLICE) : 1;
}
