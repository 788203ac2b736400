import { ANONYMOUS, type Caller } from '../serving/caller.js';
import type { ChatChoice, ChatDelta } from '../serving/chat_choice.js';
import { chatRequestSchema } from '../serving/chat_request.js';
import { startChat } from '../serving/chat_session.js';
import type { ServingContext } from '../serving/context.js';
import { checkModel, checkTask, newId, parseBody, unixNow } from '../serving/request.js';
import type { Served } from '../serving/served.js';
import { chatLogprobs, vllmPromptLogprobs } from './logprobs.js';

/**
 * POST /v1/chat/completions: a validated request becomes `n` engine requests (one per
 * choice, the prompt shared), and their events become a chat.completion or a stream of
 * chat.completion.chunk objects, both built from the same `ChatChoice`s.
 */
export async function serveChat(ctx: ServingContext, body: unknown, signal: AbortSignal, caller: Caller = ANONYMOUS): Promise<Served> {
  const req = parseBody(chatRequestSchema, body);
  checkModel(ctx, req.model);
  checkTask(ctx, 'chat');
  const session = await startChat(ctx, req, signal, caller);
  const { prepared, choices } = session;
  const topLogprobs = req.logprobs ? (req.top_logprobs ?? 0) : null;
  const asIds = req.return_tokens_as_token_ids ?? false;
  const id = newId('chatcmpl-');
  const created = unixNow();
  const model = ctx.options.modelName;
  const usage = () => {
    const u = session.usage();
    return {
      prompt_tokens: u.promptTokens,
      completion_tokens: u.completionTokens,
      total_tokens: u.promptTokens + u.completionTokens,
      prompt_tokens_details: { cached_tokens: u.cachedTokens },
      completion_tokens_details: { reasoning_tokens: u.reasoningTokens },
    };
  };
  const reasoningFields = (text: string): Record<string, string> => {
    const f = ctx.options.reasoningField;
    return f === 'both' ? { reasoning_content: text, reasoning: text } : { [f]: text };
  };
  /** One entry per call: its first carries id, type and name; the arguments' text follows in order. */
  const toolCallDeltas = (parts: ChatDelta['toolCallParts']) => {
    const entries: Array<{ index: number; id?: string; type?: 'function'; function: { name?: string; arguments: string } }> = [];
    for (const part of parts) {
      const last = entries.at(-1);
      if (last && last.index === part.call.index && part.name === undefined) last.function.arguments += part.arguments;
      else if (part.name !== undefined) {
        entries.push({ index: part.call.index, id: part.call.id, type: 'function', function: { name: part.name, arguments: part.arguments } });
      } else if (part.arguments !== '') entries.push({ index: part.call.index, function: { arguments: part.arguments } });
    }
    return entries;
  };
  const toolCallsJson = (calls: ChatChoice['toolCalls']) =>
    calls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } }));
  const promptScores = () => choices[0].promptLogprobs;

  if (!req.stream) {
    await session.runAll();
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
        ...(req.prompt_logprobs != null
          ? { prompt_logprobs: promptScores() ? vllmPromptLogprobs(ctx, promptScores()!, req.prompt_logprobs) : null }
          : {}),
        usage: usage(),
      },
    };
  }

  const includeUsage = req.stream_options?.include_usage ?? false;
  const chunk = (part: unknown) => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model,
    choices: [part],
    ...(includeUsage ? { usage: null } : {}),
  });
  return {
    produce: async (send) => {
      for (const c of choices) send(chunk({ index: c.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }));
      await session.runAll((c, d) => {
        const delta: Record<string, unknown> = {};
        if (d.reasoning) Object.assign(delta, reasoningFields(d.reasoning));
        if (d.content) delta.content = d.content;
        if (d.toolCallParts.length > 0) delta.tool_calls = toolCallDeltas(d.toolCallParts);
        if (Object.keys(delta).length > 0 || d.logprobs) {
          send(
            chunk({
              index: c.index,
              delta,
              logprobs: d.logprobs ? { content: chatLogprobs(ctx, d.logprobs, asIds), refusal: null } : null,
              finish_reason: null,
            }),
          );
        }
        if (c.finish)
          send(chunk({ index: c.index, delta: {}, logprobs: null, finish_reason: c.finishReason, stop_reason: c.finish.stopReason ?? null }));
      });
      if (includeUsage) send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: usage() });
    },
  };
}
