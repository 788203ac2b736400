import { NotFoundError } from '../errors.js';
import type { ChatChoice, ChatDelta } from './chat_choice.js';
import { startChat } from './chat_session.js';
import type { ServingContext } from './context.js';
import { checkModel, newId, parseBody, unixNow } from './request.js';
import { responsesRequestSchema, type ResponsesInputItem, type ResponsesRequest } from './responses_schemas.js';
import { chatRequestSchema, type ChatRequest } from './schemas.js';
import type { Served } from './serving.js';

/**
 * OpenAI's Responses API (POST/GET/DELETE /v1/responses) as a translation: input items
 * and instructions become chat messages (after the stored conversation of
 * previous_response_id), run by the same chat session as Chat Completions; the choice
 * becomes output items (reasoning, message, function_call) or the semantic stream events.
 */

const partsText = (c: string | Array<{ text: string }>) => (typeof c === 'string' ? c : c.map((p) => p.text).join(''));

/** Input items as chat messages: consecutive function calls join one assistant turn; outputs become tool turns. */
function toMessages(input: ResponsesRequest['input']): unknown[] {
  if (typeof input === 'string') return [{ role: 'user', content: input }];
  const out: Array<Record<string, unknown>> = [];
  for (const item of input as ResponsesInputItem[]) {
    if (item.type === 'reasoning') continue; // earlier reasoning is not shown to the model again
    if (item.type === 'function_call') {
      const call = { id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments } };
      const last = out.at(-1);
      if (last?.role === 'assistant') (last.tool_calls as unknown[] | undefined) ? (last.tool_calls as unknown[]).push(call) : (last.tool_calls = [call]);
      else out.push({ role: 'assistant', content: '', tool_calls: [call] });
      continue;
    }
    if (item.type === 'function_call_output') {
      out.push({ role: 'tool', tool_call_id: item.call_id, content: partsText(item.output) });
      continue;
    }
    const m = item as { role: string; content: string | Array<{ text: string }> };
    out.push({ role: m.role, content: partsText(m.content) });
  }
  return out;
}

function formatOf(req: ResponsesRequest): unknown {
  const f = req.text?.format;
  if (!f || f.type === 'text') return undefined;
  if (f.type === 'json_object') return { type: 'json_object' };
  return { type: 'json_schema', json_schema: { name: f.name, schema: f.schema, strict: f.strict ?? null } };
}

/** The chat request a Responses request stands for, after `history` (validated by the chat schema: one set of rules). */
function toChatRequest(req: ResponsesRequest, history: unknown[]): ChatRequest {
  const messages = [...(req.instructions ? [{ role: 'system', content: req.instructions }] : []), ...history, ...toMessages(req.input)];
  const choice = req.tool_choice;
  return parseBody(chatRequestSchema, {
    messages,
    ...(req.tools ? { tools: req.tools.map((t) => ({ type: 'function', function: { name: t.name, description: t.description ?? undefined, parameters: t.parameters ?? undefined } })) } : {}),
    ...(choice ? { tool_choice: typeof choice === 'string' ? choice : { type: 'function', function: { name: choice.name } } } : {}),
    ...(formatOf(req) ? { response_format: formatOf(req) } : {}),
    ...(req.reasoning?.effort ? { reasoning_effort: req.reasoning.effort } : {}),
    ...(req.thinking_token_budget !== null && req.thinking_token_budget !== undefined ? { thinking_token_budget: req.thinking_token_budget } : {}),
    ...(req.max_output_tokens ? { max_tokens: req.max_output_tokens } : {}),
    ...(req.temperature !== null && req.temperature !== undefined ? { temperature: req.temperature } : {}),
    ...(req.top_p !== null && req.top_p !== undefined ? { top_p: req.top_p } : {}),
  });
}

const fcId = (callId: string) => callId.replace(/^call_/, 'fc_');

