import { DEFAULT_SAMPLING } from '../runtime/sampler.js';
import type { TokenVocabulary } from '../text/token_vocabulary.js';
import type { RemoteConstraint } from './grammar_service.js';
import { OutputProcessor } from './output_processor.js';
import { type PrefixKeys, prefixKeys } from './prefix_cache.js';
import { PromptScores } from './prompt_scores.js';
import { TokenSelector } from './token_selector.js';
import type { GenerateRequest, TenantLimits } from './types.js';

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
  /** Prompt tokens served from the prefix cache at its first admission (null before it). */
  cachedTokens: number | null;
  /** The API key it came with and that key's limits (null: none); the scheduler shares the batch fairly between keys. */
  readonly tenant?: TenantLimits | null;
}

/** What the KV cache manager reads of a sequence, besides what the scheduler keeps. */
export interface CacheableSequence extends ScheduledSequence {
  /** A warm-up: a prefill of a conversation's likely next turn for the prefix cache, which no request waits for. */
  readonly warmUp: boolean;
  /** Its blocks' names in the prefix cache, computed as needed. */
  readonly prefixKeys: PrefixKeys;
  /** Its prompt's scores when asked for: positions still to score need their logits computed. */
  readonly prompt: PromptScores | null;
}

/**
 * One request, or warm-up, inside the engine: the scheduler's counts and state, the KV
 * cache manager's keys, the token selector that picks its tokens and the output
 * processor that turns them into events.
 */
export interface Sequence extends CacheableSequence {
  readonly request: GenerateRequest;
  readonly selector: TokenSelector;
  readonly output: OutputProcessor;
}

export interface SequenceContext {
  tokenizer: TokenVocabulary;
  vocabSize: number;
  maxModelLen: number;
  now: number;
}

export function newSequence(
  id: number,
  req: GenerateRequest,
  constraint: RemoteConstraint | null,
  ctx: SequenceContext,
  warmUp: { keys: PrefixKeys } | null = null,
): Sequence {
  const wantsPrompt = req.promptLogprobs !== null && req.promptLogprobs !== undefined;
  const prompt = wantsPrompt ? new PromptScores(req.promptLogprobs!, req.promptIds.length) : null;
  return {
    id,
    tokens: [...req.promptIds],
    promptLength: req.promptIds.length,
    numComputed: 0,
    state: 'waiting',
    preemptions: 0,
    cachedTokens: null,
    tenant: req.tenant ?? null,
    warmUp: warmUp !== null,
    prefixKeys: warmUp?.keys ?? prefixKeys(false, req.cacheSalt ?? null),
    prompt,
    request: req,
    selector: new TokenSelector(req, ctx.vocabSize, constraint),
    output: new OutputProcessor(req, ctx.tokenizer, prompt, ctx.maxModelLen, ctx.now),
  };
}

/** A warm-up of `tokens`, whole blocks named by `keys` (KvCacheManager.warmUpPrompt): a request of no one, which emits nothing. */
export function newWarmUp(id: number, tokens: number[], keys: PrefixKeys, ctx: SequenceContext): Sequence {
  const req: GenerateRequest = {
    cacheSalt: keys.salt ?? null,
    requestId: `warm-${id}`,
    promptIds: tokens,
    sampling: DEFAULT_SAMPLING,
    maxTokens: 0,
    stopTokenIds: [],
    stop: [],
    ignoreEos: true,
    skipSpecialTokens: true,
  };
  return newSequence(id, req, null, ctx, { keys });
}
