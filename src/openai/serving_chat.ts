import type { ServingContext } from './context.js';
import { ChatChoice, type ChatDelta } from './chat_choice.js';
import { prepareChat, THINK_END_TOKEN } from './chat_prompt.js';
import { chatLogprobs, vllmPromptLogprobs } from './logprobs.js';
import { checkModel, engineRequest, newId, parseBody, resolveMaxTokens, samplingParams, submitAll, unixNow } from './request.js';
import { chatRequestSchema } from './schemas.js';
import type { Served } from './serving.js';

/**
 * POST /v1/chat/completions: a validated request becomes `n` engine requests (one per
 * choice, the prompt shared), and their events become a chat.completion or a stream of
 * chat.completion.chunk objects, both built from the same `ChatChoice`s.
 */
export async function serveChat(ctx: ServingContext, body: unknown, signal: AbortSignal): Promise<Served> {
  const req = parseBody(chatRequestSchema, body);
  checkModel(ctx, req.model);
  const prepared = await prepareChat(ctx, req);
  const maxTokens = resolveMaxTokens(ctx, prepared.promptIds.length, req.max_completion_tokens ?? req.max_tokens);
  const n = req.n ?? 1;
  const topLogprobs = req.logprobs ? (req.top_logprobs ?? 0) : null;
  const asIds = req.return_tokens_as_token_ids ?? false;
  const requests = Array.from({ length: n }, (_, i) => ({
    ...engineRequest(ctx, prepared.promptIds, samplingParams(ctx, req, topLogprobs, i), maxTokens, req),
    grammar: prepared.grammar,
    grammarAfter: prepared.grammarAfter,
    thinkingBudget: prepared.thinkingBudget,
    // The prompt is the same for every choice: the first scores it.
    promptLogprobs: i === 0 ? (req.prompt_logprobs ?? null) : null,
  }));
  // Every choice is queued before any output, so refusals (queue full) are HTTP errors.
  const streams = await submitAll(ctx, requests, signal);
  const thinkEndId = ctx.tokenizer.tokenId(THINK_END_TOKEN);
  const choices = requests.map((_, i) => new ChatChoice(i, prepared, thinkEndId));
  const id = newId('chatcmpl-');
  const created = unixNow();
  const model = ctx.options.modelName;

  /** Reads one choice's events to its end, passing each delta on. */
  const run = async (i: number, onDelta: (c: ChatChoice, d: ChatDelta) => void) => {
    const c = choices[i];
    for await (const ev of streams[i]) {
      onDelta(c, c.push(ev));
      if (ev.finishReason && ev.metrics) ctx.observe(ev.metrics, ev.finishReason);
    }
  };
  const usage = () => {
    const completion = choices.reduce((s, c) => s + c.completionTokens, 0);
    return {
      prompt_tokens: prepared.promptIds.length,
      completion_tokens: completion,
      total_tokens: prepared.promptIds.length + completion,
      prompt_tokens_details: { cached_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: choices.reduce((s, c) => s + c.reasoningTokens, 0) },
    };
  };
  const reasoningFields = (text: string): Record<string, string> => {
    const f = ctx.options.reasoningField;
    return f === 'both' ? { reasoning_content: text, reasoning: text } : { [f]: text };
  };
  const toolCallsJson = (calls: ChatChoice['toolCalls']) => calls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } }));
  const promptScores = () => choices[0].promptLogprobs;

  if (!req.stream) {
    await Promise.all(choices.map((_, i) => run(i, () => {})));
    if (signal.aborted) return { body: null };
    return {
      body: {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: choices.map((c) => ({
          index: c.index,
          message: {
            role: 'assistant',
            content: c.content === '' && c.toolCalls.length > 0 ? null : c.content,
            // The schema requires it; Qwen3 never refuses through a separate channel.
            refusal: null,
            ...(prepared.thinking || c.reasoning ? reasoningFields(c.reasoning) : {}),
            ...(c.toolCalls.length > 0 ? { tool_calls: toolCallsJson(c.toolCalls) } : {}),
          },
          logprobs: topLogprobs === null ? null : { content: chatLogprobs(ctx, c.logprobs, asIds), refusal: null },
          finish_reason: c.finishReason,
          stop_reason: c.finish?.stopReason ?? null,
        })),
        ...(req.prompt_logprobs != null ? { prompt_logprobs: promptScores() ? vllmPromptLogprobs(ctx, promptScores()!, req.prompt_logprobs) : null } : {}),
        usage: usage(),
      },
    };
  }

  const includeUsage = req.stream_options?.include_usage ?? false;
  const chunk = (part: unknown) => ({ id, object: 'chat.completion.chunk', created, model, choices: [part], ...(includeUsage ? { usage: null } : {}) });
  return {
    produce: async (send) => {
      for (const c of choices) send(chunk({ index: c.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }));
      await Promise.all(
        choices.map((_, i) =>
          run(i, (c, d) => {
            const delta: Record<string, unknown> = {};
            if (d.reasoning) Object.assign(delta, reasoningFields(d.reasoning));
            if (d.content) delta.content = d.content;
            if (d.toolCalls.length > 0) delta.tool_calls = d.toolCalls.map((t) => ({ index: t.index, ...toolCallsJson([t])[0] }));
            if (Object.keys(delta).length > 0 || d.logprobs) {
              send(chunk({ index: c.index, delta, logprobs: d.logprobs ? { content: chatLogprobs(ctx, d.logprobs, asIds), refusal: null } : null, finish_reason: null }));
            }
            if (c.finish) send(chunk({ index: c.index, delta: {}, logprobs: null, finish_reason: c.finishReason, stop_reason: c.finish.stopReason ?? null }));
          }),
        ),
      );
      if (includeUsage) send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage() });
    },
  };
}
