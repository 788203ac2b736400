import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { type EngineEvent, type GenerateRequest, type SamplingParams, samplingDefaults, type TenantLimits } from '../engine/types.js';
import { AppError, ContextLengthExceededError, InvalidRequestError, NotFoundError } from '../errors.js';
import { shortened } from '../util/shortened.js';
import { type Caller, cacheSalt } from './caller.js';
import { paramName } from './chat_request.js';
import type { ServingContext } from './context.js';

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
  if (model !== undefined && model !== ctx.options.modelName && !ctx.options.aliases?.includes(model)) {
    throw new NotFoundError(`The model \`${shortened(model)}\` does not exist. This server serves \`${ctx.options.modelName}\`.`, {
      param: 'model',
      code: 'model_not_found',
    });
  }
}

const TASK_APIS: Readonly<Record<string, string>> = {
  chat: 'chat and completions (/v1/chat/completions, /v1/completions, /v1/responses, /v1/messages)',
  embed: 'embeddings (/v1/embeddings)',
  rerank: 'reranking (/v1/rerank)',
};

/**
 * Refuses a request for an API the model does not serve: an embedding model has no
 * logits to generate from; a reranker is a causal LM, so it serves chat as well.
 */
export function checkTask(ctx: ServingContext, api: 'chat' | 'embed' | 'rerank'): void {
  const served = ctx.task === api || (api === 'chat' && ctx.task === 'rerank');
  if (!served) {
    throw new InvalidRequestError(`The model \`${ctx.options.modelName}\` serves ${TASK_APIS[ctx.task]}, not ${TASK_APIS[api]}.`, {
      param: 'model',
      code: 'model_task_mismatch',
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
  let logitBias: Record<number, number> | null = null;
  if (f.logit_bias) {
    logitBias = {};
    for (const [k, v] of Object.entries(f.logit_bias)) {
      const id = Number(k);
      if (id >= ctx.tokenizer.vocabSize)
        throw new InvalidRequestError(`logit_bias names token ${id}, beyond the vocabulary (${ctx.tokenizer.vocabSize}).`, { param: 'logit_bias' });
      logitBias[id] = v;
    }
  }
  const d = samplingDefaults(ctx.generation);
  return {
    temperature: f.temperature ?? d.temperature,
    topP: f.top_p ?? d.topP,
    topK: f.top_k ?? d.topK,
    minP: f.min_p ?? d.minP,
    presencePenalty: f.presence_penalty ?? d.presencePenalty,
    frequencyPenalty: f.frequency_penalty ?? d.frequencyPenalty,
    repetitionPenalty: f.repetition_penalty ?? d.repetitionPenalty,
    logitBias,
    // Choices of one request differ: each gets its own seed derived from the request's.
    seed: f.seed === null || f.seed === undefined ? null : (f.seed + choiceIndex) >>> 0,
    logprobs,
  };
}

/**
 * The completion's bound: max_tokens capped to the room the prompt leaves (agents ask for
 * 32k tokens whatever their prompt), or all that room when none is given. A prompt that
 * leaves no room, or with --strict-max-tokens any request asking for more than is left,
 * is refused with OpenAI's context-length error.
 */
export function resolveMaxTokens(ctx: ServingContext, promptTokens: number, requested: number | null | undefined): number {
  const limit = ctx.engine.info!.limits.maxModelLen;
  const room = limit - promptTokens;
  const asked = requested ?? null;
  if (room < 1 || (asked !== null && asked > room && ctx.options.strictMaxTokens))
    throw requestFieldOf(new ContextLengthExceededError(limit, promptTokens, asked ?? 1));
  return asked === null ? room : Math.min(asked, room);
}

export interface CommonGenerationFields {
  /** vLLM's prefix-cache salt: blocks are shared only between requests with the same one. */
  cache_salt?: string | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean;
  include_stop_str_in_output?: boolean | null;
  skip_special_tokens?: boolean;
}

export function engineRequest(
  ctx: ServingContext,
  promptIds: number[],
  sampling: SamplingParams,
  maxTokens: number,
  f: CommonGenerationFields,
  caller: Caller,
): GenerateRequest {
  const stop = f.stop === null || f.stop === undefined ? [] : typeof f.stop === 'string' ? [f.stop] : f.stop;
  return {
    requestId: randomUUID(),
    promptIds,
    sampling,
    maxTokens,
    stopTokenIds: [...ctx.generation.eosTokenIds, ...(f.stop_token_ids ?? [])],
    stop: stop.filter((s) => s.length > 0),
    includeStopStr: f.include_stop_str_in_output ?? false,
    ignoreEos: f.ignore_eos ?? false,
    skipSpecialTokens: f.skip_special_tokens ?? true,
    cacheSalt: cacheSalt(caller, f.cache_salt),
    tenant: caller.limits,
  };
}

export function checkTokenIds(ctx: ServingContext, ids: number[], param: string): void {
  for (const id of ids) {
    if (id >= ctx.tokenizer.vocabSize)
      throw new InvalidRequestError(`Token id ${id} is beyond the vocabulary (${ctx.tokenizer.vocabSize}).`, { param });
  }
}

export function unixNow(): number {
  return Math.floor(Date.now() / 1000);
}

/**
 * Queues all choices of a request; if one is refused, the others are aborted and the
 * refusal thrown. `field` names what makes a request many sequences (n, or the inputs).
 */
export async function submitAll(
  ctx: ServingContext,
  requests: GenerateRequest[],
  signal: AbortSignal,
  field: { param: string; what: string } = { param: 'n', what: 'sequences (n × prompts)' },
): Promise<AsyncGenerator<EngineEvent>[]> {
  const most = mostQueued(ctx, requests[0]?.tenant ?? null);
  // More sequences than could ever wait at once is the request's own fault: no retry would help.
  if (requests.length > most)
    throw new InvalidRequestError(
      `This request asks for ${requests.length} ${field.what}, and at most ${most} can be queued at once here (--max-num-seqs plus --max-queue). Send fewer per request.`,
      { param: field.param },
    );
  const results = await Promise.allSettled(requests.map((r) => ctx.engine.submit(r, signal)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    requests.forEach((r) => ctx.engine.abort(r.requestId));
    throw requestFieldOf(failed.reason);
  }
  return results.map((r) => (r as PromiseFulfilledResult<AsyncGenerator<EngineEvent>>).value);
}

/** The most sequences one request can queue on an idle engine: the batch plus the queue, or its key's share of them. */
function mostQueued(ctx: ServingContext, tenant: TenantLimits | null): number {
  const limits = ctx.engine.info?.limits;
  if (!limits) return Infinity;
  const server = limits.maxNumSeqs + limits.maxQueue;
  if (tenant?.maxQueued == null) return server;
  return Math.min(server, Math.min(limits.maxNumSeqs, tenant.maxConcurrent ?? Infinity) + tenant.maxQueued);
}

/** The request field each coded error from the engine is about: the one place codes meet the protocols' field names. */
const FIELD_OF_CODE: Readonly<Record<string, string>> = {
  context_length_exceeded: 'max_tokens',
  empty_prompt: 'prompt',
  prompt_logprobs_unavailable: 'echo',
};

/** `err`, naming the request field its code is about when it names none. */
export function requestFieldOf(err: unknown): unknown {
  if (!(err instanceof AppError) || err.param !== null || err.code === null) return err;
  const field = FIELD_OF_CODE[err.code];
  return field ? err.withParam(field) : err;
}

/**
 * Runs `run`, naming the request field of any error it throws as another protocol names
 * it: a chat session speaks Chat Completions' fields, which the Responses and Messages
 * APIs call otherwise. `names` maps a field (and everything under it) to the protocol's name.
 */
export async function inProtocolTerms<T>(names: Readonly<Record<string, string>>, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw renamedField(err, names);
  }
}

function renamedField(err: unknown, names: Readonly<Record<string, string>>): unknown {
  if (!(err instanceof AppError) || err.param === null) return err;
  const old = err.param;
  const field = Object.keys(names).find((f) => old === f || old.startsWith(`${f}.`) || old.startsWith(`${f}[`));
  if (field === undefined) return err;
  const param = names[field];
  const named = err.message.startsWith(`${old} `) ? `${param}${err.message.slice(old.length)}` : err.message;
  return err.withParam(param, named.split(`'${old}'`).join(`'${param}'`));
}

/** OpenAI's ids: a prefix and 32 hex digits (tool calls: 24). */
export function newId(prefix: string, length = 32): string {
  return `${prefix}${randomUUID().replace(/-/g, '').slice(0, length)}`;
}