export async function serveResponses(ctx: ServingContext, body: unknown, signal: AbortSignal): Promise<Served> {
  const req = parseBody(responsesRequestSchema, body);
  checkModel(ctx, req.model);
  let history: unknown[] = [];
  if (req.previous_response_id) {
    const prev = ctx.responses.get(req.previous_response_id);
    if (!prev) {
      throw new NotFoundError(`Previous response with id '${req.previous_response_id}' not found (unknown, deleted, or evicted from the store).`, {
        param: 'previous_response_id',
        code: 'previous_response_not_found',
      });
    }
    history = prev.messages;
  }
  const chat = toChatRequest(req, history);
  const session = await startChat(ctx, chat, signal);
  const c = session.choices[0];
  const id = newId('resp_');
  const createdAt = unixNow();
  const thinking = session.prepared.thinking;
  const summary = req.reasoning?.summary ?? null;
  const ids = { reasoning: newId('rs_'), message: newId('msg_') };

  /** The response object as it stands (status given). */
  const snapshot = (status: 'in_progress' | 'completed' | 'incomplete', output: unknown[]) => {
    const u = session.usage();
    return {
      id,
      object: 'response',
      created_at: createdAt,
      status,
      ...(status === 'in_progress' ? {} : { completed_at: unixNow() }),
      error: null,
      incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
      instructions: req.instructions ?? null,
      max_output_tokens: req.max_output_tokens ?? null,
      model: ctx.options.modelName,
      output,
      parallel_tool_calls: req.parallel_tool_calls ?? true,
      previous_response_id: req.previous_response_id ?? null,
      reasoning: { effort: req.reasoning?.effort ?? null, summary },
      store: req.store ?? true,
      temperature: req.temperature ?? null,
      text: { format: req.text?.format ?? { type: 'text' } },
      tool_choice: req.tool_choice ?? 'auto',
      tools: (req.tools ?? []).map((t) => ({ type: 'function', name: t.name, description: t.description ?? null, parameters: t.parameters ?? null, strict: t.strict ?? false })),
      top_p: req.top_p ?? null,
      truncation: 'disabled',
      // Usage is omitted until the end (the schema has no null for it).
      ...(status === 'in_progress'
        ? {}
        : {
            usage: {
              input_tokens: u.promptTokens,
              input_tokens_details: { cached_tokens: u.cachedTokens, cache_write_tokens: 0 },
              output_tokens: u.completionTokens,
              output_tokens_details: { reasoning_tokens: u.reasoningTokens },
              total_tokens: u.promptTokens + u.completionTokens,
            },
          }),
      ...(req.user ? { user: req.user } : {}),
      metadata: req.metadata ?? {},
    };
  };
  const reasoningItem = (text: string) => ({
    type: 'reasoning',
    id: ids.reasoning,
    summary: summary ? [{ type: 'summary_text', text }] : [],
    content: [{ type: 'reasoning_text', text }],
  });
  const messageItem = (text: string, status: string) => ({
    type: 'message',
    id: ids.message,
    status,
    role: 'assistant',
    content: [{ type: 'output_text', text, annotations: [], logprobs: [] }],
  });
  const callItem = (call: ChatChoice['toolCalls'][number]) => ({ type: 'function_call', id: fcId(call.id), call_id: call.id, name: call.name, arguments: call.arguments, status: 'completed' });
  const finalOutput = () => [
    ...(thinking && c.reasoning ? [reasoningItem(c.reasoning)] : []),
    ...(c.content !== '' || c.toolCalls.length === 0 ? [messageItem(c.content, 'completed')] : []),
    ...c.toolCalls.map(callItem),
  ];
  const finished = () => {
    const status = c.finish?.finishReason === 'length' ? 'incomplete' : 'completed';
    const response = snapshot(status, finalOutput());
    if (req.store ?? true) {
      const assistant = { role: 'assistant', content: c.content, ...(c.toolCalls.length > 0 ? { tool_calls: c.toolCalls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } })) } : {}) };
      ctx.responses.put(id, { response, messages: [...history, ...toMessages(req.input), assistant] });
    }
    return response;
  };

  if (!req.stream) {
    await session.runAll();
    if (signal.aborted) return { body: null };
    return { body: finished() };
  }

  return {
    framing: 'responses',
    produce: async (send) => {
      let seq = 0;
      const emit = (type: string, fields: Record<string, unknown>) => send({ type, sequence_number: seq++, ...fields }, type);
      emit('response.created', { response: snapshot('in_progress', []) });
      emit('response.in_progress', { response: snapshot('in_progress', []) });
      let index = -1;
      let open: { kind: 'reasoning' | 'message'; text: string } | null = null;
      const close = () => {
        if (!open) return;
        if (open.kind === 'reasoning') {
          emit('response.reasoning_text.done', { item_id: ids.reasoning, output_index: index, content_index: 0, text: open.text });
          emit('response.output_item.done', { output_index: index, item: reasoningItem(open.text) });
        } else {
          emit('response.output_text.done', { item_id: ids.message, output_index: index, content_index: 0, text: open.text, logprobs: [] });
          emit('response.content_part.done', { item_id: ids.message, output_index: index, content_index: 0, part: { type: 'output_text', text: open.text, annotations: [], logprobs: [] } });
          emit('response.output_item.done', { output_index: index, item: messageItem(open.text, 'completed') });
        }
        open = null;
      };
      const start = (kind: 'reasoning' | 'message') => {
        if (open?.kind === kind) return;
        close();
        index++;
        open = { kind, text: '' };
        if (kind === 'reasoning') {
          emit('response.output_item.added', { output_index: index, item: { type: 'reasoning', id: ids.reasoning, summary: [], content: [] } });
        } else {
          emit('response.output_item.added', { output_index: index, item: { type: 'message', id: ids.message, status: 'in_progress', role: 'assistant', content: [] } });
          emit('response.content_part.added', { item_id: ids.message, output_index: index, content_index: 0, part: { type: 'output_text', text: '', annotations: [], logprobs: [] } });
        }
      };
      const onDelta = (_: ChatChoice, d: ChatDelta) => {
        if (d.reasoning && thinking) {
          start('reasoning');
          open!.text += d.reasoning;
          emit('response.reasoning_text.delta', { item_id: ids.reasoning, output_index: index, content_index: 0, delta: d.reasoning });
        }
        if (d.content) {
          start('message');
          open!.text += d.content;
          emit('response.output_text.delta', { item_id: ids.message, output_index: index, content_index: 0, delta: d.content, logprobs: [] });
        }
        for (const call of d.toolCalls) {
          close();
          index++;
          const item = callItem(call);
          emit('response.output_item.added', { output_index: index, item: { ...item, arguments: '', status: 'in_progress' } });
          emit('response.function_call_arguments.delta', { item_id: item.id, output_index: index, delta: call.arguments });
          emit('response.function_call_arguments.done', { item_id: item.id, output_index: index, name: call.name, arguments: call.arguments });
          emit('response.output_item.done', { output_index: index, item });
        }
      };
      await session.runAll(onDelta);
      // As the plain response does: a message item even when nothing was said.
      if (c.content === '' && c.toolCalls.length === 0) start('message');
      close();
      const response = finished();
      emit(response.status === 'completed' ? 'response.completed' : 'response.incomplete', { response });
    },
  };
}

/** GET /v1/responses/{id}. */
export function retrieveResponse(ctx: ServingContext, id: string): Record<string, unknown> {
  const stored = ctx.responses.get(id);
  if (!stored) throw new NotFoundError(`Response with id '${id}' not found (unknown, deleted, or evicted from the store).`, { param: 'response_id', code: 'not_found' });
  return stored.response;
}

/** DELETE /v1/responses/{id}. */
export function deleteResponse(ctx: ServingContext, id: string): { id: string; object: string; deleted: boolean } {
  if (!ctx.responses.delete(id)) throw new NotFoundError(`Response with id '${id}' not found.`, { param: 'response_id', code: 'not_found' });
  return { id, object: 'response', deleted: true };
}
