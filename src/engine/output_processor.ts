import type { TokenLogprob } from '../runtime/sampler.js';
import { IncrementalDetokenizer, StopStringMatcher } from '../text/detokenizer.js';
import type { TokenVocabulary } from '../text/token_vocabulary.js';
import type { PromptScores } from './prompt_scores.js';
import type { EngineEvent, FinishReason, GenerateRequest } from './types.js';

/** How a request ends, when a token ends it. */
export interface Ending {
  reason: FinishReason;
  stopReason: string | number | null;
}

/**
 * Turns one request's accepted tokens into events: streaming detokenization, stop ids and
 * stop strings (held back until they can no longer match, never sent), the length limits,
 * and the finish event with the request's metrics.
 */
export class OutputProcessor {
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stopMatcher: StopStringMatcher;
  private readonly stopIds: Set<number>;
  private generated = 0;
  private admittedAt: number | null = null;
  private firstTokenAt: number | null = null;

  constructor(
    private readonly request: GenerateRequest,
    tokenizer: TokenVocabulary,
    private readonly prompt: PromptScores | null,
    private readonly maxModelLen: number,
    private readonly arrivedAt: number,
  ) {
    this.detokenizer = new IncrementalDetokenizer(tokenizer, request.skipSpecialTokens);
    this.stopMatcher = new StopStringMatcher(request.stop);
    this.stopIds = new Set(request.ignoreEos ? [] : request.stopTokenIds);
  }

  /** The text up to a stop string, and the stop string itself when the request keeps it (include_stop_str_in_output). */
  private untilStop(emit: string, matched: string | undefined): string {
    return this.request.includeStopStr ? emit + (matched ?? '') : emit;
  }

  admitted(now: number): void {
    this.admittedAt ??= now;
  }

  /**
   * The event of token `token`, the sequence's `length`th; `ending` when it ends the
   * request (a stop id or string, the grammar's end, a length limit).
   */
  token(
    token: number,
    logprob: TokenLogprob | null,
    grammarEnded: boolean,
    length: number,
    cachedTokens: number,
    now: number,
  ): { event: EngineEvent; ending: Ending | null } {
    this.generated++;
    this.firstTokenAt ??= now;
    const logprobs: TokenLogprob[] | null = logprob ? [logprob] : null;
    const event = (text: string) => this.event([token], text, logprobs, cachedTokens);
    if (this.stopIds.has(token)) {
      // The stop token's own text is kept only when asked (vLLM's include_stop_str_in_output;
      // a special token has none unless skip_special_tokens is off); the held text is released.
      const tail = (this.request.includeStopStr ? this.detokenizer.push(token) : '') + this.detokenizer.flush();
      const { emit, stopped, matched } = this.stopMatcher.push(tail);
      if (stopped) return { event: event(this.untilStop(emit, matched)), ending: { reason: 'stop', stopReason: matched ?? null } };
      return { event: event(emit + this.stopMatcher.flush()), ending: { reason: 'stop', stopReason: token } };
    }
    const { emit, stopped, matched } = this.stopMatcher.push(this.detokenizer.push(token));
    if (stopped) return { event: event(this.untilStop(emit, matched)), ending: { reason: 'stop', stopReason: matched ?? null } };
    // A stop token the grammar accepted that is not a stop id here (ignore_eos) ends it too.
    const atLimit = this.generated >= this.request.maxTokens || length >= this.maxModelLen;
    if (!grammarEnded && !atLimit) return { event: event(emit), ending: null };
    const text = emit + this.stopMatcher.push(this.detokenizer.flush()).emit + this.stopMatcher.flush();
    return { event: event(text), ending: { reason: grammarEnded ? 'stop' : 'length', stopReason: null } };
  }

  /** A request's event; the first one carries the prompt's scores when they were asked for. */
  /**
   * A prompt-only request's (empty) first event: the prompt's scores, and the output it
   * asked for of `last`, its last position's row (see GenerateRequest.promptOutput).
   */
  promptEvent(cachedTokens: number, last: Float32Array | null): EngineEvent {
    const event = this.event([], '', null, cachedTokens);
    const wanted = this.request.promptOutput;
    // A copy: the row lies in a buffer the runner may reuse.
    if (wanted && last) event.promptOutput = wanted === 'row' ? last.slice() : Float32Array.from(wanted, (i) => last[i]);
    return event;
  }

  event(tokenIds: number[], text: string, logprobs: TokenLogprob[] | null, cachedTokens: number): EngineEvent {
    const promptLogprobs = this.prompt?.scoredTo === Infinity ? undefined : this.prompt?.take();
    return {
      requestId: this.request.requestId,
      tokenIds,
      text,
      logprobs,
      ...(promptLogprobs ? { promptLogprobs } : {}),
      cachedTokens,
      finishReason: null,
      stopReason: null,
      metrics: null,
      error: null,
    };
  }

  finished(ending: Ending, cachedTokens: number, preemptions: number, now: number): EngineEvent {
    return {
      requestId: this.request.requestId,
      tokenIds: [],
      text: '',
      logprobs: null,
      finishReason: ending.reason,
      stopReason: ending.stopReason,
      metrics: {
        promptTokens: this.request.promptIds.length,
        completionTokens: this.generated,
        cachedTokens,
        queueMs: (this.admittedAt ?? now) - this.arrivedAt,
        firstTokenMs: (this.firstTokenAt ?? now) - this.arrivedAt,
        totalMs: now - this.arrivedAt,
        preemptions,
      },
      error: null,
    };
  }

  failed(message: string, status: number, type: string, code: string | null): EngineEvent {
    return {
      requestId: this.request.requestId,
      tokenIds: [],
      text: '',
      logprobs: null,
      finishReason: 'error',
      stopReason: null,
      metrics: null,
      error: { message, status, type, code },
    };
  }
}
