import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { ContextLengthExceededError, InvalidRequestError, NotFoundError } from '../errors.js';
import type { GenerateRequest } from '../engine/types.js';
import type { SamplingParams, TokenLogprob } from '../runtime/sampler.js';
import type { ServingContext } from './context.js';
import { paramName } from './schemas.js';

/** Validates a body against a zod schema; the first problem becomes a 400 naming its param. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidRequestError('The request body must be a JSON object.');
  }
  const r = schema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0];
    // Unions report their first branch's failure deep inside; the path still names the field.
    const param = paramName(issue.path);
    throw new InvalidRequestError(`Invalid value for '${param || 'body'}': ${issue.message}`, { param: param || null });
  }
  return r.data;
}

export function checkModel(ctx: ServingContext, model: string | undefined): void {
  if (model !== undefined && model !== ctx.options.modelName) {
    throw new NotFoundError(`The model \`${model}\` does not exist. This server serves \`${ctx.options.modelName}\`.`, {
      param: 'model',
      code: 'model_not_found',
    });
  }
}

export interface SamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  seed?: number | null;
}

/** Request values over the checkpoint's generation_config.json defaults. */
export function samplingParams(ctx: ServingContext, f: SamplingFields, logprobs: number | null, choiceIndex: number): SamplingParams {
  const g = ctx.generation;
  let logitBias: Record<number, number> | null = null;
  if (f.logit_bias) {
    logitBias = {};
    for (const [k, v] of Object.entries(f.logit_bias)) {
      const id = Number(k);
      if (id >= ctx.tokenizer.vocabSize) throw new InvalidRequestError(`logit_bias names token ${id}, beyond the vocabulary (${ctx.tokenizer.vocabSize}).`, { param: 'logit_bias' });
      logitBias[id] = v;
    }
  }
  return {
    temperature: f.temperature ?? g.temperature ?? 1,
    topP: f.top_p ?? g.topP ?? 1,
    topK: f.top_k ?? g.topK ?? 0,
    minP: f.min_p ?? g.minP ?? 0,
    presencePenalty: f.presence_penalty ?? 0,
    frequencyPenalty: f.frequency_penalty ?? 0,
    repetitionPenalty: f.repetition_penalty ?? g.repetitionPenalty ?? 1,
    logitBias,
    // Choices of one request differ: each gets its own seed derived from the request's.
    seed: f.seed === null || f.seed === undefined ? null : (f.seed + choiceIndex) >>> 0,
    logprobs,
  };
}

/** max_tokens as given, or all the room the context leaves; over-long requests are a 400. */
export function resolveMaxTokens(ctx: ServingContext, promptTokens: number, requested: number | null | undefined, param: string): number {
  const limit = ctx.engine.info!.limits.maxModelLen;
  if (requested !== null && requested !== undefined) {
    if (promptTokens + requested > limit) {
      throw new ContextLengthExceededError(
        `This model's maximum context length is ${limit} tokens. However, you requested ${promptTokens + requested} tokens (${promptTokens} in the messages, ${requested} in the completion). Please reduce the length of the messages or completion.`,
        param,
      );
    }
    return requested;
  }
  if (promptTokens >= limit) {
    throw new ContextLengthExceededError(
      `This model's maximum context length is ${limit} tokens. However, your prompt has ${promptTokens} tokens, which leaves no room for a completion. Please reduce the length of the prompt.`,
      'messages',
    );
  }
  return limit - promptTokens;
}

export interface CommonGenerationFields {
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean;
  skip_special_tokens?: boolean;
}

export function engineRequest(
  ctx: ServingContext,
  promptIds: number[],
  sampling: SamplingParams,
  maxTokens: number,
  f: CommonGenerationFields,
): GenerateRequest {
  const stop = f.stop === null || f.stop === undefined ? [] : typeof f.stop === 'string' ? [f.stop] : f.stop;
  return {
    requestId: randomUUID(),
    promptIds,
    sampling,
    maxTokens,
    stopTokenIds: [...ctx.generation.eosTokenIds, ...(f.stop_token_ids ?? [])],
    stop: stop.filter((s) => s.length > 0),
    ignoreEos: f.ignore_eos ?? false,
    skipSpecialTokens: f.skip_special_tokens ?? true,
  };
}

export function checkTokenIds(ctx: ServingContext, ids: number[], param: string): void {
  for (const id of ids) {
    if (id >= ctx.tokenizer.vocabSize) throw new InvalidRequestError(`Token id ${id} is beyond the vocabulary (${ctx.tokenizer.vocabSize}).`, { param });
  }
}

// One decoder for all logprob token names: this runs up to 21 times per generated token.
const utf8 = new TextDecoder();

/** How a token is named in logprobs: its text, or `token_id:N` when asked (byte pieces never collide). */
export function tokenName(ctx: ServingContext, id: number, asIds: boolean): { token: string; bytes: number[] } {
  const bytes = ctx.tokenizer.tokenBytes(id) ?? new Uint8Array();
  return { token: asIds ? `token_id:${id}` : utf8.decode(bytes), bytes: Array.from(bytes) };
}

/** OpenAI chat `logprobs.content` entries. */
export function chatLogprobs(ctx: ServingContext, lps: TokenLogprob[], asIds: boolean) {
  return lps.map((lp) => ({
    ...tokenName(ctx, lp.token, asIds),
    logprob: lp.logprob,
    top_logprobs: lp.top.map((t) => ({ ...tokenName(ctx, t.token, asIds), logprob: t.logprob })),
  }));
}

/**
 * vLLM's `prompt_logprobs`: per prompt token, null for the first, else its own entry and
 * the `n` most likely, keyed by token id, each with its log-probability, 1-based rank
 * and text.
 */
export function vllmPromptLogprobs(ctx: ServingContext, scores: Array<TokenLogprob | null>, n: number) {
  return scores.map((lp) => {
    if (!lp) return null;
    const entry = (token: number, logprob: number, rank: number | null) => ({ logprob, rank, decoded_token: tokenName(ctx, token, false).token });
    const out: Record<string, ReturnType<typeof entry>> = {};
    lp.top.slice(0, n).forEach((t, i) => (out[t.token] = entry(t.token, t.logprob, i + 1)));
    out[lp.token] = entry(lp.token, lp.logprob, lp.rank ?? null);
    return out;
  });
}

export function unixNow(): number {
  return Math.floor(Date.now() / 1000);
}
