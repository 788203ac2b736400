import { ContextLengthExceededError, InvalidRequestError } from '../errors.js';
import type { GrammarService, GrammarStats, RemoteConstraint } from './grammar_service.js';
import type { EngineLimits, GenerateRequest } from './types.js';

export interface IntakeOptions {
  /** Builds the grammar engine, on the first structured request: most servers never need it. */
  grammars?: () => GrammarService;
  /** Stop tokens a grammar ends with when a request names none. */
  eosTokenIds?: number[];
}

/**
 * A request on its way into the engine: checked against the engine's limits, with errors
 * that carry codes (the serving layer names the request fields), and its grammar compiled
 * on the grammar thread first. An abort while it compiles is remembered and applied once
 * it is queued, so every abort takes the one path through EngineCore.abort.
 */
export class RequestIntake {
  /** Requests whose grammar is being compiled, and whether they were aborted meanwhile. */
  private readonly preparing = new Map<string, boolean>();
  private grammars: GrammarService | null = null;

  constructor(
    private readonly limits: EngineLimits,
    /** The export returns every position's logits (prompt log-probabilities). */
    private readonly promptLogits: boolean,
    private readonly options: IntakeOptions,
    /** Values per output row (the vocabulary, or an embedding model's hidden size). */
    private readonly rowWidth = Infinity,
  ) {}

  /** Throws why the engine cannot take `req`, if it cannot. */
  check(req: GenerateRequest, constraint: RemoteConstraint | null): void {
    if (Boolean(req.grammar) !== Boolean(constraint)) throw new Error('a grammar request needs its constraint, and only it');
    if (req.promptIds.length === 0) throw new InvalidRequestError('The prompt is empty.', { code: 'empty_prompt' });
    if (req.maxTokens < 0) throw new Error(`maxTokens ${req.maxTokens} is negative`);
    if (req.promptLogprobs !== null && req.promptLogprobs !== undefined && !this.promptLogits) {
      const message =
        "This export returns only the last position's logits, so prompt log-probabilities (echo with logprobs) are unavailable; export the model again.";
      throw new InvalidRequestError(message, { code: 'prompt_logprobs_unavailable' });
    }
    if (req.promptOutput !== null && req.promptOutput !== undefined) {
      if (req.maxTokens !== 0) throw new Error('a prompt output is for prompt-only requests (maxTokens 0)');
      if (Array.isArray(req.promptOutput) && req.promptOutput.some((i) => !Number.isInteger(i) || i < 0 || i >= this.rowWidth))
        throw new Error(`a prompt output index is outside the row (${this.rowWidth})`);
    }
    // The one context-length check: the serving layer only fills in max_tokens when absent.
    const { maxModelLen } = this.limits;
    if (req.promptIds.length + req.maxTokens > maxModelLen) throw new ContextLengthExceededError(maxModelLen, req.promptIds.length, req.maxTokens);
  }

  /** Compiles `req`'s grammar; `aborted` when the request was aborted meanwhile. */
  async compile(req: GenerateRequest): Promise<{ constraint: RemoteConstraint; aborted: boolean }> {
    if (!this.options.grammars) throw new Error('this engine has no grammar engine');
    this.grammars ??= this.options.grammars();
    this.preparing.set(req.requestId, false);
    try {
      const constraint = await this.grammars.open(req.grammar!, req.stopTokenIds.length > 0 ? req.stopTokenIds : (this.options.eosTokenIds ?? []));
      return { constraint, aborted: this.preparing.get(req.requestId) ?? false };
    } finally {
      this.preparing.delete(req.requestId);
    }
  }

  /** Marks a request being compiled as aborted; false if `requestId` is not one. */
  abort(requestId: string): boolean {
    if (!this.preparing.has(requestId)) return false;
    this.preparing.set(requestId, true);
    return true;
  }

  /** Requests whose grammar is being compiled. */
  compiling(): string[] {
    return [...this.preparing.keys()];
  }

  stats(): GrammarStats | null {
    return this.grammars?.stats() ?? null;
  }

  /** Stops the grammar thread, if one was started. */
  async close(): Promise<void> {
    await this.grammars?.shutdown();
  }
}
