import { randomUUID } from 'node:crypto';
import { DEFAULT_SAMPLING, type GenerateRequest } from '../engine/types.js';
import { InvalidRequestError } from '../errors.js';
import { ANONYMOUS, type Caller, cacheSalt } from '../serving/caller.js';
import type { ServingContext } from '../serving/context.js';
import { checkModel, checkTask, checkTokenIds, parseBody, submitAll } from '../serving/request.js';
import type { Served } from '../serving/served.js';
import { type EmbeddingRequest, embeddingRequestSchema } from './retrieval_schemas.js';

/** Every form of `input` as token-id lists, each text ending with the tokenizer's appended token (Qwen3-Embedding's `<|endoftext|>`). */
async function inputsOf(ctx: ServingContext, input: EmbeddingRequest['input']): Promise<number[][]> {
  const texts = typeof input === 'string' ? [input] : typeof input[0] === 'string' ? (input as string[]) : null;
  if (texts === null) return input.length > 0 && typeof input[0] === 'number' ? [input as number[]] : (input as number[][]);
  const end = ctx.inputEndToken;
  return Promise.all(texts.map(async (t) => [...(await ctx.codec.encode(t)), ...(end === null ? [] : [end])]));
}

/**
 * A prompt-only engine request whose first event carries the last position's hidden state;
 * its prefix-cache blocks are the caller's key's, as a chat request's are.
 */
export function promptOnlyRequest(promptIds: number[], promptOutput: GenerateRequest['promptOutput'], caller: Caller): GenerateRequest {
  return {
    requestId: randomUUID(),
    promptIds,
    // Nothing is sampled (maxTokens 0); greedy keeps the request plain.
    sampling: { ...DEFAULT_SAMPLING, temperature: 0 },
    maxTokens: 0,
    stopTokenIds: [],
    stop: [],
    ignoreEos: true,
    skipSpecialTokens: true,
    promptOutput,
    cacheSalt: cacheSalt(caller, null),
  };
}

/** Runs prompt-only requests and gathers what each asked for of its last position, with its metrics (under the caller's key). */
export async function runPromptOutputs(
  ctx: ServingContext,
  requests: GenerateRequest[],
  signal: AbortSignal,
  caller: Caller,
  field: { param: string; what: string },
): Promise<{ outputs: Float32Array[]; cachedTokens: number } | null> {
  const streams = await submitAll(ctx, requests, signal, field);
  const outputs: Float32Array[] = new Array(requests.length);
  let cachedTokens = 0;
  await Promise.all(
    streams.map(async (s, i) => {
      for await (const ev of s) {
        if (ev.promptOutput) outputs[i] = ev.promptOutput;
        if (ev.finishReason) {
          if (ev.metrics) {
            // Their input tokens count toward the key's tokens per minute, as OpenAI counts embedding tokens.
            ctx.observe(ev.metrics, ev.finishReason, caller.key);
            cachedTokens += ev.metrics.cachedTokens;
          }
        }
      }
    }),
  );
  if (signal.aborted || outputs.some((o) => o === undefined)) return null;
  return { outputs, cachedTokens };
}

/** L2-normalized float32 copy of `v`'s first `dims` values (float64 sums: the same vector whatever else runs). */
export function normalized(v: Float32Array, dims: number): Float32Array {
  let sum = 0;
  for (let i = 0; i < dims; i++) sum += v[i] * v[i];
  const scale = sum > 0 ? 1 / Math.sqrt(sum) : 0;
  const out = new Float32Array(dims);
  for (let i = 0; i < dims; i++) out[i] = v[i] * scale;
  return out;
}

/** A float32 vector as OpenAI's base64 encoding: its little-endian bytes. */
export function base64Vector(v: Float32Array): string {
  const bytes = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) bytes.writeFloatLE(v[i], i * 4);
  return bytes.toString('base64');
}

/**
 * POST /v1/embeddings: each input is a prompt-only engine request (batched by the scheduler
 * with everything else, its blocks in the prefix cache); the last token's hidden state,
 * shortened to `dimensions` when asked, L2-normalized.
 */
export async function serveEmbeddings(ctx: ServingContext, body: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(embeddingRequestSchema, body);
  checkModel(ctx, req.model);
  checkTask(ctx, 'embed');
  const hidden = ctx.engine.info!.hiddenSize;
  const dims = req.dimensions ?? hidden;
  if (dims > hidden)
    throw new InvalidRequestError(`dimensions ${dims} is more than this model's ${hidden}.`, { param: 'dimensions', code: 'invalid_dimensions' });
  const limit = ctx.engine.info!.limits.maxModelLen;
  const keep = req.truncate_prompt_tokens === -1 ? limit : (req.truncate_prompt_tokens ?? null);
  if (keep !== null && keep > limit)
    throw new InvalidRequestError(`truncate_prompt_tokens ${keep} is more than this model's maximum context length (${limit}).`, {
      param: 'truncate_prompt_tokens',
    });
  let inputs = await inputsOf(ctx, req.input);
  // vLLM keeps an input's last tokens: the end a last-token pooling model reads.
  if (keep !== null) inputs = inputs.map((ids) => (ids.length > keep ? ids.slice(ids.length - keep) : ids));
  inputs.forEach((ids, i) => {
    const param = inputs.length > 1 ? `input[${i}]` : 'input';
    if (ids.length === 0) throw new InvalidRequestError('An input has no tokens.', { param });
    if (ids.length > limit)
      throw new InvalidRequestError(
        `This model's maximum context length is ${limit} tokens, but ${param} has ${ids.length}. Shorten it, or set truncate_prompt_tokens to keep its last tokens.`,
        { param, code: 'context_length_exceeded' },
      );
    checkTokenIds(ctx, ids, param);
  });
  const run = await runPromptOutputs(
    ctx,
    inputs.map((ids) => promptOnlyRequest(ids, 'row', caller)),
    signal,
    caller,
    { param: 'input', what: 'inputs' },
  );
  if (!run) return { body: null };
  const base64 = req.encoding_format === 'base64';
  const promptTokens = inputs.reduce((n, ids) => n + ids.length, 0);
  return {
    body: {
      object: 'list',
      data: run.outputs.map((row, index) => {
        const v = normalized(row, dims);
        return { object: 'embedding', index, embedding: base64 ? base64Vector(v) : Array.from(v) };
      }),
      model: ctx.options.modelName,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, prompt_tokens_details: { cached_tokens: run.cachedTokens } },
    },
  };
}
