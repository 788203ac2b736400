import type { EngineEvent } from '../engine/types.js';
import { InvalidRequestError } from '../errors.js';
import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ServingContext } from '../serving/context.js';
import {
  checkModel,
  checkTask,
  checkTokenIds,
  engineRequest,
  newId,
  parseBody,
  resolveMaxTokens,
  samplingParams,
  submitAll,
  unixNow,
} from '../serving/request.js';
import type { Served } from '../serving/served.js';
import { grammarRequest } from '../serving/structured_output.js';
import { generated, legacyLogprobs, promptScores, type ScoredToken, vllmPromptLogprobs } from './logprobs.js';
import { type CompletionRequest, completionRequestSchema } from './schemas.js';

/** Every form of `prompt` as token-id lists. */
async function promptsOf(ctx: ServingContext, prompt: CompletionRequest['prompt']): Promise<number[][]> {
  if (typeof prompt === 'string') return [await ctx.codec.encode(prompt)];
  if (prompt.length > 0 && typeof prompt[0] === 'number') return [prompt as number[]];
  if (typeof prompt[0] === 'string') return Promise.all((prompt as string[]).map((p) => ctx.codec.encode(p)));
  return prompt as number[][];
}

/**
 * POST /v1/completions: each prompt × `n` becomes an engine request; their events become
 * a text_completion (with echo, legacy logprobs and vLLM's prompt_logprobs when asked)
 * or a stream of them.
 */
export async function serveCompletions(ctx: ServingContext, input: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(completionRequestSchema, input);
  checkModel(ctx, req.model);
  checkTask(ctx, 'chat');
  if (req.suffix) throw new InvalidRequestError('suffix is not supported.', { param: 'suffix' });
  const n = req.n ?? 1;
  if (req.best_of !== null && req.best_of !== undefined && req.best_of !== n) {
    throw new InvalidRequestError('best_of other than n is not supported.', { param: 'best_of' });
  }
  if (req.max_tokens === 0 && !req.echo) {
    throw new InvalidRequestError('max_tokens must be at least 1 (0 is allowed with echo: the prompt alone).', { param: 'max_tokens' });
  }
  // echo with logprobs scores the prompt's own tokens too (as vLLM and the original API
  // do); the engine refuses it for exports that cannot.
  const scorePrompt = (req.echo ?? false) && req.logprobs !== null && req.logprobs !== undefined;
  const prompts = await promptsOf(ctx, req.prompt);
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new InvalidRequestError('A prompt is empty.', { param: 'prompt' });
    checkTokenIds(ctx, p, prompts.length > 1 ? `prompt[${i}]` : 'prompt');
  });
  const logprobs = req.logprobs ?? null;
  const grammar = grammarRequest(req);
  const asIds = req.return_tokens_as_token_ids ?? false;
  const requests = prompts.flatMap((p) => {
    const maxTokens = resolveMaxTokens(ctx, p.length, req.max_tokens ?? (req.max_tokens === null ? null : 16));
    return Array.from({ length: n }, (_, i) => ({
      ...engineRequest(ctx, p, samplingParams(ctx, req, logprobs, i), maxTokens, req, caller),
      // Both echo's scores and vLLM's prompt_logprobs come from one scoring pass.
      promptLogprobs: scorePrompt || req.prompt_logprobs != null ? Math.max(scorePrompt ? logprobs! : 0, req.prompt_logprobs ?? 0) : null,
      grammar,
    }));
  });
  const streams = await submitAll(ctx, requests, signal);
  const id = newId('cmpl-');
  const created = unixNow();
  const model = ctx.options.modelName;
  const echoTexts = req.echo ? await Promise.all(requests.map((r) => ctx.codec.decode(r.promptIds, false))) : [];
  const echoText = (i: number) => echoTexts[i] ?? '';
  const state = requests.map(() => ({
    text: '',
    logprobs: [] as ScoredToken[],
    prompt: null as EngineEvent['promptLogprobs'] | null,
    tokens: 0,
    finish: null as EngineEvent | null,
  }));
  const usage = () => {
    const prompt = requests.reduce((s, r, i) => s + (i % n === 0 ? r.promptIds.length : 0), 0);
    const completion = state.reduce((s, c) => s + c.tokens, 0);
    // Each prompt's first choice ran it; the others share its blocks.
    const cached = state.reduce((s, c, i) => s + (i % n === 0 ? (c.finish?.metrics?.cachedTokens ?? 0) : 0), 0);
    return {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      prompt_tokens_details: { cached_tokens: cached },
    };
  };
  const account = (i: number, ev: EngineEvent) => {
    state[i].tokens += ev.tokenIds.length;
    if (ev.promptLogprobs) {
      state[i].prompt = ev.promptLogprobs;
      if (scorePrompt) state[i].logprobs.push(...promptScores(requests[i].promptIds, ev, logprobs!));
    }
    if (ev.logprobs) state[i].logprobs.push(...generated(ev.logprobs));
    if (ev.finishReason) {
      state[i].finish = ev;
      if (ev.metrics) ctx.observe(ev.metrics, ev.finishReason, caller.key);
    }
  };
  const reason = (i: number) => {
    const r = state[i].finish?.finishReason ?? 'stop';
    return r === 'abort' || r === 'error' ? 'stop' : r;
  };

  if (!req.stream) {
    await Promise.all(
      streams.map(async (s, i) => {
        for await (const ev of s) {
          account(i, ev);
          state[i].text += ev.text;
        }
      }),
    );
    if (signal.aborted) return { body: null };
    return {
      body: {
        id,
        object: 'text_completion',
        created,
        model,
        choices: state.map((c, i) => ({
          index: i,
          text: echoText(i) + c.text,
          // With echo the prompt's tokens lead (scored), so offsets start at 0 either way.
          logprobs: logprobs === null ? null : legacyLogprobs(ctx, c.logprobs, asIds, 0),
          finish_reason: reason(i),
          stop_reason: c.finish?.stopReason ?? null,
          ...(req.prompt_logprobs != null ? { prompt_logprobs: c.prompt ? vllmPromptLogprobs(ctx, c.prompt, req.prompt_logprobs) : null } : {}),
        })),
        usage: usage(),
      },
    };
  }

  const includeUsage = req.stream_options?.include_usage ?? false;
  const chunk = (choice: unknown) => ({ id, object: 'text_completion', created, model, choices: [choice], ...(includeUsage ? { usage: null } : {}) });
  return {
    produce: async (send) => {
      await Promise.all(
        streams.map(async (s, i) => {
          let offset = 0;
          /** Sends the echoed prompt, with its scores when asked (they come with the first event). */
          const sendEcho = (first: EngineEvent | null) => {
            const echo = echoText(i);
            const lps = first ? legacyLogprobs(ctx, promptScores(requests[i].promptIds, first, logprobs!), asIds, 0) : null;
            send(chunk({ index: i, text: echo, logprobs: lps, finish_reason: null }));
            offset = echo.length;
          };
          if (req.echo && !scorePrompt) sendEcho(null);
          let first = true;
          for await (const ev of s) {
            if (first && scorePrompt) sendEcho(ev);
            first = false;
            account(i, ev);
            if (ev.finishReason) {
              send(chunk({ index: i, text: ev.text, logprobs: null, finish_reason: reason(i), stop_reason: ev.stopReason }));
              continue;
            }
            // A prompt-only event (max_tokens 0) has nothing of its own to send.
            if (ev.tokenIds.length === 0 && ev.text === '') continue;
            send(
              chunk({
                index: i,
                text: ev.text,
                logprobs: logprobs === null || !ev.logprobs ? null : legacyLogprobs(ctx, generated(ev.logprobs), asIds, offset),
                finish_reason: null,
              }),
            );
            offset += ev.text.length;
          }
        }),
      );
      if (includeUsage) send({ id, object: 'text_completion', created, model, choices: [], usage: usage() });
    },
  };
}
